"""The job processor: one job in, one decision out. Knows nothing of Celery.

Decisions: :class:`Finished` (a final result was stored — ack), :class:`RetryLater` (publish again after a
countdown — a transient failure or a rate-limit deferral). The retry decision is made here, from the error's
class, and nowhere else. Every final error is also dead-lettered, so permanent failures can be listed and
re-driven; a job whose earlier deliveries died mid-processing (a poison message) is finished as ``poison``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from producers.contract import ErrorInfo, Fusion, JobMessage, JobResult, Status, Timings
from producers.errors import ErrorCode, FakesakeError, PermanentError, TransientError, as_fakesake_error
from producers.redaction import redact_url as redact
from worker.core.calibration import Calibrations
from worker.core.ensemble import Member, judge, judge_ensemble
from worker.core.isolation import IsolationGate
from worker.core.pipeline import Prepared
from worker.core.ports import RateLimiter, ResultStore
from worker.core.registry import DetectorSpec, Thresholds
from worker.core.retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateLimitPolicy:
    tenant_per_s: float = 0.0
    tenant_burst: int = 50
    host_per_s: float = 0.0
    host_burst: int = 20
    max_defer_s: float = 30.0  # longest single deferral; a later slot is asked for again, not reserved


@dataclass(frozen=True)
class Finished:
    result: JobResult
    duplicate: bool = False


@dataclass(frozen=True)
class RetryLater:
    countdown_s: float
    error: FakesakeError
    deferral: bool = False  # a rate-limit deferral is not a failed attempt
    scope: str | None = None  # which limit deferred it (tenant|host)
    reserved: frozenset[str] = frozenset()  # limits whose slot this job now holds: skip them next time


Decision = Finished | RetryLater


class JobCounters(Protocol):
    """Per-job counters that survive worker crashes (kept in Redis in production)."""

    def begin_delivery(self, job_id: str) -> int:
        """Count one delivery that has not (yet) completed; returns the open count including this one."""
        ...

    def end_delivery(self, job_id: str) -> None: ...

    def open_deliveries(self, job_id: str) -> int:
        """Deliveries begun and not completed (those whose worker died), without counting a new one."""
        ...

    def next_attempt(self, job_id: str) -> int: ...

    def attempts(self, job_id: str) -> int: ...


@dataclass(frozen=True)
class Arrival:
    """What a delivery learns as it arrives, and what the arrival already counted for it."""

    existing: JobResult | None  # the job's final result, if one is stored
    prior: int  # open deliveries before this one (those whose worker died), as ``JobCounters.open_deliveries``
    begun: int | None = None  # this delivery begun by the arrival: the open count including it
    attempt: int | None = None  # this attempt counted by the arrival: its number


class Arrivals(Protocol):
    """The reads and counts every delivery starts with, in one round trip (a Redis call each otherwise)."""

    def arrive(self, tenant: str, job_id: str, *, max_deliveries: int = 0, count_attempt: bool = False) -> Arrival:
        """The stored result and the open deliveries. With ``max_deliveries`` and no stored result, also begin
        this delivery as ``JobCounters.begin_delivery`` (and count an attempt as ``next_attempt`` when
        ``count_attempt``) — unless it is the job's last chance (``0 < prior == max_deliveries - 1``), which is
        begun only once it may run (after the isolation gate)."""
        ...


class DeadLetterSink(Protocol):
    def add(self, job: JobMessage, error: ErrorInfo, *, attempts: int, deliveries: int) -> object: ...


class Preparer(Protocol):
    def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> Prepared: ...


@dataclass
class JobProcessor:
    """Runs one job through rate limits, fetch/decode, batched inference and the result store."""

    spec: DetectorSpec
    preparer: Preparer
    infer: Callable[[Any], Future[float]]
    store: ResultStore
    counters: JobCounters
    dead_letters: DeadLetterSink
    limiter: RateLimiter | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate: RateLimitPolicy = field(default_factory=RateLimitPolicy)
    thresholds: Thresholds | None = None
    inference_timeout_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    isolation: IsolationGate = field(default_factory=lambda: IsolationGate())
    calibrations: Calibrations = field(default_factory=Calibrations)  # the job's tenant picks its own, if any
    # Several detectors by name (``spec``'s alone when None): a job names one, or several for an ensemble
    members: Mapping[str, Member] | None = None
    fusion: Fusion = Fusion.MAX  # for ensemble jobs that name no rule
    arrivals: Arrivals | None = None  # store.get + counters.open_deliveries in one call, where the stores offer it
    # The store's put_final also closes the job's delivery count, in the same write (no end_delivery after it)
    store_closes_deliveries: bool = False

    def __post_init__(self) -> None:
        if self.members is None:
            self.members = {self.spec.name: Member(self.spec, self.infer, self.thresholds, self.calibrations)}

    def process(self, job: JobMessage, reserved: frozenset[str] = frozenset()) -> Decision:
        """Decide one delivery of ``job``; ``reserved`` names the rate limits whose slot it already holds."""
        started = self.clock()
        arrival = self._arrive(job, reserved)
        if arrival.existing is not None:
            log.info("job already has a final result (%s); not processing again", arrival.existing.status)
            self.counters.end_delivery(job.job_id)
            return Finished(arrival.existing, duplicate=True)

        # Jobs redelivered after a crash come back together. On its last delivery before it would be
        # dead-lettered, a job runs alone in this process, so a poison job cannot take an innocent
        # batch-mate down with it on every delivery (which would dead-letter both).
        last_chance = 0 < arrival.prior == self.retry.max_deliveries - 1
        with self.isolation.exclusive() if last_chance else self.isolation.shared():
            return self._deliver(job, started, reserved, arrival)

    def _arrive(self, job: JobMessage, reserved: frozenset[str]) -> Arrival:
        if self.arrivals is not None:
            # No rate limit can defer this job (a deferral is not an attempt): its attempt is counted now too.
            no_limits = not self._limit_checks(job, reserved)
            return self.arrivals.arrive(
                job.tenant, job.job_id, max_deliveries=self.retry.max_deliveries, count_attempt=no_limits
            )
        existing = self.store.get(job.tenant, job.job_id)
        return Arrival(existing, 0 if existing is not None else self.counters.open_deliveries(job.job_id))

    def _deliver(self, job: JobMessage, started: float, reserved: frozenset[str], arrival: Arrival) -> Decision:
        begun = arrival.begun
        open_deliveries = begun if begun is not None else self.counters.begin_delivery(job.job_id)
        if open_deliveries > self.retry.max_deliveries:
            err = PermanentError(
                ErrorCode.POISON,
                f"job was delivered {open_deliveries} times and its worker died each time; dead-lettered",
            )
            return self._fail(job, err, started, deliveries=open_deliveries)

        try:
            deferred = self._limit(job, reserved)
            decision = deferred if deferred is not None else self._run(job, started, open_deliveries, arrival.attempt)
        except BaseException:
            # An error that reaches us (e.g. the result store is down) is not a dead worker: close this
            # delivery, or a few store outages in a row would finish a healthy job as poison.
            self._end_delivery_quietly(job.job_id)
            raise
        if not (self.store_closes_deliveries and isinstance(decision, Finished)):
            self.counters.end_delivery(job.job_id)
        return decision

    def _end_delivery_quietly(self, job_id: str) -> None:
        try:
            self.counters.end_delivery(job_id)
        except Exception:  # the counters share the store's Redis; the original error is the one to report
            log.warning("could not close the delivery count of job %s", job_id, exc_info=True)

    def _limit_checks(self, job: JobMessage, reserved: frozenset[str]) -> list[tuple[str, str, float, int]]:
        """The rate limits that may defer ``job`` now: (scope, name, rate, burst), those it holds a slot of left out."""
        if self.limiter is None:
            return []
        checks = []
        if self.rate.tenant_per_s > 0 and "tenant" not in reserved:
            checks.append(("tenant", job.tenant, self.rate.tenant_per_s, self.rate.tenant_burst))
        if self.rate.host_per_s > 0 and "host" not in reserved:
            checks.append(("host", source_host(job.source), self.rate.host_per_s, self.rate.host_burst))
        return checks

    def _limit(self, job: JobMessage, reserved: frozenset[str]) -> RetryLater | None:
        for scope, name, rate, burst in self._limit_checks(job, reserved):  # none without a limiter
            assert self.limiter is not None
            wait_s, held = self.limiter.reserve(scope, name, rate, burst, self.rate.max_defer_s)
            if wait_s > 0:
                err = TransientError(ErrorCode.RATE_LIMITED, f"{scope} rate limit reached", retry_after_s=wait_s)
                countdown = wait_s if held else self.rate.max_defer_s
                return RetryLater(
                    countdown, err, deferral=True, scope=scope, reserved=(reserved | {scope}) if held else reserved
                )
        return None

    def _run(self, job: JobMessage, started: float, deliveries: int, counted: int | None = None) -> Decision:
        attempt = counted if counted is not None else self.counters.next_attempt(job.job_id)
        assert self.members is not None
        names = job.detectors
        picked = [self.members[n] for n in names if n in self.members]
        if len(picked) != len(names):
            served = ", ".join(m.spec.identity for m in self.members.values())
            wrong_model = PermanentError(
                ErrorCode.UNKNOWN_MODEL, f"this worker serves {served}; job asks for {job.model!r}"
            )
            return self._fail(job, wrong_model, started, attempts=attempt, deliveries=deliveries)
        try:
            prepared = self.preparer.prepare(job.source, job.source_version, tenant=job.tenant)
            t_infer = self.clock()
            futures = [m.infer(m.model_input(prepared.tensor)) for m in picked]
            scores = [f.result(timeout=self.inference_timeout_s) for f in futures]
            inference_ms = (self.clock() - t_infer) * 1000
        except Exception as exc:
            err = as_fakesake_error(exc)
            if err.code is ErrorCode.INTERNAL and not isinstance(exc, FakesakeError):
                log.error("internal error for %s", redact(job.source), exc_info=exc)
            countdown = self.retry.retry_in(err, attempt)
            if countdown is not None:
                log.warning("attempt %d failed (%s); retrying in %.1fs", attempt, err.code, countdown)
                return RetryLater(countdown, err)
            return self._fail(job, err, started, attempts=attempt, deliveries=deliveries)

        cals = [m.calibrations.for_tenant(job.tenant) for m in picked]
        if len(picked) == 1:
            m = picked[0]
            j = judge(scores[0], m.spec, m.thresholds, cals[0], prepared.source_meta, prepared.evidence)
        else:
            rule = job.fusion or self.fusion
            j = judge_ensemble(scores, picked, cals, rule, prepared.source_meta, prepared.evidence)
        v = j.verdict
        total_ms = (self.clock() - started) * 1000
        timings = Timings(
            queued_ms=_queued_ms(job, total_ms),
            fetch_ms=prepared.fetch_ms,
            decode_ms=prepared.decode_ms,
            inference_ms=inference_ms,
            total_ms=total_ms,
        )
        result = JobResult(
            job_id=job.job_id,
            tenant=job.tenant,
            source=redact(job.source),
            status=Status.OK,
            score=v.score,
            label=v.label,
            band=v.band,
            model=v.model,
            attempts=attempt,
            timings=timings,
            evidence=j.evidence,
            source_version=j.source_version,
            etag=j.etag,
            raw_score=v.raw_score,
            calibration=v.calibration,
            detectors=j.detectors,
            fusion=j.fusion,
        )
        return Finished(self.store.put_final(result))

    def fail_internal(self, job: JobMessage, exc: BaseException) -> Finished:
        """Finish ``job`` as ``internal`` after an unexpected error outside the per-image path."""
        return self._fail(job, as_fakesake_error(exc), self.clock())

    def _model_of(self, job: JobMessage) -> str:
        """The identities of the detectors ``job`` names (a name as given when this worker does not serve it)."""
        members = self.members or {}
        return ",".join(members[n].spec.identity if n in members else n for n in job.detectors)

    def _fail(
        self, job: JobMessage, err: FakesakeError, started: float, *, attempts: int | None = None, deliveries: int = 1
    ) -> Finished:
        attempts = attempts if attempts is not None else self.counters.attempts(job.job_id)
        total_ms = (self.clock() - started) * 1000
        info = ErrorInfo(code=err.code.value, message=err.message, retryable=err.retryable)
        result = JobResult(
            job_id=job.job_id,
            tenant=job.tenant,
            source=redact(job.source),
            status=Status.ERROR,
            model=self._model_of(job),
            error=info,
            attempts=max(attempts, 1),
            timings=Timings(queued_ms=_queued_ms(job, total_ms), total_ms=total_ms),
        )
        stored = self.store.put_final(result)
        # The DLQ record is written after the result: if we die in between, redelivery sees the stored
        # result and stops, and the job is still answered; a missing DLQ line is the lesser loss.
        self.dead_letters.add(job, info, attempts=max(attempts, 1), deliveries=deliveries)
        log.warning("job failed: %s: %s", info.code, info.message)
        return Finished(stored)


def _queued_ms(job: JobMessage, spent_ms: float) -> float:
    """Submission until this (final) delivery began: the job's age now, less what the delivery spent."""
    return max(0.0, (datetime.now(UTC) - job.submitted_at).total_seconds() * 1000 - spent_ms)


def source_host(source: str) -> str:
    """The rate-limit scope of a source: the URL host, or the S3 bucket."""
    parts = urlsplit(source)
    return (parts.hostname or parts.netloc or "local").lower()
