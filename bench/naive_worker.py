"""A NAIVE Celery worker: the model card's pipeline wrapped in one Celery task per image. The baseline of
"queue vs naive" (bench section ``queue``).

What a first version would look like: Celery's defaults (prefork pool, one child per core, prefetch 4),
the card's pipeline (``tests.support.card.CardPipeline``) loaded lazily in each child, one image per task, no
batching, no decode/inference overlap. It consumes the same messages (``producers.wire``) from the same
lane and stores the same ``JobResult`` records, so the producer and the wait are identical to the real
worker's. Local files only (``file://``).

    BENCH_BROKER=redis://... BENCH_WEIGHTS=/path/midjourney5M.pt \\
        celery -A bench.naive_worker worker -Q fakesake.interactive
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]
from PIL import Image

from producers.contract import ALL_QUEUES, TASK_NAME, JobMessage, JobResult, Status, Timings
from worker.core import registry
from worker.core.verdict import verdict
from worker.fetch.local import local_path
from worker.stores.results import RedisResultStore

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0")
SPEC = registry.get(os.environ.get("BENCH_MODEL", "ffs-mj-5m"))

app = Celery("fakesake_naive", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(name) for name in ALL_QUEUES],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_state: dict[str, Any] = {}


def _pipeline() -> Any:
    if "pipe" not in _state:  # per child process, on its first task
        from tests.support.card import CardPipeline

        _state["pipe"] = CardPipeline(Path(os.environ["BENCH_WEIGHTS"]), SPEC)
        _state["store"] = RedisResultStore(redis.Redis.from_url(BROKER), ttl_s=3600, index_max=10_000)
    return _state["pipe"]


@app.task(name=TASK_NAME)
def classify(payload: dict[str, Any]) -> None:
    started = time.perf_counter()
    job = JobMessage.model_validate(payload)
    pipe = _pipeline()
    score = float(pipe(Image.open(local_path(job.source)))[0]["score"])
    v = verdict(score, SPEC)
    _state["store"].put_final(
        JobResult(
            job_id=job.job_id,
            tenant=job.tenant,
            source=job.source,
            status=Status.OK,
            score=v.score,
            label=v.label,
            band=v.band,
            model=v.model,
            timings=Timings(total_ms=(time.perf_counter() - started) * 1e3),
        )
    )
