"""JobProcessor with in-memory fakes: every decision path, exactly one final result per job."""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from producers.contract import ErrorInfo, JobMessage, JobResult, Status
from producers.errors import ErrorCode, PermanentError, TransientError
from worker.core import registry
from worker.core.pipeline import Prepared
from worker.core.processing import (
    Finished,
    JobProcessor,
    RateLimitPolicy,
    RetryLater,
    RetryPolicy,
    redact,
    source_host,
)

SPEC = registry.get("ffs-mj-5m")


class MemoryStore:
    def __init__(self) -> None:
        self.results: dict[tuple[str, str], JobResult] = {}
        self.writes = 0

    def put_final(self, result: JobResult) -> JobResult:
        self.writes += 1
        return self.results.setdefault((result.tenant, result.job_id), result)

    def get(self, tenant: str, job_id: str) -> JobResult | None:
        return self.results.get((tenant, job_id))


class MemoryCounters:
    def __init__(self) -> None:
        self.open: dict[str, int] = defaultdict(int)
        self.tries: dict[str, int] = defaultdict(int)

    def begin_delivery(self, job_id: str) -> int:
        self.open[job_id] += 1
        return self.open[job_id]

    def end_delivery(self, job_id: str) -> None:
        self.open.pop(job_id, None)

    def open_deliveries(self, job_id: str) -> int:
        return self.open.get(job_id, 0)

    def next_attempt(self, job_id: str) -> int:
        self.tries[job_id] += 1
        return self.tries[job_id]

    def attempts(self, job_id: str) -> int:
        return self.tries[job_id]


@dataclass
class MemoryDLQ:
    records: list[tuple[str, ErrorInfo, int, int]] = field(default_factory=list)

    def add(self, job: JobMessage, error: ErrorInfo, *, attempts: int, deliveries: int) -> None:
        self.records.append((job.job_id, error, attempts, deliveries))


