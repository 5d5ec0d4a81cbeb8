"""Every Redis client fakesake builds from a ``sentinel://`` URL follows a failover by itself (real
redis-server and redis-sentinel processes; the workers' side is tests/faults/test_sentinel.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from producers.client import Producer
from producers.connections import redis_from_settings
from producers.contract import ErrorInfo, JobResult, Keys, Status
from producers.errors import TransientError
from producers.ratelimit import RedisRateLimiter
from producers.settings import ProducerSettings, RedisSettings
from tests.support.sentinel import SentinelGroup, sentinel_group
from worker.stores.results import RedisResultStore

TENANT = "acme"


@pytest.fixture()
def group() -> Iterator[SentinelGroup]:
    with sentinel_group(replicas=1, sentinels=3, down_after_ms=1000, failover_timeout_ms=6000) as g:
        yield g


def test_producer_store_limiter_and_waiter_follow_the_new_primary(group: SentinelGroup) -> None:
    settings = RedisSettings(url=group.url, master_name=group.master_name, socket_timeout_s=2)
    producer = Producer(ProducerSettings(redis=settings, tenant=TENANT))
    client = redis_from_settings(settings)
    try:
        ids = producer.submit_many([f"https://example.com/{i}.jpg" for i in range(3)])
        # WAIT: the replica has them before the crash (asynchronous replication: docs/RELIABILITY.md)
        assert client.wait(1, 5000) == 1
        old = group.primary_port()
        waited: dict[str, JobResult] = {}
        wait_errors: list[TransientError] = []

        def wait_across_the_failover() -> None:
            try:
                waited.update(producer.wait(ids[:1], timeout_s=60, poll_s=0.5))
            except TransientError as exc:  # the contract during the switch: a result, or a retryable error
                wait_errors.append(exc)

        waiter = threading.Thread(target=wait_across_the_failover)
        waiter.start()
        group.server(old).stop(kill=True)

        store = RedisResultStore(client, ttl_s=60, index_max=100)
        result = JobResult(
            job_id=ids[0], tenant=TENANT, source="https://example.com/0.jpg", status=Status.ERROR,
            finished_at=datetime.now(UTC), error=ErrorInfo(code="not-found", message="gone"),
        )  # fmt: skip
        refused, deadline = 0, time.monotonic() + 60
        while True:  # a write during the switch succeeds or fails retryably, nothing else
            try:
                store.put_final(result)
                break
            except TransientError:
                refused += 1
                assert time.monotonic() < deadline, "the result store never reached the new primary"
                time.sleep(0.2)
        waiter.join(60)
        assert waited.get(ids[0]) == result or wait_errors
        # a wait after the switch (the caller's retry) subscribes on the new primary and gets the result
        assert producer.wait(ids[:1], timeout_s=30, poll_s=0.5) == {ids[0]: result}

        new = group.primary_port()
        assert new is not None and new != old
        assert all(client.hexists(Keys.LEDGER, j) for j in ids[1:])  # accepted before the crash, still there
        assert not client.hexists(Keys.LEDGER, ids[0])  # the result script cleaned its ledger entry
        assert RedisRateLimiter(client).acquire("tenant", TENANT, rate_per_s=10, burst=2) == 0.0  # Lua script
        assert producer.get_result(ids[0], TENANT) == result
        more = producer.submit("https://example.com/after.jpg")
        assert client.hexists(Keys.LEDGER, more)
    finally:
        producer.close()
        client.close()
