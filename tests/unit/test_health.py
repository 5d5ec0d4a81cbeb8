"""Liveness and readiness: the decision (fake clock), the heartbeat file, the HTTP endpoints on a free port,
and the ``fakesake health`` sub-command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port
from worker.service import health
from worker.service.health import HealthPolicy, HealthServer, HealthState, Heartbeat, check, judge
from worker.service.settings import MetricsSettings

MAX_AGE = 30.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _fail() -> None:
    raise ConnectionError("redis is down")


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def state(clock: Clock) -> HealthState:
    return HealthState(clock=clock)


def test_liveness_fresh_then_stale(state: HealthState, clock: Clock) -> None:
    assert state.evaluate("live", MAX_AGE) == (False, "no heartbeat yet")
    state.beat()
    clock.now += MAX_AGE - 1
    assert state.evaluate("live", MAX_AGE)[0]
    clock.now += 2
    ok, detail = state.evaluate("live", MAX_AGE)
    assert not ok and "old" in detail


def test_readiness_needs_model_and_recent_redis(state: HealthState, clock: Clock) -> None:
    state.beat()
    state.record_redis(True)
    ok, detail = state.evaluate("ready", MAX_AGE)
    assert not ok and detail == "model not loaded yet"
    assert state.evaluate("live", MAX_AGE)[0]  # alive while loading
    state.mark_model_loaded("ffs-mj-5m@1.0")
    ok, detail = state.evaluate("ready", MAX_AGE)
    assert ok and "ffs-mj-5m@1.0" in detail


def test_readiness_drops_when_redis_stops_answering(state: HealthState, clock: Clock) -> None:
    state.mark_model_loaded("m@1")
    beat = Heartbeat(state, ping=lambda: True)
    beat.beat_once()
    assert state.evaluate("ready", MAX_AGE)[0]
    beat = Heartbeat(state, ping=_fail)
    clock.now += MAX_AGE + 1
    beat.beat_once()  # fresh heartbeat, failed ping
    ok, detail = state.evaluate("ready", MAX_AGE)
    assert not ok and "redis is down" in detail
    assert state.evaluate("live", MAX_AGE)[0], "a Redis outage must not kill the pod"


def test_a_stalled_consumer_fails_liveness_and_readiness(state: HealthState, clock: Clock) -> None:
    state.consumer_stall_s = 120.0
    state.mark_model_loaded("m@1")
    state.beat()
    state.record_redis(True)
    assert state.evaluate("live", MAX_AGE)[0], "no tick yet (model loading, reconnecting at start): no verdict"
    state.consumer_tick()
    clock.now += 20
    state.beat()
    state.record_redis(True)
    assert state.evaluate("live", MAX_AGE)[0] and state.evaluate("ready", MAX_AGE)[0]
    clock.now += 101  # heartbeat thread and Redis fine, but the consumer loop last ran 121 s ago
    state.beat()
    state.record_redis(True)
    for kind in ("live", "ready"):
        ok, detail = state.evaluate(kind, MAX_AGE)  # type: ignore[arg-type]
        assert not ok and "consumer loop last ran 121.0s ago" in detail
    state.consumer_tick()
    assert state.evaluate("live", MAX_AGE)[0]


def test_heartbeat_calls_on_stall_once_when_the_consumer_stalls(state: HealthState, clock: Clock) -> None:
    state.consumer_stall_s = 120.0
    calls: list[str] = []
    beat = Heartbeat(state, on_stall=calls.append)
    beat.beat_once()  # no tick yet: nothing to judge
    state.consumer_tick()
    clock.now += 120
    beat.beat_once()
    assert calls == []
    clock.now += 1
    beat.beat_once()
    beat.beat_once()
    assert len(calls) == 1 and "consumer loop last ran 121.0s ago" in calls[0]


def test_on_stall_is_wired_only_when_exit_is_enabled(tmp_path: Path) -> None:
    calls: list[str] = []
    for enabled in (True, False):
        policy = HealthPolicy(heartbeat_interval_s=1, consumer_stall_s=120, exit_on_consumer_stall=enabled)
        service = health.start_health(policy, ping=None, heartbeat_file=tmp_path / "hb", on_stall=calls.append)
        try:
            service.state.consumer_tick_at = service.state.clock() - 1_000
            service.heartbeat.beat_once()
        finally:
            service.stop()
    assert len(calls) == 1


def test_consumer_check_is_off_without_a_threshold(state: HealthState, clock: Clock) -> None:
    state.consumer_tick()
    clock.now += 10_000
    state.beat()
    assert state.evaluate("live", MAX_AGE)[0]


def test_the_heartbeat_file_carries_the_consumer_verdict(clock: Clock) -> None:
    snapshot = {"last_heartbeat": clock.now, "consumer_tick_at": clock.now - 200, "consumer_stall_s": 120}
    ok, detail = judge(snapshot, "live", MAX_AGE, clock.now)
    assert not ok and "consumer" in detail


def test_never_answered_redis_is_not_ready(state: HealthState) -> None:
    state.mark_model_loaded("m@1")
    Heartbeat(state, ping=_fail).beat_once()
    ok, detail = state.evaluate("ready", MAX_AGE)
    assert not ok and "has not answered" in detail


def test_heartbeat_file_round_trip(tmp_path: Path, state: HealthState, clock: Clock) -> None:
    path = tmp_path / "hb"
    assert check("live", file=path, now=clock.now) == (False, f"no heartbeat file at {path}")
    Heartbeat(state, ping=lambda: True, path=path).beat_once()
    assert json.loads(path.read_text())["pid"] > 0
    assert check("live", file=path, max_age_s=MAX_AGE, now=clock.now)[0]
    assert not check("ready", file=path, max_age_s=MAX_AGE, now=clock.now)[0]
    state.mark_model_loaded("m@1")
    Heartbeat(state, ping=lambda: True, path=path).beat_once()
    assert check("ready", file=path, max_age_s=MAX_AGE, now=clock.now)[0]
    assert not check("live", file=path, max_age_s=MAX_AGE, now=clock.now + MAX_AGE + 1)[0]


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"], ids=["empty", "garbage", "not-object"])
def test_unreadable_heartbeat_file_is_unhealthy(tmp_path: Path, content: str) -> None:
    path = tmp_path / "hb"
    path.write_text(content)
    ok, detail = check("live", file=path)
    assert not ok and "unreadable" in detail


def test_unwritable_heartbeat_file_does_not_stop_the_heartbeat(tmp_path: Path, state: HealthState) -> None:
    Heartbeat(state, path=tmp_path / "missing-dir" / "hb").beat_once()
    assert state.evaluate("live", MAX_AGE)[0]


def test_heartbeat_thread_beats_until_stopped(tmp_path: Path) -> None:
    pinged = threading.Event()
    state = HealthState()
    beat = Heartbeat(state, ping=pinged.set, path=tmp_path / "hb", interval_s=0.05)
    beat.start()
    try:
        assert pinged.wait(5)
    finally:
        beat.stop()
    assert not beat.is_alive()
    assert (tmp_path / "hb").exists()


@pytest.fixture()
def served(state: HealthState) -> Iterator[tuple[HealthState, str]]:
    server = HealthServer(state, free_port(), host="127.0.0.1", max_age_s=MAX_AGE).start()
    try:
        yield state, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_http_endpoints_before_and_after_model_load(served: tuple[HealthState, str]) -> None:
    state, base = served
    assert check("live", url=f"{base}/livez") == (False, "no heartbeat yet")
    state.beat()
    state.record_redis(True)
    assert check("live", url=f"{base}/livez")[0]
    assert check("live", url=f"{base}/healthz")[0]
    ok, detail = check("ready", url=f"{base}/readyz")
    assert not ok and detail == "model not loaded yet"
    state.mark_model_loaded("m@1")
    assert check("ready", url=f"{base}/readyz")[0]
    assert not check("live", url=f"{base}/nope")[0]


def test_check_reports_an_unreachable_endpoint() -> None:
    ok, detail = check("live", url=f"http://127.0.0.1:{free_port()}/livez", timeout_s=2)
    assert not ok and "cannot reach" in detail


def test_check_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        check("live")
    with pytest.raises(ValueError):
        check("live", url="http://x", file=tmp_path)


def test_judge_is_shared_by_http_and_file() -> None:
    snap = {"last_heartbeat": 100.0, "model_loaded": True, "model": "m@1", "redis_ok_at": 100.0}
    assert judge(snap, "ready", 10, now=105)[0]
    assert not judge(snap, "ready", 10, now=120)[0]


def _health_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakesake")
    health.add_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize(
    ("argv", "kind"), [(["health"], "live"), (["health", "--live"], "live"), (["health", "--ready"], "ready")]
)
def test_subcommand_parses(argv: list[str], kind: str) -> None:
    args = _health_parser().parse_args(argv)
    assert args.kind == kind and args.run is health.run_health


def test_subcommand_exit_codes(
    served: tuple[HealthState, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, base = served
    port = base.rsplit(":", 1)[1]
    monkeypatch.setenv("FAKESAKE_METRICS__HEALTH_PORT", port)  # default URL = 127.0.0.1:<health_port>
    parser = _health_parser()
    state.beat()
    state.record_redis(True)
    assert health.run_health(parser.parse_args(["health", "--live"])) == 0
    assert health.run_health(parser.parse_args(["health", "--ready"])) == 1
    assert "model not loaded yet" in capsys.readouterr().out
    state.mark_model_loaded("m@1")
    assert health.run_health(parser.parse_args(["health", "--ready"])) == 0


def test_subcommand_uses_the_heartbeat_file_when_http_is_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hb"
    monkeypatch.setenv("FAKESAKE_METRICS__HEALTH_PORT", "0")
    monkeypatch.setenv("FAKESAKE_METRICS__HEARTBEAT_FILE", str(path))
    parser = _health_parser()
    assert health.run_health(parser.parse_args(["health"])) == 1
    Heartbeat(HealthState(), path=path).beat_once()
    assert health.run_health(parser.parse_args(["health"])) == 0
    assert health.run_health(parser.parse_args(["health", "--file", str(tmp_path / "other")])) == 1


def test_start_health_runs_heartbeat_and_server(tmp_path: Path) -> None:
    policy = HealthPolicy(heartbeat_interval_s=0.05, consumer_stall_s=120.0)
    state = HealthState()
    port = free_port()
    server = HealthServer(state, port, "127.0.0.1", policy.heartbeat_max_age_s)
    service = health.start_health(policy, ping=lambda: True, state=state, heartbeat_file=tmp_path / "hb", server=server)
    try:
        assert service.state.consumer_stall_s == 120.0
        assert check("live", url=f"http://127.0.0.1:{port}/livez")[0]
        assert not check("ready", url=f"http://127.0.0.1:{port}/readyz")[0]
        service.state.mark_model_loaded("m@1")
        deadline = time.monotonic() + 5  # the heartbeat thread's first ping may still be in flight
        while not check("ready", url=f"http://127.0.0.1:{port}/readyz")[0]:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.02)
    finally:
        service.stop()


def test_a_server_that_never_served_stops_and_frees_its_port() -> None:
    port = free_port()
    HealthServer(HealthState(), port, "127.0.0.1").stop()  # would wait forever in shutdown() before
    HealthServer(HealthState(), port, "127.0.0.1").stop()  # the port is free again


def test_subcommand_checks_the_slot_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "hb"
    monkeypatch.setenv("FAKESAKE_METRICS__HEALTH_PORT", "0")
    monkeypatch.setenv("FAKESAKE_METRICS__HEARTBEAT_FILE", str(base))
    Heartbeat(HealthState(), path=tmp_path / "hb-2").beat_once()  # only slot 2's worker runs
    parser = _health_parser()
    assert health.run_health(parser.parse_args(["health"])) == 1
    assert health.run_health(parser.parse_args(["health", "--slot", "2"])) == 0


def test_max_age_must_exceed_interval() -> None:
    with pytest.raises(ValueError, match="heartbeat_max_age_s"):
        MetricsSettings(heartbeat_interval_s=10, heartbeat_max_age_s=5)


# Logs go through a MemoryHandler that only an explicit flush empties; atexit and finally must not run.
_EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, logging, logging.handlers, sys
    from worker.service.health import exit_process
    target = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(logging.handlers.MemoryHandler(100, flushLevel=100, target=target))
    atexit.register(print, "atexit ran")
    try:
        exit_process("the consumer loop last ran 200s ago")
    finally:
        print("unwound")
    """
)


