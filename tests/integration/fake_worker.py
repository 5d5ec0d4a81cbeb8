"""A stand-in for the Celery worker in producer tests: BRPOPs the lanes, stores a final result per job."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis

from producers import wire
from producers.contract import ErrorInfo, JobMessage, JobResult, Priority, Status
from worker.stores.results import RedisResultStore


def ok_result(job: JobMessage) -> JobResult:
    """An ``ok`` verdict, or a ``not-found`` error for sources containing ``missing``."""
    if "missing" in job.source:
        return JobResult(
            job_id=job.job_id,
            tenant=job.tenant,
            source=job.source,
            status=Status.ERROR,
            error=ErrorInfo(code="not-found", message="no such object"),
        )
    return JobResult(
        job_id=job.job_id,
        tenant=job.tenant,
        source=job.source,
        status=Status.OK,
        score=0.9,
        label="ai",
        band="ai",
        model="ffs-mj-5m@1.0",
    )


class FakeWorker:
    """Stands in for the Celery worker: BRPOPs our lanes, decodes the message, stores a final result."""

    def __init__(self, redis_url: str, outcome: Callable[[JobMessage], JobResult] = ok_result) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.store = RedisResultStore(self.client, ttl_s=600, index_max=1000)
        self.outcome = outcome
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            item = self.client.brpop([wire.queue_key(p) for p in Priority], timeout=0.1)
            if item is not None:
                _, job = wire.decode_message(item[1])
                self.store.put_final(self.outcome(job))

    def __enter__(self) -> FakeWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.client.close()