class ScriptedPreparer:
    """Raises the scripted errors in order, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> Prepared:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Prepared(tensor=source, fetch_ms=1.0, decode_ms=2.0)


class FixedLimiter:
    def __init__(self, waits: dict[str, float]) -> None:
        self.waits = waits

    def reserve(self, scope: str, name: str, rate_per_s: float, burst: int, max_wait_s: float) -> tuple[float, bool]:
        wait = self.waits.get(scope, 0.0)
        return wait, wait <= max_wait_s


def _infer(score: float = 0.9):  # type: ignore[no-untyped-def]
    def infer(tensor: Any) -> Future[float]:
        f: Future[float] = Future()
        f.set_result(score)
        return f

    return infer


def make(preparer: ScriptedPreparer | None = None, **kw: Any) -> tuple[JobProcessor, MemoryStore, MemoryDLQ]:
    store, dlq = MemoryStore(), MemoryDLQ()
    proc = JobProcessor(
        spec=SPEC,
        preparer=preparer or ScriptedPreparer(),
        infer=kw.pop("infer", _infer()),
        store=store,
        counters=kw.pop("counters", MemoryCounters()),
        dead_letters=dlq,
        retry=kw.pop("retry", RetryPolicy(max_attempts=3, backoff_base_s=1, backoff_max_s=8, max_deliveries=2)),
        **kw,
    )
    return proc, store, dlq


JOB = JobMessage(tenant="acme", source="https://img.example/a.jpg?X-Amz-Signature=secret")


def test_ok_job_stores_one_verdict() -> None:
    proc, store, dlq = make()
    decision = proc.process(JOB)
    assert isinstance(decision, Finished)
    r = decision.result
    assert (r.status, r.score, r.label, r.band, r.model, r.attempts) == (Status.OK, 0.9, "ai", "ai", SPEC.ref, 1)
    assert r.source == "https://img.example/a.jpg?<redacted>"
    assert r.timings.fetch_ms == 1.0 and r.timings.inference_ms is not None
    assert store.get("acme", JOB.job_id) == r and not dlq.records


def test_redelivered_job_with_a_result_is_not_processed_again() -> None:
    preparer = ScriptedPreparer()
    proc, store, _ = make(preparer)
    first = proc.process(JOB)
    second = proc.process(JOB)
    assert isinstance(second, Finished) and second.duplicate
    assert isinstance(first, Finished) and second.result == first.result
    assert preparer.calls == 1 and store.writes == 1


@pytest.mark.parametrize(
    "error",
    [
        PermanentError(ErrorCode.NOT_AN_IMAGE, "html"),
        PermanentError(ErrorCode.NOT_FOUND, "404"),
        PermanentError(ErrorCode.FORBIDDEN_ADDRESS, "10.0.0.1"),
    ],
)
def test_permanent_errors_finish_at_once_and_are_dead_lettered(error: PermanentError) -> None:
    preparer = ScriptedPreparer(error)
    proc, store, dlq = make(preparer)
    decision = proc.process(JOB)
    assert isinstance(decision, Finished)
    assert decision.result.error is not None and decision.result.error.code == error.code.value
    assert store.get(JOB.tenant, JOB.job_id) == decision.result
    assert not decision.result.error.retryable
    assert preparer.calls == 1 and [d[0] for d in dlq.records] == [JOB.job_id]


def test_transient_errors_retry_with_backoff_then_succeed() -> None:
    preparer = ScriptedPreparer(
        TransientError(ErrorCode.FETCH_FAILED, "503"), TransientError(ErrorCode.TIMEOUT, "slow")
    )
    proc, _, dlq = make(preparer)
    first, second, third = proc.process(JOB), proc.process(JOB), proc.process(JOB)
    assert isinstance(first, RetryLater) and 0.5 <= first.countdown_s <= 1.0
    assert isinstance(second, RetryLater) and 1.0 <= second.countdown_s <= 2.0
    assert isinstance(third, Finished) and third.result.ok and third.result.attempts == 3
    assert not dlq.records


def test_transient_errors_give_up_after_max_attempts() -> None:
    preparer = ScriptedPreparer(*[TransientError(ErrorCode.FETCH_FAILED, "503")] * 5)
    proc, _, dlq = make(preparer)
    decisions = [proc.process(JOB) for _ in range(3)]
    assert [type(d).__name__ for d in decisions] == ["RetryLater", "RetryLater", "Finished"]
    final = decisions[-1]
    assert isinstance(final, Finished) and final.result.error is not None
    assert final.result.error.retryable and final.result.attempts == 3
    assert dlq.records[0][2] == 3


def test_retry_after_from_the_server_is_honoured() -> None:
    preparer = ScriptedPreparer(TransientError(ErrorCode.FETCH_FAILED, "429", retry_after_s=6.0))
    proc, _, _ = make(preparer)
    decision = proc.process(JOB)
    assert isinstance(decision, RetryLater) and decision.countdown_s == 6.0


def test_poison_job_is_dead_lettered_after_max_deliveries() -> None:
    counters = MemoryCounters()
    counters.open[JOB.job_id] = 2  # two earlier deliveries died mid-job
    preparer = ScriptedPreparer()
    proc, _, dlq = make(preparer, counters=counters)
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "poison"
    assert preparer.calls == 0 and dlq.records[0][3] == 3


def test_rate_limited_job_is_deferred_without_spending_an_attempt() -> None:
    counters = MemoryCounters()
    proc, store, _ = make(
        counters=counters, limiter=FixedLimiter({"tenant": 0.25}), rate=RateLimitPolicy(tenant_per_s=1.0)
    )
    decision = proc.process(JOB)
    assert isinstance(decision, RetryLater) and decision.deferral and decision.countdown_s == 0.25
    assert decision.error.code is ErrorCode.RATE_LIMITED
    assert counters.attempts(JOB.job_id) == 0 and not store.results and not counters.open


def test_reserved_slot_is_not_asked_for_again() -> None:
    limiter = FixedLimiter({"tenant": 0.25})
    proc, _, _ = make(limiter=limiter, rate=RateLimitPolicy(tenant_per_s=1.0))
    first = proc.process(JOB)
    assert isinstance(first, RetryLater) and first.reserved == frozenset({"tenant"})
    second = proc.process(JOB, reserved=first.reserved)
    assert isinstance(second, Finished) and second.result.ok


def test_far_slots_are_not_reserved_and_defer_by_the_cap() -> None:
    proc, _, _ = make(limiter=FixedLimiter({"tenant": 500.0}), rate=RateLimitPolicy(tenant_per_s=1.0, max_defer_s=30))
    decision = proc.process(JOB)
    assert isinstance(decision, RetryLater) and decision.countdown_s == 30 and not decision.reserved


def test_host_limit_applies_per_host() -> None:
    proc, _, _ = make(limiter=FixedLimiter({"host": 1.5}), rate=RateLimitPolicy(host_per_s=2.0))
    decision = proc.process(JOB)
    assert isinstance(decision, RetryLater) and decision.countdown_s == 1.5


def test_unknown_model_is_a_permanent_error() -> None:
    proc, _, dlq = make()
    decision = proc.process(JobMessage(tenant="acme", source="s3://b/k.jpg", model="ffs-v2"))
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "unknown-model" and len(dlq.records) == 1


def test_unexpected_exception_becomes_internal_and_is_not_retried() -> None:
    proc, _, _ = make(ScriptedPreparer(ZeroDivisionError("bug")))
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "internal"


def test_failed_batch_fails_its_jobs_as_internal() -> None:
    def infer(tensor: Any) -> Future[float]:
        f: Future[float] = Future()
        f.set_exception(RuntimeError("CUDA error"))
        return f

    proc, _, _ = make(infer=infer)
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.error is not None
    assert decision.result.error.code == "internal"


@pytest.mark.parametrize(
    ("source", "host", "redacted"),
    [
        ("https://u:p@Img.Example:8443/a.jpg?sig=1", "img.example", "https://Img.Example:8443/a.jpg?<redacted>"),
        ("http://h/a.png", "h", "http://h/a.png"),
        ("s3://bucket/key.jpg", "bucket", "s3://bucket/key.jpg"),
    ],
)
def test_source_host_and_redaction(source: str, host: str, redacted: str) -> None:
    assert source_host(source) == host
    assert redact(source) == redacted


class FlakyStore(MemoryStore):
    """A result store that is unavailable for its first ``outages`` writes."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def put_final(self, result: JobResult) -> JobResult:
        if self.outages:
            self.outages -= 1
            raise TransientError(ErrorCode.UNAVAILABLE, "result store unavailable")
        return super().put_final(result)


