"""Worker metrics: names, labels, private registries, the scrape-time Redis collector (with an in-memory
fake client), and the HTTP endpoint on a free port."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest

from producers.contract import ALL_QUEUES, DEFAULT_MODEL, MAX_SERVED_DETECTORS, Keys, queue_name, side_lane
from tests.support.servers import free_port
from worker.service.metrics import Metrics, default, lane_of, start_metrics_server


def _value(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return m.registry.get_sample_value(name, labels or {})


class FakeRedis:
    """Just the live-advert EVAL, LLEN, TYPE and the size commands, through a pipeline, like redis-py."""

    def __init__(
        self,
        lists: dict[str, int],
        dlq: tuple[str, int] | None = None,
        broken: bool = False,
        adverts: list[str] | None = None,
    ) -> None:
        self.lists, self.dlq, self.broken, self.adverts = lists, dlq, broken, adverts or []
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> FakeRedis._Pipe:
        return FakeRedis._Pipe(self)

    def zcard(self, key: str) -> int:
        assert self.dlq is not None and key == Keys.DLQ
        return self.dlq[1]

    llen = hlen = zcard

    class _Pipe:
        def __init__(self, owner: FakeRedis) -> None:
            self.owner, self.calls = owner, []  # type: ignore[var-annotated]

        def llen(self, key: str) -> None:
            self.calls.append(self.owner.zcard(key) if key == Keys.DLQ else self.owner.lists.get(key, 0))

        def zcard(self, key: str) -> None:
            self.calls.append(self.owner.zcard(key))

        hlen = zcard

        def eval(self, script: str, numkeys: int, key: str, *args: Any) -> None:
            assert key == Keys.SERVING
            self.calls.append([m.encode() for m in self.owner.adverts])

        def type(self, key: str) -> None:
            self.calls.append(self.owner.dlq[0].encode() if self.owner.dlq else b"none")

        def execute(self) -> list[Any]:
            if self.owner.broken:
                raise ConnectionError("connection refused")
            self.owner.round_trips += 1
            return self.calls


def test_every_documented_metric_is_exported() -> None:
    m = Metrics()
    m.job_finished("ok", None, "interactive")
    m.job_finished("error", "not-found", "bulk")
    m.batch_size.observe(8)
    m.queue_wait_seconds.labels(lane="bulk").observe(0.2)
    for hist in (m.fetch_seconds, m.decode_seconds, m.inference_seconds):
        hist.observe(0.01)
    m.inflight_jobs.inc()
    m.model_load_seconds.labels(model="ffs-mj-5m@1.0").set(3.5)
    m.rate_limit_deferrals_total.labels(scope="tenant").inc()
    m.webhook_deliveries_total.labels(outcome="ok").inc()
    text = generate_latest(m.registry).decode()
    for name in (
        "fakesake_jobs_total",
        "fakesake_batch_size_bucket",
        "fakesake_queue_wait_seconds_bucket",
        "fakesake_fetch_seconds_bucket",
        "fakesake_decode_seconds_bucket",
        "fakesake_inference_seconds_bucket",
        "fakesake_inflight_jobs",
        "fakesake_model_load_seconds",
        "fakesake_rate_limit_deferrals_total",
        "fakesake_webhook_deliveries_total",
    ):
        assert f"\n{name}" in text, name
    assert _value(m, "fakesake_jobs_total", {"status": "ok", "code": "none", "lane": "interactive"}) == 1
    assert _value(m, "fakesake_jobs_total", {"status": "error", "code": "not-found", "lane": "bulk"}) == 1
    assert _value(m, "fakesake_model_load_seconds", {"model": "ffs-mj-5m@1.0"}) == 3.5
    assert _value(m, "fakesake_batch_size_count") == 1


def test_registries_are_private_so_instances_never_collide() -> None:
    a, b = Metrics(), Metrics()
    a.inflight_jobs.inc()
    assert _value(a, "fakesake_inflight_jobs") == 1
    assert _value(b, "fakesake_inflight_jobs") == 0
    assert default() is default()


@pytest.mark.parametrize(
    ("dlq", "expected_dlq"),
    [(("zset", 4), 4), (("list", 2), 2), (("hash", 7), 7), (None, 0)],
    ids=["zset", "list", "hash", "absent"],
)
def test_queue_depth_and_dlq_size_are_read_at_scrape_time(dlq: tuple[str, int] | None, expected_dlq: int) -> None:
    m = Metrics()
    fake = FakeRedis({ALL_QUEUES[0]: 3, ALL_QUEUES[1]: 12}, dlq)
    m.watch_redis(fake)
    assert _value(m, "fakesake_queue_depth", _default_lane("interactive")) == 3
    assert _value(m, "fakesake_queue_depth", _default_lane("bulk")) == 12
    assert _value(m, "fakesake_dlq_size") == expected_dlq
    assert _value(m, "fakesake_redis_up") == 1
    fake.lists[ALL_QUEUES[1]] = 40  # no caching: the next scrape sees the new length
    assert _value(m, "fakesake_queue_depth", _default_lane("bulk")) == 40


def _default_lane(priority: str) -> dict[str, str]:
    return {"lane": priority, "queue": queue_name(priority), "detectors": DEFAULT_MODEL}


def _depths(m: Metrics, family_name: str = "fakesake_queue_depth") -> dict[str, tuple[str, str, float]]:
    """queue -> (lane, detectors, depth) of one scrape."""
    (family,) = [f for f in m.registry.collect() if f.name == family_name]
    return {s.labels["queue"]: (s.labels["lane"], s.labels["detectors"], s.value) for s in family.samples}


def _side_depths(m: Metrics) -> dict[str, tuple[str, str, float]]:
    return _depths(m, "fakesake_side_lane_depth")


def test_the_lanes_of_every_advertised_detector_set_are_read_in_two_round_trips() -> None:
    ab, a = queue_name("bulk", ["b-det", "a-det"]), queue_name("interactive", ["a-det"])
    fake = FakeRedis({ab: 7, a: 2}, ("hash", 1), adverts=["host:1:ff a-det,b-det", "host:2:ee ffs-mj-5m"])
    m = Metrics()
    m.watch_redis(fake)
    fake.round_trips = 0
    depths = _depths(m)
    assert fake.round_trips == 2
    # a-det,b-det: 3 subsets x 2 priorities; ffs-mj-5m: the default lanes (read anyway, listed once)
    assert len(depths) == 8 and set(ALL_QUEUES) <= set(depths)
    assert depths[ab] == ("bulk", "a-det,b-det", 7)
    assert depths[a] == ("interactive", "a-det", 2)
    assert depths[queue_name("bulk")] == ("bulk", DEFAULT_MODEL, 0)
    # sum by (lane) adds the sets up; the default lane's old series is one of them
    assert sum(v for lane, _, v in depths.values() if lane == "bulk") == 7


def test_a_backlog_stays_visible_after_its_workers_go_until_it_drains() -> None:
    ab, a = queue_name("bulk", ["a-det", "b-det"]), queue_name("bulk", ["a-det"])
    fake = FakeRedis({ab: 5}, adverts=["w1 a-det,b-det"])
    m = Metrics()
    m.watch_redis(fake)
    assert a in _depths(m)
    fake.adverts = []  # the ensemble workers went away (scaled to zero, crashed)
    assert _depths(m)[a] == ("bulk", "a-det", 0)  # reported empty once ...
    depths = _depths(m)
    assert depths[ab] == ("bulk", "a-det,b-det", 5) and a not in depths  # ... then forgotten; the backlog stays
    fake.lists[ab] = 0
    assert ab in _depths(m)  # reported empty once ...
    assert set(_depths(m)) == set(ALL_QUEUES)  # ... then forgotten


def test_side_lanes_are_read_in_the_same_round_trips_and_kept_out_of_queue_depth() -> None:
    ab = queue_name("bulk", ["a-det", "b-det"])
    lists = {ALL_QUEUES[0]: 3, side_lane(ALL_QUEUES[0]): 9, side_lane(ALL_QUEUES[1]): 1, side_lane(ab): 4}
    fake = FakeRedis(lists, ("hash", 2), adverts=["w1 a-det,b-det"])
    m = Metrics()
    m.watch_redis(fake)
    fake.round_trips = 0
    side, depths = _side_depths(m), _depths(m)
    assert fake.round_trips == 4  # two scrapes, two round trips each
    assert set(side) == {side_lane(q) for q in depths}  # one side lane per lane reported, none other
    assert side[side_lane(ALL_QUEUES[0])] == ("interactive", DEFAULT_MODEL, 9)
    assert side[side_lane(ALL_QUEUES[1])] == ("bulk", DEFAULT_MODEL, 1)
    assert side[side_lane(ab)] == ("bulk", "a-det,b-det", 4)
    assert side[side_lane(queue_name("interactive", ["a-det"]))] == ("interactive", "a-det", 0)
    assert depths[ALL_QUEUES[0]] == ("interactive", DEFAULT_MODEL, 3)  # follow-ups are not new work
    assert depths[ab] == ("bulk", "a-det,b-det", 0)
    assert _value(m, "fakesake_dlq_size") == 2  # the DLQ's reply still comes last


def test_a_lane_is_remembered_while_its_side_lane_holds_follow_ups() -> None:
    ab = queue_name("interactive", ["a-det", "b-det"])
    fake = FakeRedis({side_lane(ab): 2}, adverts=["w1 a-det,b-det"])
    m = Metrics()
    m.watch_redis(fake)
    assert _side_depths(m)[side_lane(ab)] == ("interactive", "a-det,b-det", 2)
    fake.adverts = []  # the ensemble Deployment scaled to zero with webhooks still to deliver
    for _ in range(2):
        assert _side_depths(m)[side_lane(ab)] == ("interactive", "a-det,b-det", 2)
        assert _depths(m)[ab] == ("interactive", "a-det,b-det", 0)
    assert side_lane(queue_name("bulk", ["a-det"])) not in _side_depths(m)  # empty lanes of the set: forgotten
    fake.lists[side_lane(ab)] = 0
    assert _side_depths(m)[side_lane(ab)][2] == 0  # reported empty once ...
    assert set(_side_depths(m)) == {side_lane(q) for q in ALL_QUEUES}  # ... then forgotten


def test_a_stray_advert_naming_too_many_detectors_costs_no_lanes() -> None:
    names = ",".join(f"d{i}" for i in range(MAX_SERVED_DETECTORS + 1))
    m = Metrics()
    m.watch_redis(FakeRedis({}, adverts=[f"w {names}"]))
    assert set(_depths(m)) == set(ALL_QUEUES)


def test_redis_failure_reports_down_instead_of_failing_the_scrape() -> None:
    m = Metrics()
    m.watch_redis(FakeRedis({}, broken=True))
    text = generate_latest(m.registry).decode()
    assert "fakesake_redis_up 0.0" in text
    assert _depths(m) == {} and _side_depths(m) == {} and _value(m, "fakesake_dlq_size") is None


def test_watch_redis_registers_once() -> None:
    m = Metrics()
    first = m.watch_redis(FakeRedis({}))
    assert m.watch_redis(FakeRedis({})) is first


def test_lane_label_is_the_queue_suffix() -> None:
    assert [lane_of(q) for q in ALL_QUEUES] == ["interactive", "bulk"]


def test_metrics_server_serves_the_registry_and_port_zero_disables_it() -> None:
    assert start_metrics_server(0, Metrics()) is None
    m = Metrics()
    m.job_finished("ok", None, "bulk")
    port = free_port()
    server = start_metrics_server(port, m, host="127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'fakesake_jobs_total{code="none",lane="bulk",status="ok"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_health_and_settings_doc_do_not_import_torch() -> None:
    code = (
        "import sys, worker.service.metrics, worker.service.health, worker.service.settings_doc; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0


def test_telemetry_records_each_batch_with_its_queue_delay() -> None:
    from worker.service.telemetry import Telemetry

    m = Metrics()
    Telemetry(m, None).observe_batch(4, 0.25, 0.1)
    assert _value(m, "fakesake_batch_size_sum") == 4
    assert _value(m, "fakesake_batch_queue_delay_seconds_sum") == 0.25
    assert _value(m, "fakesake_inference_seconds_sum") == 0.1
