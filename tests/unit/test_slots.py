"""Worker slots: several workers on one host take distinct ports and heartbeat files, or refuse to start
with one line naming the setting; real loopback sockets and files, no worker process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from producers.errors import ConfigError, ErrorCode, TransientError
from tests.support.servers import free_port
from worker.service.health import HealthPolicy, check
from worker.service.runtime import start_failure
from worker.service.settings import MetricsSettings, WorkerSettings
from worker.service.slots import HeartbeatLock, Slot, SlotBusy, SlotPlan
from worker.service.telemetry import Telemetry

POLICY = HealthPolicy(heartbeat_interval_s=0.05, heartbeat_max_age_s=30.0)


def test_slot_k_offsets_both_ports_and_names_its_heartbeat_file() -> None:
    plan = SlotPlan(9808, 9809, "/tmp/hb", slots=3)
    assert plan.all() == [
        Slot(0, 9808, 9809, Path("/tmp/hb")),
        Slot(1, 9818, 9819, Path("/tmp/hb-1")),
        Slot(2, 9828, 9829, Path("/tmp/hb-2")),
    ]
    assert SlotPlan(0, 9809, "", slots=2).slot(1) == Slot(1, 0, 9819, None)  # off stays off


def test_a_heartbeat_file_is_locked_by_one_holder(tmp_path: Path) -> None:
    first = HeartbeatLock.take(tmp_path / "hb")
    with pytest.raises(SlotBusy, match="in use by another worker"):
        HeartbeatLock.take(tmp_path / "hb")
    first.release()
    HeartbeatLock.take(tmp_path / "hb").release()


def _base_port(slots: int) -> int:
    """A metrics base port whose slot series (and health series, +1) are free now."""
    for _ in range(50):
        base = free_port()
        if base + 10 * slots + 1 > 65535:
            continue
        try:
            for k in range(slots):
                for port in (base + 10 * k, base + 10 * k + 1):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port series")


@pytest.fixture()
def started() -> Iterator[list[Telemetry]]:
    running: list[Telemetry] = []
    yield running
    for t in running:
        t.stop()


def test_workers_on_one_host_take_the_next_free_slot(tmp_path: Path, started: list[Telemetry]) -> None:
    base = _base_port(3)
    plan = SlotPlan(base, base + 1, str(tmp_path / "hb"), slots=3)
    other_program = socket.socket()  # something else holds slot 0's health port throughout
    other_program.bind(("127.0.0.1", base + 1))
    other_program.listen()
    try:
        started.append(Telemetry.start(plan, "127.0.0.1", POLICY))
        started.append(Telemetry.start(plan, "127.0.0.1", POLICY))
        slots = [t.health.state.snapshot() for t in started if t.health is not None]
        assert [(s["slot"], s["metrics_port"], s["health_port"]) for s in slots] == [
            (1, base + 10, base + 11),
            (2, base + 20, base + 21),
        ]
        assert check("live", url=f"http://127.0.0.1:{base + 21}/livez")[0]
        assert check("live", file=tmp_path / "hb-1")[0] and check("live", file=tmp_path / "hb-2")[0]
        assert not (tmp_path / "hb").exists()
        with pytest.raises(ConfigError, match=r"all 3 worker slots are taken \(slot 0: health port \d+ is in use"):
            Telemetry.start(plan, "127.0.0.1", POLICY)
        started.pop(0).stop()  # slot 1 is free again: ports and heartbeat lock released
        started.append(Telemetry.start(plan, "127.0.0.1", POLICY))
        assert started[-1].health is not None and started[-1].health.state.slot == 1
    finally:
        other_program.close()


def test_one_slot_and_its_port_taken_names_the_setting(tmp_path: Path) -> None:
    base = _base_port(1)
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", base))
        other_program.listen()
        with pytest.raises(ConfigError) as err:
            Telemetry.start(SlotPlan(base, base + 1, str(tmp_path / "hb"), slots=1), "127.0.0.1", POLICY)
    assert start_failure(err.value) == (
        f"config: metrics port {base} is in use; set FAKESAKE_METRICS__PORT to a free one "
        "(or FAKESAKE_METRICS__SLOTS above 1 to let the worker try the next slots)"
    )
    # Nothing of the failed start is left holding the health port or the heartbeat file.
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
    HeartbeatLock.take(tmp_path / "hb").release()


def test_slot_ports_must_be_valid_and_distinct() -> None:
    assert MetricsSettings().slots == 8
    with pytest.raises(ValidationError, match=r"meet within metrics\.slots = 8"):
        MetricsSettings(port=9000, health_port=9030)
    MetricsSettings(port=9000, health_port=9030, slots=3)
    with pytest.raises(ValidationError, match="above 65535"):
        MetricsSettings(port=65530)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConfigError("metrics port 9808 is in use"), "config: metrics port 9808 is in use"),
        (TransientError(ErrorCode.UNAVAILABLE, "cannot reach Redis"), "unavailable: cannot reach Redis"),
        (RuntimeError("boom\nsecond line"), "internal: worker start failed: RuntimeError: boom second line"),
    ],
)
def test_a_start_failure_is_one_line(error: BaseException, line: str) -> None:
    assert start_failure(error) == line


def test_bad_settings_are_named_by_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESAKE_METRICS__PORT", "many")
    with pytest.raises(ValidationError) as err:
        WorkerSettings()
    assert start_failure(err.value).startswith("config: invalid settings: FAKESAKE_METRICS__PORT: Input should be")
