"""A delivery's two first reads (stored result, open deliveries) through the one-call ``Arrivals`` port."""

from __future__ import annotations

import contextlib
from typing import Any

from producers.contract import JobResult
from tests.unit.test_processing import JOB, MemoryCounters, MemoryStore, ScriptedPreparer, make
from worker.core.processing import Arrival, Finished, JobProcessor, RateLimitPolicy, RetryLater


class NoSeparateReads(MemoryCounters):
    def open_deliveries(self, job_id: str) -> int:
        raise AssertionError("read through arrivals, not on its own")


class NoSeparateGets(MemoryStore):
    def get(self, tenant: str, job_id: str) -> JobResult | None:
        raise AssertionError("read through arrivals, not on its own")


class CountingArrivals:
    """``Arrivals`` over the in-memory store and counters (their data, not their methods), with the Redis
    script's rules (worker/stores/counters.py); counts calls."""

    def __init__(self, store: MemoryStore, counters: MemoryCounters) -> None:
        self.store, self.counters, self.calls = store, counters, 0

    def arrive(self, tenant: str, job_id: str, *, max_deliveries: int = 0, count_attempt: bool = False) -> Arrival:
        self.calls += 1
        existing, prior = self.store.results.get((tenant, job_id)), self.counters.open.get(job_id, 0)
        if existing is not None or max_deliveries == 0 or 0 < prior == max_deliveries - 1:
            return Arrival(existing, prior)
        self.counters.open[job_id] = begun = prior + 1
        if not count_attempt:
            return Arrival(None, prior, begun)
        self.counters.tries[job_id] += 1
        return Arrival(None, prior, begun, self.counters.tries[job_id])


class NoSeparateCounts(MemoryCounters):
    """Counters whose begin/attempt calls are counted: the arrival does both in the common case."""

    def __init__(self) -> None:
        super().__init__()
        self.separate: list[str] = []

    def begin_delivery(self, job_id: str) -> int:
        self.separate.append("begin")
        return super().begin_delivery(job_id)

    def next_attempt(self, job_id: str) -> int:
        self.separate.append("attempt")
        return super().next_attempt(job_id)


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


def test_the_arrival_begins_the_delivery_and_counts_the_attempt_in_the_common_case() -> None:
    counters, preparer = NoSeparateCounts(), ScriptedPreparer()
    proc, _, arrivals = _processor(preparer, counters)
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.attempts == 1
    assert arrivals.calls == 1 and counters.separate == [] and not counters.open


def test_a_last_chance_is_begun_after_the_isolation_gate_not_on_arrival() -> None:
    counters, preparer = NoSeparateCounts(), ScriptedPreparer()
    counters.open[JOB.job_id] = 1  # max_deliveries=2 (make): one earlier delivery died, this is the last chance
    proc, _, _ = _processor(preparer, counters)
    entered: list[str] = []

    class Gate:
        def exclusive(self) -> Any:
            entered.append("exclusive")
            assert counters.open[JOB.job_id] == 1  # nothing begun while it may still wait for batch-mates
            return contextlib.nullcontext()

        def shared(self) -> Any:
            entered.append("shared")
            return contextlib.nullcontext()

    proc.isolation = Gate()  # type: ignore[assignment]
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.error is None
    assert entered == ["exclusive"] and counters.separate == ["begin", "attempt"]


def test_a_job_that_rate_limits_may_defer_counts_its_attempt_only_when_it_runs() -> None:
    class Deferring:
        def __init__(self) -> None:
            self.waits = [5.0, 0.0]

        def reserve(self, scope: str, name: str, rate: float, burst: int, max_defer_s: float) -> tuple[float, bool]:
            return self.waits.pop(0), True

    counters, preparer = NoSeparateCounts(), ScriptedPreparer()
    proc, _, _ = _processor(preparer, counters)
    proc.limiter, proc.rate = Deferring(), RateLimitPolicy(tenant_per_s=1.0)
    deferred = proc.process(JOB)
    assert isinstance(deferred, RetryLater) and deferred.deferral and counters.tries[JOB.job_id] == 0
    done = proc.process(JOB)  # the slot was not held across the retry here (reserved not passed): checked again
    assert isinstance(done, Finished) and done.result.attempts == 1 and counters.separate == ["attempt"]
