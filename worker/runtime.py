"""Wiring of one worker process: settings → engine, inference loop, Redis-backed stores, metrics, health.

Everything here is assembly; behaviour lives in the modules it wires. Built once per process, after any
fork, so CUDA and boto3 clients are created in the process that uses them.
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

from producers.connections import redis_from_settings
from producers.contract import JobMessage, JobResult
from producers.errors import ErrorCode, FakesakeError, TransientError
from worker.batching import BatchPolicy
from worker.counters import RedisJobCounters
from worker.inference_loop import InferenceLoop
from worker.processing import Decision, JobProcessor, RateLimitPolicy, RetryPolicy
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class BoundedPreparer:
    """Limits how many jobs fetch/decode at once, so N job threads never hold N decoded 12 MP photos."""

    def __init__(self, engine: Any, limit: int) -> None:
        self._engine = engine
        self._slots = threading.BoundedSemaphore(limit)

    def prepare(self, source: str, version: str | None = None) -> Any:
        with self._slots:
            return self._engine.prepare(source, version)


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
    settings: WorkerSettings
    engine: Any
    loop: InferenceLoop
    processor: JobProcessor
    redis: Any
    dead_letters: Any
    telemetry: Any
    ledger: Any = None  # the SweepThread re-queueing lost jobs (worker/ledger.py); None when disabled
    touch: Any = None  # marks a job alive in the ledger when this worker gets it (DeferredToucher of ledger.Toucher)

    @classmethod
    def start(cls, settings: WorkerSettings) -> WorkerRuntime:
        from worker.dlq import DeadLetters
        from worker.engine import Engine
        from worker.fetch.router import build_fetcher
        from worker.fetch.s3 import make_s3_client
        from worker.ledger import LedgerSweeper, SweepThread, Toucher
        from worker.ratelimit import RedisRateLimiter
        from worker.results import RedisResultStore, S3ResultSink, SinkingResultStore
        from worker.telemetry import Telemetry

        client = redis_from_settings(settings.redis)
        telemetry = Telemetry.start(settings, client)
        t0 = time.monotonic()
        # the fetch deadlines apply to S3 sources as to URLs (router.build_fetcher does the same)
        s3_client = make_s3_client(
            settings.s3,
            connect_timeout_s=settings.fetch.connect_timeout_s,
            read_timeout_s=settings.fetch.read_timeout_s,
        )
        fetcher = build_fetcher(settings, s3_client=s3_client)
        engine = Engine.from_settings(settings, fetcher)
        telemetry.model_loaded(engine.spec.ref, time.monotonic() - t0)
        policy = BatchPolicy(max_size=settings.batch.max_size, max_wait_s=settings.batch.max_wait_ms / 1000)
        loop = InferenceLoop(engine.classifier.predict, policy, observer=telemetry.observe_batch).start()
        dead_letters = DeadLetters(client)
        store: Any = RedisResultStore(client, ttl_s=settings.results.ttl_s, index_max=settings.results.index_max)
        if settings.results.s3_prefix:
            store = SinkingResultStore(store, S3ResultSink(s3_client, settings.results.s3_prefix))
        processor = JobProcessor(
            spec=engine.spec,
            preparer=BoundedPreparer(engine, settings.batch.prepare_threads),
            infer=loop.submit,
            store=store,
            counters=RedisJobCounters(client),
            dead_letters=dead_letters,
            limiter=RedisRateLimiter(client),
            retry=RetryPolicy(**settings.retry.model_dump()),
            rate=RateLimitPolicy(**settings.rate_limit.model_dump()),
            thresholds=engine.thresholds,
        )
        log.info(
            "worker ready: %s on %s, batch<=%d wait<=%.0fms",
            engine.spec.ref,
            engine.device,
            policy.max_size,
            settings.batch.max_wait_ms,
        )
        ledger = None
        if settings.ledger.sweep_interval_s > 0:
            sweeper = LedgerSweeper(client, grace_s=settings.ledger.grace_s, batch=settings.ledger.batch)
            ledger = SweepThread(sweeper, settings.ledger.sweep_interval_s, on_report=telemetry.ledger_swept).start()
        touch = DeferredToucher(Toucher(client)).start()
        return cls(settings, engine, loop, processor, client, dead_letters, telemetry, ledger, touch)

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
        from worker.webhook_delivery import deliver_once

        return deliver_once(self.settings, result, url, attempt, self.telemetry)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.stop()
        if self.touch is not None:
            self.touch.stop()
        self.loop.stop()
        self.telemetry.stop()


def _is_redis_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.RedisError | ConnectionError | TimeoutError)
