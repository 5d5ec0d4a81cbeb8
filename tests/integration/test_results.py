"""RedisResultStore and S3ResultSink against real redis-server and moto's S3 server."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from producers.contract import ErrorInfo, JobResult, Keys, Status
from producers.errors import ErrorCode, TransientError
from tests.support.servers import S3Server, free_port
from worker.stores.results import RedisResultStore, S3ResultSink, SinkingResultStore


def _result(
    job_id: str | None = None,
    tenant: str = "acme",
    status: Status = Status.OK,
    finished_at: datetime | None = None,
) -> JobResult:
    extra = (
        {"score": 0.8, "label": "ai", "band": "ai", "model": "ffs-mj-5m@1.0"}
        if status is Status.OK
        else {"error": ErrorInfo(code="not-found", message="gone")}
    )
    return JobResult(
        job_id=job_id or uuid.uuid4().hex,
        tenant=tenant,
        source="s3://b/a.jpg",
        status=status,
        finished_at=finished_at or datetime.now(UTC),
        **extra,
    )


def test_first_final_result_wins(client: redis.Redis) -> None:
    store = RedisResultStore(client, ttl_s=600, index_max=100)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(Keys.notify("acme"))
    first = _result()
    assert store.put_final(first) == first
    second = _result(first.job_id, status=Status.ERROR)
    assert store.put_final(second) == first  # a redelivery cannot replace the stored result
    assert store.get("acme", first.job_id) == first
    assert 590 < client.ttl(Keys.result("acme", first.job_id)) <= 600
    assert client.zrange(Keys.tenant_index("acme"), 0, -1) == [first.job_id.encode()]
    # A marker published after both writes returned arrives after anything they announced (one server,
    # one subscriber connection), so reading up to it sees every announcement, however slow the machine.
    client.publish(Keys.notify("acme"), b"end-of-test")
    messages = []
    while True:  # None also stands for the (ignored) subscribe confirmation; the per-test timeout guards a hang
        if (m := pubsub.get_message(timeout=1.0)) is None:
            continue
        if m["data"] == b"end-of-test":
            break
        messages.append(m["data"])
    assert messages == [first.job_id.encode()]  # announced once, for the write that happened
    pubsub.close()


def test_concurrent_writers_agree(client: redis.Redis, redis_url: str) -> None:
    job_id = uuid.uuid4().hex
    candidates = [_result(job_id, status=Status.OK if i % 2 else Status.ERROR) for i in range(8)]
    returned: list[JobResult] = []
    barrier = threading.Barrier(len(candidates))

    def put(result: JobResult) -> None:
        store = RedisResultStore(redis.Redis.from_url(redis_url), ttl_s=600, index_max=10)
        barrier.wait()
        returned.append(store.put_final(result))

    threads = [threading.Thread(target=put, args=(c,)) for c in candidates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = RedisResultStore(client, 600, 10).get("acme", job_id)
    assert stored in candidates
    assert returned == [stored] * len(candidates)


def test_tenant_index_is_trimmed_newest_first(client: redis.Redis) -> None:
    store = RedisResultStore(client, ttl_s=600, index_max=3)
    base = datetime.now(UTC)
    results = [_result(finished_at=base + timedelta(seconds=i)) for i in range(5)]
    for r in reversed(results):  # written out of order: the index orders by finished_at
        store.put_final(r)
    store.put_final(_result(tenant="beta"))
    newest = client.zrevrange(Keys.tenant_index("acme"), 0, -1)
    assert newest == [r.job_id.encode() for r in reversed(results[2:])]
    assert client.zcard(Keys.tenant_index("beta")) == 1
    assert store.get("beta", results[0].job_id) is None  # namespaced by tenant


def test_index_drops_entries_older_than_ttl(client: redis.Redis) -> None:
    store = RedisResultStore(client, ttl_s=60, index_max=100)
    old = _result(finished_at=datetime.now(UTC) - timedelta(seconds=120))
    store.put_final(old)
    store.put_final(_result())
    assert old.job_id.encode() not in client.zrange(Keys.tenant_index("acme"), 0, -1)


def test_unreachable_redis_is_transient() -> None:
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    with pytest.raises(TransientError) as info:
        RedisResultStore(dead, ttl_s=60, index_max=1).put_final(_result())
    assert info.value.code is ErrorCode.UNAVAILABLE


def test_s3_sink_writes_json_per_job(s3_srv: S3Server, client: redis.Redis) -> None:
    s3 = s3_srv.client()
    bucket = f"results-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    sink = S3ResultSink(s3, f"s3://{bucket}/verdicts/")
    store = SinkingResultStore(RedisResultStore(client, ttl_s=600, index_max=10), sink)
    result = _result()
    assert store.put_final(result) == result
    assert store.put_final(_result(result.job_id, status=Status.ERROR)) == result
    body = s3.get_object(Bucket=bucket, Key=f"verdicts/acme/{result.job_id}.json")["Body"].read()
    assert JobResult.model_validate(json.loads(body)) == result  # the sink holds the stored one
    assert (sink.written, sink.failures) == (2, 0)


def test_s3_sink_failure_never_loses_the_redis_result(s3_srv: S3Server, client: redis.Redis) -> None:
    sink = S3ResultSink(s3_srv.client(), "s3://no-such-bucket-here/x")
    store = SinkingResultStore(RedisResultStore(client, ttl_s=600, index_max=10), sink)
    result = _result()
    assert store.put_final(result) == result
    assert store.get("acme", result.job_id) == result
    assert (sink.written, sink.failures) == (0, 1)


def test_put_final_can_close_the_jobs_delivery_count(redis_url: str) -> None:
    import redis as redis_lib

    from producers.contract import JobResult, Keys, Status
    from worker.stores.counters import RedisJobCounters
    from worker.stores.results import RedisResultStore

    client = redis_lib.Redis.from_url(redis_url)
    counters = RedisJobCounters(client)
    for closes, job_id in ((False, "job-keeps-count"), (True, "job-closes-count")):
        counters.begin_delivery(job_id)
        result = JobResult(job_id=job_id, tenant="acme", source="s3://b/k.jpg", status=Status.OK, score=0.5)
        RedisResultStore(client, ttl_s=60, index_max=10, closes_deliveries=closes).put_final(result)
        assert bool(client.exists(Keys.deliveries(job_id))) is not closes
