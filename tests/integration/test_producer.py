"""Producer against a real redis-server: submit, submit_many, idempotency, backpressure, wait, isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producers import serving, wire
from producers.client import Producer, QueueFullError
from producers.contract import Keys, Priority, Status, queue_name
from producers.errors import ErrorCode, PermanentError
from producers.settings import ProducerSettings, QueueSettings, RedisSettings
from tests.integration.fake_worker import FakeWorker


def _producer(redis_url: str, max_depth: int = 100_000) -> Producer:
    return Producer(ProducerSettings(redis=RedisSettings(url=redis_url), queue=QueueSettings(max_depth=max_depth)))


@pytest.fixture()
def producer(redis_url: str) -> Iterator[Producer]:
    p = _producer(redis_url)
    yield p
    p.close()


def test_submit_queues_one_celery_message(producer: Producer, client: redis.Redis) -> None:
    job_id = producer.submit(
        "https://example.com/a.jpg",
        tenant="acme",
        priority="bulk",
        model="ffs-sd-5m",
        callback_url="https://hooks.example/cb",
        source_version=None,
    )
    # a detector other than the default has lanes of its own: only workers serving it consume them
    assert client.llen("fakesake.interactive") == 0 == client.llen("fakesake.bulk")
    (raw,) = client.lrange(queue_name("bulk", ["ffs-sd-5m"]), 0, -1)
    envelope, job = wire.decode_message(raw)
    assert envelope["headers"]["id"] == job.job_id == job_id
    assert (job.tenant, job.source, job.model, job.priority) == (
        "acme",
        "https://example.com/a.jpg",
        "ffs-sd-5m",
        Priority.BULK,
    )
    assert producer.queue_depths() == {"interactive": 0, "bulk": 0}  # no live worker serves ffs-sd-5m
    serving.advertise(client, serving.Advert("w1", frozenset({"ffs-sd-5m"})), forget_s=60)
    assert producer.queue_depths() == {"interactive": 0, "bulk": 1}
    # a stray member (no detector, or more than a worker may serve) adds no lane and breaks nothing
    for names in (frozenset(), frozenset(f"d{i}" for i in range(7))):
        serving.advertise(client, serving.Advert("stray", names), forget_s=60)
    assert producer.queue_depths() == {"interactive": 0, "bulk": 1}


def test_submit_many_keeps_order_and_lanes(producer: Producer, client: redis.Redis) -> None:
    items: list[Any] = [f"s3://b/{i}.jpg" for i in range(1200)]
    items[7] = {"source": "s3://b/x.jpg", "priority": "bulk", "tenant": "other"}
    ids = producer.submit_many(items, tenant="acme")
    assert len(ids) == len(set(ids)) == 1200
    assert producer.queue_depths() == {"interactive": 1199, "bulk": 1}
    # FIFO: kombu LPUSHes and the worker BRPOPs, so the first submitted is the first consumed
    first = wire.decode_message(client.lindex("fakesake.interactive", -1))[1]
    assert (first.job_id, first.source) == (ids[0], "s3://b/0.jpg")
    _, odd = wire.decode_message(client.lindex("fakesake.bulk", 0))
    assert (odd.job_id, odd.tenant) == (ids[7], "other")


def test_submit_many_enqueues_a_large_batch_completely(producer: Producer) -> None:
    """10,000 jobs in one call: every one queued once and in the ledger (its speed is a bench row, not a test:
    ``python -m bench --only producer``)."""
    n = 10_000
    items = [f"https://images.example.com/photos/{i:08d}.jpg" for i in range(n)]
    ids = producer.submit_many(items, tenant="acme", priority="bulk")
    assert len(set(ids)) == n
    assert producer.queue_depths()["bulk"] == n
    assert producer.redis.hlen(Keys.LEDGER) == n and producer.redis.zcard(Keys.LEDGER_SEEN) == n


@pytest.mark.parametrize(
    ("kwargs", "code", "needle"),
    [
        ({"source": "ftp://host/a.jpg"}, ErrorCode.INVALID_SOURCE, "source scheme must be one of"),
        ({"source": "photo.jpg"}, ErrorCode.INVALID_SOURCE, "got 'none'"),
        ({"source": "s3://b/a.jpg", "tenant": "a:b"}, ErrorCode.INVALID_JOB, "tenant"),
        ({"source": "s3://b/a.jpg", "priority": "urgent"}, ErrorCode.INVALID_JOB, "priority"),
        (
            {"source": "s3://b/a.jpg", "callback_url": "ftp://x"},
            ErrorCode.INVALID_JOB,
            "callback_url must be http",
        ),
    ],
)
def test_invalid_inputs_are_permanent(producer: Producer, kwargs: dict[str, Any], code: ErrorCode, needle: str) -> None:
    source = kwargs.pop("source")
    with pytest.raises(PermanentError) as info:
        producer.submit(source, **kwargs)
    assert info.value.code is code
    assert needle in info.value.message
    assert "errors.pydantic.dev" not in info.value.message
    with pytest.raises(PermanentError):  # one bad item: nothing of the batch is queued
        producer.submit_many(["s3://b/ok.jpg", {"source": source, **kwargs}])
    assert producer.queue_depths() == {"interactive": 0, "bulk": 0}


def test_idempotency_key(producer: Producer, client: redis.Redis) -> None:
    a = producer.submit("s3://b/a.jpg", tenant="acme", idempotency_key="order-1")
    assert producer.submit("s3://b/a.jpg", tenant="acme", idempotency_key="order-1") == a
    assert (
        producer.submit_many([{"source": "s3://b/a.jpg", "idempotency_key": "order-1"}] * 3, tenant="acme") == [a] * 3
    )
    other_tenant = producer.submit("s3://b/a.jpg", tenant="beta", idempotency_key="order-1")
    assert other_tenant != a
    assert producer.queue_depths()["interactive"] == 2
    assert client.get(Keys.idempotency("acme", "order-1")) == a.encode()
    ttl = client.ttl(Keys.idempotency("acme", "order-1"))
    assert 0 < ttl <= producer.settings.queue.result_ttl_s
    # two new keys in one call, one repeated: two jobs
    ids = producer.submit_many(
        [
            {"source": "s3://b/1.jpg", "idempotency_key": "x"},
            {"source": "s3://b/2.jpg", "idempotency_key": "y"},
            {"source": "s3://b/1.jpg", "idempotency_key": "x"},
        ],
        tenant="acme",
    )
    assert ids[0] == ids[2] != ids[1]
    assert producer.queue_depths()["interactive"] == 4


def test_idempotency_under_concurrency(redis_url: str, client: redis.Redis) -> None:
    """Eight producers race on one key: one job is queued and all get its id."""
    barrier = threading.Barrier(8)
    got: list[str] = []

    def submit() -> None:
        p = _producer(redis_url)
        barrier.wait()
        got.append(p.submit("s3://b/a.jpg", tenant="acme", idempotency_key="race"))
        p.close()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
    assert client.llen("fakesake.interactive") == 1


def test_backpressure_refuses_at_cap_per_lane(redis_url: str) -> None:
    producer = _producer(redis_url, max_depth=3)
    producer.submit_many(["s3://b/1.jpg", "s3://b/2.jpg"], priority="bulk")
    keyed = producer.submit("s3://b/3.jpg", priority="bulk", idempotency_key="k3")
    with pytest.raises(QueueFullError) as info:
        producer.submit("s3://b/4.jpg", priority="bulk")
    assert info.value.code is ErrorCode.QUEUE_FULL and info.value.retryable
    assert "fakesake.bulk" in info.value.message and "3" in info.value.message
    # a resubmission of an accepted job is not refused; the interactive lane is unaffected
    assert producer.submit("s3://b/3.jpg", priority="bulk", idempotency_key="k3") == keyed
    assert producer.submit("s3://b/i.jpg", priority="interactive")
    assert producer.queue_depths() == {"interactive": 1, "bulk": 3}
    with pytest.raises(QueueFullError) as many:
        producer.submit_many(["s3://b/a.jpg", "s3://b/b.jpg", "s3://b/c.jpg"], priority="interactive")
    assert sorted(many.value.accepted) == [0, 1]
    assert producer.queue_depths() == {"interactive": 3, "bulk": 3}


def test_backpressure_waits_for_room(redis_url: str, client: redis.Redis) -> None:
    producer = _producer(redis_url, max_depth=1)
    producer.submit("s3://b/1.jpg")
    start = time.monotonic()
    with pytest.raises(QueueFullError):
        producer.submit("s3://b/2.jpg", wait_if_full_s=0.3)
    assert time.monotonic() - start >= 0.3
    threading.Timer(0.3, lambda: client.rpop("fakesake.interactive")).start()
    job_id = producer.submit("s3://b/2.jpg", wait_if_full_s=60)  # room comes after 0.3 s; 60 only guards a hang
    assert wire.decode_message(client.lindex("fakesake.interactive", 0))[1].job_id == job_id


def test_wait_is_woken_by_notifications(redis_url: str, producer: Producer) -> None:
    ids = producer.submit_many([f"s3://b/{i}.jpg" for i in range(50)], tenant="acme")
    seen: list[str] = []
    with FakeWorker(redis_url):
        # poll_s far beyond the timeout: only the pub/sub notifications can finish this before timing out,
        # and a wait that times out returns what it has (fewer results than ids).
        results = producer.wait(ids, "acme", timeout_s=30, poll_s=600, on_result=lambda r: seen.append(r.job_id))
    assert sorted(results) == sorted(ids) == sorted(seen)
    assert all(r.status is Status.OK and r.tenant == "acme" for r in results.values())


def test_wait_times_out_with_partial_results(redis_url: str, producer: Producer) -> None:
    done = producer.submit("s3://b/done.jpg", tenant="acme")
    with FakeWorker(redis_url):
        assert producer.wait([done], "acme", timeout_s=5)
    pending = producer.submit("s3://b/pending.jpg", tenant="acme")
    start = time.monotonic()
    results = producer.wait([done, pending], "acme", timeout_s=0.5, poll_s=0.1)
    assert time.monotonic() - start >= 0.5  # not before its timeout (late is fine: a busy machine)
    assert list(results) == [done]


def test_tenant_isolation(redis_url: str, producer: Producer) -> None:
    job_id = producer.submit("s3://b/secret.jpg", tenant="acme")
    with FakeWorker(redis_url):
        assert producer.wait([job_id], "acme", timeout_s=5)
    assert producer.get_result(job_id, "acme") is not None
    assert producer.get_result(job_id, "beta") is None  # knowing the id is not enough
    assert producer.wait([job_id], "beta", timeout_s=0.2, poll_s=0.05) == {}
    assert [r.job_id for r in producer.list_results("acme")] == [job_id]
    assert producer.list_results("beta") == []
    for tenant, bad_id in [("acme:x", job_id), ("acme", "x:" + job_id), ("acme", "../../etc")]:
        with pytest.raises(PermanentError):
            producer.get_result(bad_id, tenant)
