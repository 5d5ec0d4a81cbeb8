"""A delivery's two first reads (stored result, open deliveries) through the one-call ``Arrivals`` port."""

from __future__ import annotations

from typing import Any

from producers.contract import JobResult
from tests.unit.test_processing import JOB, MemoryCounters, MemoryStore, ScriptedPreparer, make
from worker.core.processing import Finished, JobProcessor


class NoSeparateReads(MemoryCounters):
    def open_deliveries(self, job_id: str) -> int:
        raise AssertionError("read through arrivals, not on its own")


class NoSeparateGets(MemoryStore):
    def get(self, tenant: str, job_id: str) -> JobResult | None:
        raise AssertionError("read through arrivals, not on its own")


class CountingArrivals:
    """``Arrivals`` over the in-memory store and counters (their data, not their read methods); counts calls."""

    def __init__(self, store: MemoryStore, counters: MemoryCounters) -> None:
        self.store, self.counters, self.calls = store, counters, 0

    def arrive(self, tenant: str, job_id: str) -> tuple[JobResult | None, int]:
        self.calls += 1
        return self.store.results.get((tenant, job_id)), self.counters.open.get(job_id, 0)


def _processor(preparer: ScriptedPreparer, counters: MemoryCounters) -> tuple[JobProcessor, Any, CountingArrivals]:
    proc, _, dlq = make(preparer, counters=counters)
    store = NoSeparateGets()
    arrivals = CountingArrivals(store, counters)
    proc.store, proc.arrivals = store, arrivals
    return proc, dlq, arrivals


def test_one_arrival_call_per_delivery_and_duplicates_are_still_seen() -> None:
    counters, preparer = NoSeparateReads(), ScriptedPreparer()
    proc, _, arrivals = _processor(preparer, counters)
    first, second = proc.process(JOB), proc.process(JOB)
    assert isinstance(first, Finished) and not first.duplicate
    assert isinstance(second, Finished) and second.duplicate and second.result == first.result
    assert arrivals.calls == 2 and preparer.calls == 1 and not counters.open


def test_open_deliveries_read_on_arrival_still_dead_letter_a_poison_job() -> None:
    counters, preparer = NoSeparateReads(), ScriptedPreparer()
    counters.open[JOB.job_id] = 2  # two earlier deliveries died mid-job
    proc, dlq, _ = _processor(preparer, counters)
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "poison"
    assert preparer.calls == 0 and dlq.records[0][3] == 3


class ClosingStore(MemoryStore):
    """A store whose final write also closes the job's delivery count (as the Redis store's script does)."""

    def __init__(self, counters: MemoryCounters) -> None:
        super().__init__()
        self.counters = counters

    def put_final(self, result: JobResult) -> JobResult:
        self.counters.open.pop(result.job_id, None)
        return super().put_final(result)


class NoSeparateEnd(MemoryCounters):
    def __init__(self) -> None:
        super().__init__()
        self.ends = 0

    def end_delivery(self, job_id: str) -> None:
        self.ends += 1
        super().end_delivery(job_id)


def test_a_store_that_closes_deliveries_saves_the_separate_end_but_retries_still_end_theirs() -> None:
    from producers.errors import ErrorCode, TransientError

    counters = NoSeparateEnd()
    preparer = ScriptedPreparer(TransientError(ErrorCode.TIMEOUT, "slow"))
    proc, _, _ = make(preparer, counters=counters)
    proc.store, proc.store_closes_deliveries = ClosingStore(counters), True
    retry = proc.process(JOB)
    assert not isinstance(retry, Finished) and counters.ends == 1 and not counters.open  # a retry ends its own
    done = proc.process(JOB)
    assert isinstance(done, Finished) and not done.duplicate
    assert counters.ends == 1 and not counters.open  # closed by the store's write, no second call