def test_exit_process_flushes_the_logs_and_ends_the_process_at_once_with_exit_70() -> None:
    proc = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == health.EXIT_CONSUMER_STALLED == 70
    assert "exiting: the consumer loop last ran 200s ago" in proc.stderr
    assert proc.stdout == ""  # os._exit: no finally, no atexit (a wedged Celery may never unwind)


def test_the_heartbeat_file_shows_the_model_loaded_at_once_not_an_interval_later(tmp_path: Path) -> None:
    # A supervisor (and `fakesake health --file`) reads readiness from the file; with a 60 s interval it
    # would otherwise lag /readyz by up to a minute.
    from worker.service.slots import SlotPlan
    from worker.service.telemetry import Telemetry

    hb = tmp_path / "hb.json"
    telemetry = Telemetry.start(SlotPlan(0, 0, str(hb)), "127.0.0.1", HealthPolicy(heartbeat_interval_s=60))
    try:
        deadline = time.monotonic() + 10
        while not hb.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health.read_heartbeat(hb)["model_loaded"] is False
        telemetry.model_loaded("m@1", 0.5)
        while not health.read_heartbeat(hb)["model_loaded"] and time.monotonic() < deadline:
            time.sleep(0.02)
        snapshot = health.read_heartbeat(hb)
        assert snapshot["model_loaded"] is True and snapshot["model"] == "m@1"
    finally:
        telemetry.stop()
