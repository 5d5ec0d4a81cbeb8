"""A REAL Celery worker consumes the messages ``producers.wire`` builds by hand, from both lanes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import wire
from producers.client import Producer
from producers.contract import ALL_QUEUES, JobMessage, Priority, queue_name
from producers.settings import ProducerSettings, RedisSettings
from tests.integration.celery_echo_app import RECEIVED

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def producer(redis_url: str) -> Iterator[Producer]:
    p = Producer(ProducerSettings(redis=RedisSettings(url=redis_url)))
    yield p
    p.close()


@pytest.fixture()
def celery_worker(redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A tests.integration.celery_echo_app worker --pool=threads`` on both lanes."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.integration.celery_echo_app",
            "worker",
            "--pool=threads",
            "-c",
            "2",
            "-Q",
            ",".join(ALL_QUEUES),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
            "-n",
            f"echo{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env={**os.environ, "FAKESAKE_TEST_BROKER": redis_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield proc
    proc.terminate()  # warm shutdown: finishes (and acks) what it holds
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert b"Traceback" not in err, err.decode(errors="replace")[-3000:]


def _received(client: redis.Redis, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while client.llen(RECEIVED) < n:
        assert proc.poll() is None, "celery worker exited"
        assert time.monotonic() < deadline, f"only {client.llen(RECEIVED)} of {n} messages consumed"
        time.sleep(0.1)
    return [json.loads(x) for x in client.lrange(RECEIVED, 0, -1)]


@pytest.mark.timeout(120)
def test_celery_worker_receives_exact_jobs_from_both_lanes(
    redis_url: str, producer: Producer, celery_worker: subprocess.Popen[bytes]
) -> None:
    client = redis.Redis.from_url(redis_url)
    items: list[dict[str, Any]] = [
        {
            "source": f"s3://bucket/img-{i}.jpg",
            "priority": "bulk" if i % 2 else "interactive",
            "idempotency_key": f"k{i}" if i % 3 == 0 else None,
            "source_version": "v1" if i % 5 == 0 else None,
            "callback_url": "https://hooks.example/cb" if i % 4 == 0 else None,
        }
        for i in range(20)
    ]
    first = producer.submit_many(items[:10], tenant="acme")  # queued before the worker is listening, or not
    _received(client, 1, celery_worker)  # the worker is up and consuming
    second = producer.submit_many(items[10:], tenant="acme")
    got = _received(client, 20, celery_worker)

    jobs = {j.job_id: j for j in (JobMessage.model_validate(g["job"]) for g in got)}
    assert sorted(jobs) == sorted(first + second)
    by_id = {g["job"]["job_id"]: g for g in got}
    for item, job_id in zip(items, first + second, strict=True):
        job = jobs[job_id]
        assert job.source == item["source"] and job.tenant == "acme"
        assert job.priority is Priority(item["priority"])
        assert job.idempotency_key == item["idempotency_key"]
        assert job.source_version == item["source_version"]
        assert job.callback_url == item["callback_url"]
        record = by_id[job_id]
        assert record["job"] == wire.job_fields(job)  # the exact dict sent, not just an equal model
        assert record["task_id"] == job_id
        assert record["routing_key"] == queue_name(job.priority)
        assert record["retries"] == 0
    time.sleep(0.5)
    assert producer.queue_depths() == {"interactive": 0, "bulk": 0}
    deadline = time.monotonic() + 10
    while client.hlen("unacked") and time.monotonic() < deadline:  # acks_late: acked after the task ran
        time.sleep(0.1)
    assert client.hlen("unacked") == 0


@pytest.mark.timeout(60)
def test_kombu_decodes_a_plain_body_and_restores_the_message_unchanged(redis_url: str, producer: Producer) -> None:
    """kombu's own consumer path, without a worker: the plain-text body decodes (no ``body_encoding``), and
    an unacked message (a dead worker's) goes back onto its lane as the same JSON, flagged redelivered."""
    from kombu import Connection

    client = redis.Redis.from_url(redis_url)
    lane = queue_name(Priority.BULK)
    job_id = producer.submit("s3://bucket/a.jpg", tenant="acme", priority="bulk", idempotency_key="k")
    (original,) = client.lrange(lane, 0, -1)
    with Connection(redis_url) as conn:
        channel = conn.channel()
        message = channel.basic_get(lane)
        assert message is not None
        (fields,), kwargs, embed = message.decode()
        assert (JobMessage.model_validate(fields).job_id, kwargs, embed) == (job_id, {}, {})
        assert message.delivery_info["routing_key"] == lane
        assert client.llen(lane) == 0 and client.hlen("unacked") == 1
        channel.basic_recover(requeue=True)  # what kombu does with the unacked messages of a dead worker
    (restored,) = client.lrange(lane, 0, -1)
    expected = json.loads(original)
    expected["headers"]["redelivered"] = True
    expected["properties"]["delivery_info"]["redelivered"] = True
    assert json.loads(restored) == expected
    assert client.hlen("unacked") == 0
