"""One worker process at run time: the job processor, the batching thread, stores and telemetry, and the
few process-level helpers they need. Built once per process by :mod:`worker.service.builder`, after any fork,
so CUDA and boto3 clients are created in the process that uses them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from producers.connections import redis_unavailable
from producers.contract import JobMessage, JobResult
from producers.errors import ErrorCode, FakesakeError, TransientError
from producers.settings import ENV_PREFIX
from worker.core.batcher import Batcher
from worker.core.pipeline import Prepared, Preparer
from worker.core.processing import Decision, JobProcessor

log = logging.getLogger(__name__)

#: A worker that could not start exits with this, before it takes any job (2 = usage or configuration error).
EXIT_START_FAILED = 2


class BoundedPreparer:
    """Limits how many jobs fetch/decode at once, so N job threads never hold N decoded 12 MP photos."""

    def __init__(self, preparer: Preparer, limit: int) -> None:
        self._preparer = preparer
        # Slots as tokens in a C queue rather than threading.Semaphore (Python code on a Condition): under load
        # most job threads wait here, and each hand-over then costs no Python-level lock juggling.
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(limit):
            self._slots.put(None)

    def prepare(self, source: str, version: str | None = None, *, tenant: str | None = None) -> Prepared:
        self._slots.get()
        try:
            return self._preparer.prepare(source, version, tenant=tenant)
        finally:
            self._slots.put(None)


class DeferredToucher:
    """Ledger touches for received jobs, run on a thread of its own instead of Celery's consumer thread.

    The consumer thread takes every message, bookkeeps it and sends every ack: a Redis round trip there per
    job throttles the whole worker's intake (it waits for the GIL after every reply). The touch only has to
    land before the job could be judged lost (``ledger.grace_s``, minutes), so milliseconds later is as good.
    Ids queued while a touch runs go together in the next one (``touch`` takes a list: one round trip for
    all), so under load the touches cost a fraction of a round trip per job.
    The touch at processing start (``RedisJobCounters.open_deliveries``) stays synchronous.
    """

    def __init__(
        self,
        touch: Callable[[list[str]], None],
        max_batch: int = 256,
        linger_s: float = 0.0,
        what: str = "mark %d received jobs in the ledger",
    ) -> None:
        self._touch = touch
        self._what = what  # for the warning when a call fails ("could not <what>"); the bulk intake's acks use it too
        self._max_batch = max_batch
        # How long a first id waits for others to share its round trip (a steady trickle of jobs would
        # otherwise cost one touch each); far below ledger.grace_s, and the arrival's own touch follows anyway.
        self._linger_s = linger_s
        self._ids: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fakesake-touch", daemon=True)

    def start(self) -> DeferredToucher:
        self._thread.start()
        return self

    def __call__(self, job_id: str) -> None:
        """Queue a touch of ``job_id``; never blocks, never raises."""
        self._ids.put(job_id)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Run the touches already queued, then end the thread."""
        self._ids.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _take(self) -> tuple[list[str], bool]:
        """The next ids (waiting for the first), and whether stop() was asked."""
        first = self._ids.get()
        if first is None:
            return [], True
        ids = [first]
        deadline = time.monotonic() + self._linger_s
        while len(ids) < self._max_batch:
            try:
                remaining = deadline - time.monotonic()
                nxt = self._ids.get(timeout=remaining) if remaining > 0 else self._ids.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return ids, True
            ids.append(nxt)
        return ids, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            ids, stopping = self._take()
            if not ids:
                continue
            try:
                self._touch(ids)
            except Exception:  # the processing-start touch follows; this thread must go on
                log.warning("could not " + self._what + " (%s...)", len(ids), ids[0], exc_info=True)


