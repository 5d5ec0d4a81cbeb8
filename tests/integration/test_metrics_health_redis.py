"""Metrics and health against a real redis-server: lane and side-lane depths and DLQ size at scrape time, and
readiness following Redis going away and coming back."""

from __future__ import annotations

import redis

from producers import serving
from producers.contract import ALL_QUEUES, DEFAULT_MODEL, Keys, queue_name, side_lane
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


def _side_depths(m: Metrics) -> dict[str, tuple[str, str, float]]:
    """side lane -> (lane, detectors, depth) of one scrape."""
    (family,) = [f for f in m.registry.collect() if f.name == "fakesake_side_lane_depth"]
    return {s.labels["queue"]: (s.labels["lane"], s.labels["detectors"], s.value) for s in family.samples}


def test_side_lane_depths_come_from_redis_apart_from_queue_depth(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    m = Metrics()
    m.watch_redis(client)
    bulk = {"lane": "bulk", "queue": "fakesake.bulk.side", "detectors": DEFAULT_MODEL}
    assert m.registry.get_sample_value("fakesake_side_lane_depth", bulk) == 0
    client.lpush(side_lane(ALL_QUEUES[1]), *[f"webhook{i}" for i in range(4)])
    client.lpush(side_lane(ALL_QUEUES[0]), "retry")
    client.lpush(ALL_QUEUES[1], "job")
    assert m.registry.get_sample_value("fakesake_side_lane_depth", bulk) == 4
    interactive = {"lane": "interactive", "queue": "fakesake.interactive.side", "detectors": DEFAULT_MODEL}
    assert m.registry.get_sample_value("fakesake_side_lane_depth", interactive) == 1
    # follow-ups are not new work: the lane's own depth counts its jobs only
    main = {"lane": "bulk", "queue": ALL_QUEUES[1], "detectors": DEFAULT_MODEL}
    assert m.registry.get_sample_value("fakesake_queue_depth", main) == 1
    assert set(_side_depths(m)) == {side_lane(q) for q in ALL_QUEUES}
    client.close()


def test_an_unadvertised_lane_stays_reported_while_its_side_lane_holds_follow_ups(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ensemble = queue_name("interactive", ["kyc-ft", DEFAULT_MODEL])
    m = Metrics()
    m.watch_redis(client)
    advert = serving.Advert("metrics-test-worker", frozenset({DEFAULT_MODEL, "kyc-ft"}))
    serving.advertise(client, advert, forget_s=60)
    try:
        client.lpush(side_lane(ensemble), "webhook1", "webhook2")  # its jobs ran; their webhooks wait
        assert _side_depths(m)[side_lane(ensemble)] == ("interactive", f"{DEFAULT_MODEL},kyc-ft", 2)
    finally:
        serving.withdraw(client, advert)  # the ensemble Deployment scaled to zero
    for _ in range(2):  # not forgotten while the follow-ups wait, however many scrapes
        assert _side_depths(m)[side_lane(ensemble)] == ("interactive", f"{DEFAULT_MODEL},kyc-ft", 2)
        labels = {"lane": "interactive", "queue": ensemble, "detectors": f"{DEFAULT_MODEL},kyc-ft"}
        assert m.registry.get_sample_value("fakesake_queue_depth", labels) == 0
    client.delete(side_lane(ensemble))
    assert _side_depths(m)[side_lane(ensemble)][2] == 0  # reported empty once ...
    assert set(_side_depths(m)) == {side_lane(q) for q in ALL_QUEUES}  # ... then forgotten
    client.close()


def test_redis_down_omits_both_depth_families_and_reports_redis_down() -> None:
    with redis_server(appendonly=True) as server:
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        client.lpush(side_lane(ALL_QUEUES[0]), "retry")
        m = Metrics()
        m.watch_redis(client)
        assert _side_depths(m)[side_lane(ALL_QUEUES[0])] == ("interactive", DEFAULT_MODEL, 1)
        server.stop()
        families = {f.name: f.samples for f in m.registry.collect()}
        assert families["fakesake_queue_depth"] == [] and families["fakesake_side_lane_depth"] == []
        assert families["fakesake_dlq_size"] == []
        assert m.registry.get_sample_value("fakesake_redis_up") == 0
        server.restart()
        assert _side_depths(m)[side_lane(ALL_QUEUES[0])] == ("interactive", DEFAULT_MODEL, 1)  # the next scrape
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
