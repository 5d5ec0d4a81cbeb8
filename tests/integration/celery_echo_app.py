"""A test-only Celery app: one task registered under ``TASK_NAME`` that records what it received.

Started as a real ``celery worker`` subprocess by ``test_wire_celery.py`` to prove that the messages
``producers.wire`` builds by hand are consumed by Celery exactly like ``send_task`` ones. The broker URL
comes from ``FAKESAKE_TEST_BROKER``; each received job goes, as JSON, onto the Redis list ``echo:received``
together with the queue it was delivered from and Celery's view of the task id.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from producers.contract import ALL_QUEUES, TASK_NAME

RECEIVED = "echo:received"
BROKER = os.environ.get("FAKESAKE_TEST_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("fakesake_echo", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_queues=[Queue(name) for name in ALL_QUEUES],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_redis = redis.Redis.from_url(BROKER)


@app.task(name=TASK_NAME, bind=True)
def classify(self: Any, job: dict[str, Any]) -> None:
    _redis.rpush(
        RECEIVED,
        json.dumps(
            {
                "job": job,
                "task_id": self.request.id,
                "routing_key": (self.request.delivery_info or {}).get("routing_key"),
                "retries": self.request.retries,
            }
        ),
    )
