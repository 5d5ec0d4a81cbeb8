"""One worker process at run time: the job processor, the batching thread, stores and telemetry, and the
few process-level helpers they need. Built once per process by :mod:`worker.service.builder`, after any fork,
so CUDA and boto3 clients are created in the process that uses them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from producers.contract import JobMessage, JobResult
from producers.errors import ErrorCode, FakesakeError, TransientError
from worker.core.batcher import Batcher
from worker.core.pipeline import Prepared, Preparer
from worker.core.processing import Decision, JobProcessor

log = logging.getLogger(__name__)


class BoundedPreparer:
    """Limits how many jobs fetch/decode at once, so N job threads never hold N decoded 12 MP photos."""

    def __init__(self, preparer: Preparer, limit: int) -> None:
        self._preparer = preparer
        self._slots = threading.BoundedSemaphore(limit)

    def prepare(self, source: str, version: str | None = None) -> Prepared:
        with self._slots:
            return self._preparer.prepare(source, version)


class DeferredToucher:
    """Ledger touches for received jobs, run on a thread of its own instead of Celery's consumer thread.

    The consumer thread takes every message, bookkeeps it and sends every ack: a Redis round trip there per
    job throttles the whole worker's intake (it waits for the GIL after every reply). The touch only has to
    land before the job could be judged lost (``ledger.grace_s``, minutes), so milliseconds later is as good.
    The touch at processing start (``RedisJobCounters.open_deliveries``) stays synchronous.
    """

    def __init__(self, touch: Callable[[str], None]) -> None:
        self._touch = touch
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

    def _run(self) -> None:
        while (job_id := self._ids.get()) is not None:
            try:
                self._touch(job_id)
            except Exception:  # the processing-start touch follows; this thread must go on
                log.warning("could not mark job %s received in the ledger", job_id, exc_info=True)


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

    def process(self, job: JobMessage, lane: str | None = None, reserved: frozenset[str] = frozenset()) -> Decision:
        """Run one job; store errors surface as TransientError(UNAVAILABLE) for the adapter to requeue."""
        with self.telemetry.job(lane):
            try:
                # The processing-start ledger touch is part of processor.process (counters.open_deliveries).
                decision = self.processor.process(job, reserved)
            except FakesakeError:
                raise
            except Exception as exc:
                if _is_redis_error(exc):  # Redis down while reading/writing counters or results
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
        return self.webhooks.attempt(result, url, attempt, self.telemetry)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.stop()
        if self.touch is not None:
            self.touch.stop()
        self.batcher.stop()
        self.telemetry.stop()


def _is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.RedisError | ConnectionError | TimeoutError)
