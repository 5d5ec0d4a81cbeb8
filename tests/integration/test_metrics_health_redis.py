"""Metrics and health against a real redis-server: lane depths and DLQ size at scrape time, and
readiness following Redis going away and coming back."""

from __future__ import annotations

import redis

from producers.contract import ALL_QUEUES, Keys
from tests.support.servers import redis_server
from worker.service.health import HealthState, Heartbeat
from worker.service.metrics import Metrics


def test_queue_depth_and_dlq_size_come_from_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    m = Metrics()
    m.watch_redis(client)
    assert m.registry.get_sample_value("fakesake_queue_depth", {"lane": "bulk"}) == 0
    assert m.registry.get_sample_value("fakesake_dlq_size") == 0
    client.lpush(ALL_QUEUES[1], *[f"job{i}" for i in range(5)])
    client.lpush(ALL_QUEUES[0], "job")
    client.hset(Keys.DLQ, mapping={"a": "{}", "b": "{}"})  # producers/dlq.py keeps records in a hash
    assert m.registry.get_sample_value("fakesake_queue_depth", {"lane": "bulk"}) == 5
    assert m.registry.get_sample_value("fakesake_queue_depth", {"lane": "interactive"}) == 1
    assert m.registry.get_sample_value("fakesake_dlq_size") == 2
    assert m.registry.get_sample_value("fakesake_redis_up") == 1
    client.close()


def test_readiness_follows_redis() -> None:
    with redis_server() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        m = Metrics()
        m.watch_redis(client)
        state = HealthState()
        state.mark_model_loaded("m@1")
        beat = Heartbeat(state, ping=client.ping)
        beat.beat_once()
        assert state.evaluate("ready", max_age_s=0.5)[0]
        server.stop()
        beat.beat_once()
        assert m.registry.get_sample_value("fakesake_redis_up") == 0
        # Redis down: no fresh answer -> not ready once the last answer ages out; still alive.
        state.redis_ok_at = state.clock() - 1
        ok, detail = state.evaluate("ready", max_age_s=0.5)
        assert not ok and detail.startswith("redis last answered")
        assert state.evaluate("live", max_age_s=0.5)[0]
        server.restart()
        beat.beat_once()
        assert state.evaluate("ready", max_age_s=0.5)[0]
        assert m.registry.get_sample_value("fakesake_redis_up") == 1
        client.close()
