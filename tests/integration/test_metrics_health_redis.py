"""Metrics and health against a real redis-server: lane depths and DLQ size at scrape time, and
readiness following Redis going away and coming back."""

from __future__ import annotations

import redis

from producers import serving
from producers.contract import ALL_QUEUES, DEFAULT_MODEL, Keys, queue_name
from tests.support.servers import redis_server
from worker.service.health import HealthState, Heartbeat
from worker.service.metrics import Metrics


def test_queue_depth_and_dlq_size_come_from_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    m = Metrics()
    m.watch_redis(client)
    bulk = {"lane": "bulk", "queue": ALL_QUEUES[1], "detectors": DEFAULT_MODEL}
    assert m.registry.get_sample_value("fakesake_queue_depth", bulk) == 0
    assert m.registry.get_sample_value("fakesake_dlq_size") == 0
    client.lpush(ALL_QUEUES[1], *[f"job{i}" for i in range(5)])
    client.lpush(ALL_QUEUES[0], "job")
    client.hset(Keys.DLQ, mapping={"a": "{}", "b": "{}"})  # producers/dlq.py keeps records in a hash
    assert m.registry.get_sample_value("fakesake_queue_depth", bulk) == 5
    interactive = {"lane": "interactive", "queue": ALL_QUEUES[0], "detectors": DEFAULT_MODEL}
    assert m.registry.get_sample_value("fakesake_queue_depth", interactive) == 1
    assert m.registry.get_sample_value("fakesake_dlq_size") == 2
    assert m.registry.get_sample_value("fakesake_redis_up") == 1
    client.close()


def test_the_lanes_of_advertised_detector_sets_are_reported(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ensemble = queue_name("bulk", ["kyc-ft", DEFAULT_MODEL])
    client.lpush(ensemble, "job1", "job2", "job3")
    m = Metrics()
    m.watch_redis(client)
    labels = {"lane": "bulk", "queue": ensemble, "detectors": f"{DEFAULT_MODEL},kyc-ft"}
    assert m.registry.get_sample_value("fakesake_queue_depth", labels) is None  # nobody serves it (yet)
    advert = serving.Advert("metrics-test-worker", frozenset({DEFAULT_MODEL, "kyc-ft"}))
    serving.advertise(client, advert, forget_s=60)
    try:
        assert m.registry.get_sample_value("fakesake_queue_depth", labels) == 3
        only_kyc = {"lane": "interactive", "queue": queue_name("interactive", ["kyc-ft"]), "detectors": "kyc-ft"}
        assert m.registry.get_sample_value("fakesake_queue_depth", only_kyc) == 0
    finally:
        serving.withdraw(client, advert)
    assert m.registry.get_sample_value("fakesake_queue_depth", labels) == 3  # the backlog outlives the advert
    client.delete(ensemble)
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
