"""DeadLetters on a real redis-server: idempotent records, listing, re-drive under a new job id, tenant scope,
and dead webhooks re-sent as delivery tasks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from producers import wire
from producers.client import Producer, QueueFullError
from producers.contract import WEBHOOK_TASK_NAME, ErrorInfo, JobMessage, JobResult, Keys, Priority, Status, side_lane
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


# --- tenant scope -------------------------------------------------------------------------------------


def test_tenant_scopes_list_get_remove_and_redrive(client: redis.Redis, producer: Producer) -> None:
    dlq = DeadLetters(client)
    acme = [_job(i) for i in range(2)]
    beta = [JobMessage(tenant="beta", source=f"s3://b/beta-{i}.jpg") for i in range(2)]
    for job in (acme[0], beta[0], acme[1], beta[1]):
        _add(dlq, job)
    raw_id = dlq.add_raw({"job_id": "abcdef123456", "tenant": "acme"}, code="invalid-job", message="bad")
    assert [r.job_id for r in dlq.list(tenant="acme")] == [j.job_id for j in acme]  # no raw: tenant unproven
    assert [r.job_id for r in dlq.list(tenant="beta")] == [j.job_id for j in beta]
    assert [r.job_id for r in dlq.list(1, tenant="beta")] == [beta[0].job_id]
    assert dlq.list(tenant="nobody") == []
    assert len(dlq.list(None)) == dlq.count() == 5  # unscoped: every tenant's and the raw one
    assert dlq.get(beta[0].job_id, tenant="acme") is None and dlq.get(raw_id, tenant="acme") is None
    assert dlq.get(beta[0].job_id, tenant="beta") is not None
    assert dlq.remove(beta[0].job_id, tenant="acme") is False and dlq.count() == 5
    with pytest.raises(PermanentError) as info:
        dlq.redrive(beta[1].job_id, producer, tenant="acme")
    assert info.value.code is ErrorCode.NOT_FOUND and client.llen(wire.queue_key(beta[1].priority)) == 0
    new_id = dlq.redrive(acme[0].job_id, producer, tenant="acme")
    (queued,) = [wire.decode_message(raw)[1] for raw in client.lrange(wire.queue_key(acme[0].priority), 0, -1)]
    assert queued.job_id == new_id and queued.tenant == "acme"
    assert dlq.get(acme[0].job_id, tenant="beta") is None  # the audit copy is scoped too
    assert dlq.remove(beta[0].job_id, tenant="beta") is True


def test_a_scoped_listing_pages_past_other_tenants(client: redis.Redis) -> None:
    dlq = DeadLetters(client)
    with client.pipeline(transaction=False) as pipe:  # 600 of another tenant first: more than one page
        for i in range(600):
            job = JobMessage(tenant="beta", source=f"s3://b/{i}.jpg")
            pipe.hset(Keys.DLQ, job.job_id, dlq_record(job))
            pipe.zadd(Keys.DLQ_INDEX, {job.job_id: i})
        pipe.execute()
    mine = _job(7)
    _add(dlq, mine)
    assert [r.job_id for r in dlq.list(10, tenant="acme")] == [mine.job_id]
    assert len(dlq.list(None, tenant="beta")) == 600 and len(dlq.list(1000)) == 601


def dlq_record(job: JobMessage) -> str:
    """A record as stored before scoping existed: the same JSON (the tenant lives in the job)."""
    from producers.dlq import DeadLetter

    return DeadLetter(job_id=job.job_id, job=job, error=POISON).model_dump_json()


# --- webhooks -----------------------------------------------------------------------------------------


def _result(tenant: str = "acme") -> JobResult:
    return JobResult(job_id=uuid.uuid4().hex, tenant=tenant, source="s3://b/k.jpg", status=Status.OK, score=0.8)


GONE = ErrorInfo(code="fetch-failed", message="HTTP 410")


def test_dead_webhooks_are_kept_apart_from_dead_jobs(client: redis.Redis) -> None:
    dlq = DeadLetters(client)
    result = _result()
    url = "https://hooks.example/cb?token=secret"
    assert dlq.add_webhook(result, url, GONE, attempts=1) is True
    assert dlq.add_webhook(result, url, ErrorInfo(code="timeout", message="later"), attempts=5) is False
    record = dlq.get_webhook(result.job_id)
    assert record is not None and record.kind == "webhook"
    assert (record.job_id, record.tenant, record.error, record.attempts, record.result) == (
        result.job_id,
        "acme",
        GONE,
        1,
        result,
    )
    assert record.callback_url == url and record.callback_redacted == "https://hooks.example/cb?<redacted>"
    assert dlq.count() == 0 and dlq.list() == [] and client.hlen(Keys.DLQ) == 0  # the job backlog is unchanged
    assert dlq.count_webhooks() == 1 and dlq.webhooks() == [record]
    other = _result("beta")
    dlq.add_webhook(other, url, GONE, attempts=3)
    assert [r.job_id for r in dlq.webhooks(tenant="beta")] == [other.job_id]
    assert dlq.get_webhook(other.job_id, tenant="acme") is None


def test_resend_webhook_queues_the_delivery_task_once(client: redis.Redis, producer: Producer) -> None:
    dlq = DeadLetters(client)
    result, url = _result(), "https://hooks.example/cb?token=secret"
    dlq.add_webhook(result, url, GONE, attempts=1)
    with pytest.raises(PermanentError) as info:
        dlq.resend_webhook(result.job_id, producer, tenant="beta")
    assert info.value.code is ErrorCode.NOT_FOUND and dlq.count_webhooks() == 1
    task_id = dlq.resend_webhook(result.job_id, producer, tenant="acme")
    # a follow-up: on the interactive lane's side lane (producers.contract.side_lane), the lane itself untouched
    assert client.llen(wire.queue_key(Priority.INTERACTIVE)) == 0
    (raw,) = client.lrange(side_lane(wire.queue_key(Priority.INTERACTIVE)), 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == WEBHOOK_TASK_NAME and message["headers"]["id"] == task_id
    assert "secret" not in message["headers"]["argsrepr"]  # monitors show it
    args, kwargs, _ = json.loads(message["body"])
    assert args == [result.model_dump(mode="json"), url] and kwargs == {}
    assert dlq.count_webhooks() == 0 and dlq.get_webhook(result.job_id) is None
    with pytest.raises(PermanentError):  # re-sent already: nothing waits
        dlq.resend_webhook(result.job_id, producer)
    assert client.llen(side_lane(wire.queue_key(Priority.INTERACTIVE))) == 1