@dataclass
class WorkerRuntime:
    """What one worker process runs once started (built by :func:`worker.service.builder.worker_runtime`)."""

    processor: JobProcessor
    batcher: Batcher
    redis: Any
    dead_letters: Any
    telemetry: Any
    webhooks: Any  # webhook_delivery.WebhookSender
    ledger: Any = None  # the SweepThread re-queueing lost jobs (worker/stores/ledger.py); None when disabled
    touch: Any = None  # marks a job alive in the ledger when this worker gets it (DeferredToucher of ledger.Toucher)
    heartbeat_interval_s: float = 5.0  # how often the consumer bootstep reports that it runs
    more_batchers: tuple[Batcher, ...] = ()  # one per further detector when the worker serves several
    adverts: Any = None  # stores.adverts.Advertiser: what this worker serves, kept advertised in Redis
    intake: Any = None  # service.intake.BulkIntake with batch.intake = bulk (started by the Celery adapter), else None

    def process(self, job: JobMessage, lane: str | None = None, reserved: frozenset[str] = frozenset()) -> Decision:
        """Run one job; store errors surface as TransientError(UNAVAILABLE) for the adapter to requeue."""
        with self.telemetry.job():
            try:
                # The processing-start ledger touch is part of processor.process (counters.open_deliveries).
                decision = self.processor.process(job, reserved)
            except FakesakeError:
                raise
            except Exception as exc:
                if redis_unavailable(exc):  # Redis down while reading/writing counters or results
                    raise TransientError(ErrorCode.UNAVAILABLE, f"result store unavailable: {exc}") from exc
                # A bug outside the per-image path: answer the job as `internal` rather than let Celery
                # ack a failed task with no result anywhere.
                log.exception("unexpected error while processing; finishing the job as internal")
                decision = self.processor.fail_internal(job, exc)
            self.telemetry.decision(decision, lane)
            return decision

    def reject_invalid(self, payload: Any, exc: ValidationError) -> None:
        """A message that is not a valid job cannot get a tenant-scoped result; it is dead-lettered raw."""
        log.error("invalid job message dead-lettered: %s", exc.errors(include_url=False)[:3])
        self.dead_letters.add_raw(payload, code=ErrorCode.INVALID_JOB.value, message=str(exc)[:2000])
        self.telemetry.invalid()

    def deliver_webhook(self, result: JobResult, url: str, attempt: int) -> float | None:
        """One webhook attempt; returns a retry countdown or None when done (delivered or given up)."""
        countdown: float | None = self.webhooks.attempt(result, url, attempt, self.telemetry)
        return countdown

    def close(self) -> None:
        if self.intake is not None:  # first: its running jobs need the batchers
            self.intake.stop()
        if self.ledger is not None:
            self.ledger.stop()
        if self.touch is not None:
            self.touch.stop()
        if self.adverts is not None:
            self.adverts.stop()
        for batcher in (self.batcher, *self.more_batchers):
            batcher.stop()
        self.telemetry.stop()


def ping_redis(client: Any, url: str) -> None:
    """Fail a start at once when Redis does not answer (TransientError ``unavailable`` naming the setting)."""
    import redis

    from producers.redaction import redact_url

    try:
        client.ping()
    except redis.RedisError as exc:
        raise TransientError(
            ErrorCode.UNAVAILABLE, f"cannot reach Redis at {redact_url(url)} ({exc}); check FAKESAKE_REDIS__URL"
        ) from None


def start_failure(exc: BaseException) -> str:
    """Why a worker could not start, as one line ``code: message`` naming the setting to change."""
    if isinstance(exc, ValidationError):
        line = f"{ErrorCode.CONFIG.value}: invalid settings: {settings_problems(exc)}"
    elif isinstance(exc, FakesakeError):
        line = f"{exc.code.value}: {exc.message}"
    else:
        line = f"{ErrorCode.INTERNAL.value}: worker start failed: {type(exc).__name__}: {exc}"
    return " ".join(line.split())


def settings_problems(exc: ValidationError) -> str:
    """``FAKESAKE_METRICS__PORT: Input should be a valid integer; ...``: each problem under its variable."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(part).upper() for part in err["loc"]]
        if len(loc) == 1 and err["type"] == "value_error":  # a group's cross-field rule: the message names fields
            name = f"{ENV_PREFIX}{loc[0]}__*"
        else:
            name = ENV_PREFIX + "__".join(loc)
        problems.append(f"{name}: {err['msg']}" if loc else str(err["msg"]))
    return "; ".join(problems)