def test_store_outages_do_not_count_as_dead_deliveries() -> None:
    counters = MemoryCounters()
    store = FlakyStore(outages=4)  # more outages than max_deliveries (2)
    proc = JobProcessor(
        spec=SPEC,
        preparer=ScriptedPreparer(),
        infer=_infer(),
        store=store,
        counters=counters,
        dead_letters=MemoryDLQ(),
        retry=RetryPolicy(max_attempts=10, max_deliveries=2),
    )
    for _ in range(4):  # the adapter hands each one back to the queue
        with pytest.raises(TransientError):
            proc.process(JOB)
        assert not counters.open, "a delivery that raised was not a dead worker"
    decision = proc.process(JOB)
    assert isinstance(decision, Finished) and decision.result.ok


def test_queued_time_excludes_the_time_spent_processing() -> None:
    class SlowPreparer(ScriptedPreparer):
        def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> Prepared:
            time.sleep(0.3)
            return super().prepare(source, version)

    job = JobMessage(tenant="acme", source="s3://b/k.jpg", submitted_at=datetime.now(UTC) - timedelta(seconds=10))
    proc, _, _ = make(SlowPreparer())
    decision = proc.process(job)
    assert isinstance(decision, Finished)
    t = decision.result.timings
    assert t.total_ms is not None and t.queued_ms is not None
    assert t.total_ms >= 300
    assert 10_000 <= t.queued_ms < 10_000 + 150  # not 10 s + the 0.3 s spent fetching


def test_fail_internal_answers_the_job() -> None:
    proc, store, dlq = make()
    finished = proc.fail_internal(JOB, KeyError("bug outside the image path"))
    assert finished.result.error is not None and finished.result.error.code == "internal"
    assert store.get(JOB.tenant, JOB.job_id) == finished.result and len(dlq.records) == 1
