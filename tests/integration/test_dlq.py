"""DeadLetters on a real redis-server: idempotent records, listing, and re-drive under a new job id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from producers import wire
from producers.client import Producer, QueueFullError
from producers.contract import ErrorInfo, JobMessage, Keys
from producers.dlq import DeadLetters
from producers.errors import ErrorCode, PermanentError
from producers.settings import ProducerSettings, QueueSettings, RedisSettings

NOW = datetime.now(UTC)
POISON = ErrorInfo(code="poison", message="killed its worker 3 times")


@pytest.fixture()
def producer(redis_url: str) -> Iterator[Producer]:
    p = Producer(ProducerSettings(redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=2)))
    yield p
    p.close()


def _job(n: int = 0, **kw: object) -> JobMessage:
    return JobMessage(tenant="acme", source=f"s3://b/{n}.jpg", **kw)  # type: ignore[arg-type]


def _add(dlq: DeadLetters, job: JobMessage, error: ErrorInfo = POISON) -> bool:
    return dlq.add(job, error, attempts=1, deliveries=3, first_seen=NOW - timedelta(minutes=5), last_seen=NOW)


def test_add_is_idempotent_per_job(client: redis.Redis) -> None:
    dlq = DeadLetters(client)
    job = _job()
    assert _add(dlq, job) is True
    assert _add(dlq, job, ErrorInfo(code="internal", message="second opinion")) is False
    record = dlq.get(job.job_id)
    assert record is not None and record.job == job and record.error == POISON
    assert (record.attempts, record.deliveries, record.redriven_from, record.redriven_to) == (
        1,
        3,
        None,
        None,
    )
    assert dlq.count() == 1
    assert dlq.get("0" * 32) is None


def test_list_oldest_first_and_remove(client: redis.Redis) -> None:
    dlq = DeadLetters(client)
    jobs = [_job(i) for i in range(3)]
    for job in jobs:
        _add(dlq, job)
    assert [r.job.job_id for r in dlq.list()] == [j.job_id for j in jobs]
    assert [r.job.job_id for r in dlq.list(limit=2)] == [j.job_id for j in jobs[:2]]
    assert dlq.remove(jobs[1].job_id) is True
    assert dlq.remove(jobs[1].job_id) is False
    assert dlq.count() == 2 and dlq.get(jobs[1].job_id) is None


def test_redrive_enqueues_under_a_new_id_once(client: redis.Redis, producer: Producer) -> None:
    dlq = DeadLetters(client)
    job = _job(idempotency_key="order-7", callback_url="https://hooks.example/cb")
    _add(dlq, job)
    new_id = dlq.redrive(job.job_id, producer)
    assert new_id != job.job_id
    assert dlq.redrive(job.job_id, producer) == new_id  # a second retry does not enqueue again
    (raw,) = client.lrange(wire.queue_key(job.priority), 0, -1)
    _, queued = wire.decode_message(raw)
    assert queued.job_id == new_id
    assert queued.model_dump(exclude={"job_id", "submitted_at", "idempotency_key"}) == job.model_dump(
        exclude={"job_id", "submitted_at", "idempotency_key"}
    )
    assert queued.idempotency_key is None
    record = dlq.get(job.job_id)
    assert record is not None and record.redriven_to == new_id and record.redriven_at is not None
    # resolved: out of the backlog (what the dlq-size gauge reads), an audit copy expires with results
    assert dlq.count() == 0 and dlq.list() == [] and client.hlen(Keys.DLQ) == 0
    assert 0 < client.ttl(Keys.dlq_redriven(job.job_id)) <= producer.settings.queue.result_ttl_s
    # if the re-driven job dies too, its record points back at the original
    _add(dlq, queued)
    again = dlq.get(new_id)
    assert again is not None and again.redriven_from == job.job_id
    assert client.ttl(Keys.redriven_from(new_id)) > 0


def test_redrive_errors(client: redis.Redis, producer: Producer) -> None:
    dlq = DeadLetters(client)
    with pytest.raises(PermanentError) as info:
        dlq.redrive("f" * 32, producer)
    assert info.value.code is ErrorCode.NOT_FOUND
    producer.submit_many(["s3://b/x.jpg", "s3://b/y.jpg"], tenant="acme")  # the lane is at max_depth 2
    job = _job()
    _add(dlq, job)
    with pytest.raises(QueueFullError):
        dlq.redrive(job.job_id, producer)
    record = dlq.get(job.job_id)
    assert record is not None and record.redriven_to is None and dlq.count() == 1


def test_add_with_defaults_and_raw_messages(client: redis.Redis, producer: Producer) -> None:
    dlq = DeadLetters(client)
    job = _job()
    assert dlq.add(job, POISON, attempts=2, deliveries=1) is True  # the worker core's call shape
    record = dlq.get(job.job_id)
    assert record is not None and record.first_seen <= record.last_seen <= record.dead_at
    raw_id = dlq.add_raw({"job_id": "not valid!", "x": 1}, code="invalid-job", message="bad message")
    assert raw_id.startswith("raw-")
    assert dlq.add_raw({"job_id": "not valid!", "x": 1}, code="invalid-job", message="again") == raw_id
    keyed = dlq.add_raw({"job_id": "abcdef123456", "tenant": ""}, code="invalid-job", message="bad tenant")
    assert keyed == "abcdef123456"
    raw = dlq.get(raw_id)
    assert raw is not None and raw.job is None and raw.payload == {"job_id": "not valid!", "x": 1}
    assert dlq.count() == client.hlen(Keys.DLQ) == 3
    with pytest.raises(PermanentError) as info:
        dlq.redrive(raw_id, producer)
    assert info.value.code is ErrorCode.INVALID_JOB
