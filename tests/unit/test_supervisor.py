"""The ``--processes N`` supervisor with stand-in children (tiny Python processes, no Celery, no model)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from worker.service import supervisor
from worker.service.slots import SlotPlan
from worker.service.supervisor import (
    FleetCollector,
    HeartbeatWatch,
    Supervisor,
    child_argv,
    metrics_directory,
    take_processes,
)

# A stand-in child: writes its pid to $OUT/<index>.pid (index from --hostname=fakesake<k>@..), exits 0 on
# SIGTERM, and exits with $EXIT_CODE at once when that is set.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    if os.environ.get("EXIT_CODE"):
        sys.exit(int(os.environ["EXIT_CODE"]))
    index = next(a for a in sys.argv if a.startswith("--hostname=")).split("fakesake")[1].split("@")[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(os.path.join(os.environ["OUT"], index + ".pid"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(os.path.join(os.environ["OUT"], index + ".cpus"), "a") as f:  # the model.cpus it was handed
        f.write(os.environ.get("FAKESAKE_MODEL__CPUS", "-") + "\\n")
    beat = os.environ.get("HEARTBEAT")  # as a worker beats: slot k's file, replaced atomically (here slot = index)
    path = None if not beat else beat if index == "0" else f"{beat}-{index}"
    while True:
        wedged = os.path.exists(os.path.join(os.environ["OUT"], "wedge-" + index))
        if path and not wedged:
            now = time.time()
            snapshot = {"pid": os.getpid(), "last_heartbeat": now, "model_loaded": True, "redis_ok_at": now}
            with open(path + ".tmp", "w") as f:
                json.dump(snapshot, f)
            os.replace(path + ".tmp", path)
        time.sleep(0.05)
    """
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (1, [])),
        (["--processes", "3", "-l", "INFO"], (3, ["-l", "INFO"])),
        (["--concurrency=4", "--processes=2"], (2, ["--concurrency=4"])),
    ],
)
def test_take_processes(argv: list[str], expected: tuple[int, list[str]]) -> None:
    assert take_processes(argv) == expected


@pytest.mark.parametrize("argv", [["--processes"], ["--processes", "0"], ["--processes=two"]])
def test_take_processes_refuses_bad_counts(argv: list[str]) -> None:
    with pytest.raises(ValueError, match="--processes"):
        take_processes(argv)


def test_each_child_gets_its_own_node_name_unless_one_is_given() -> None:
    assert child_argv(1, ["-l", "INFO"]) == ["-l", "INFO", "--hostname=fakesake1@%h"]
    assert child_argv(1, ["-n", "x@%h"]) == ["-n", "x@%h"]


def test_metrics_directory_is_emptied_or_made(tmp_path: Path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old")
    path, made = metrics_directory({supervisor.MULTIPROC_ENV: str(tmp_path)})
    assert (path, made) == (tmp_path, False)
    assert not list(tmp_path.glob("*.db"))
    fresh, made = metrics_directory({})
    assert made and fresh.is_dir()
    fresh.rmdir()


def _pids(out: Path, index: int) -> list[int]:
    path = out / f"{index}.pid"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _until(check: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _supervisor(
    tmp_path: Path, watch: HeartbeatWatch | None = None, cpu_shares: list[tuple[int, ...]] | None = None, **env: str
) -> Supervisor:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return Supervisor(
        2,
        [],
        {**os.environ, "OUT": str(tmp_path), **env},
        metrics_dir=tmp_path / "metrics",
        command=[sys.executable, str(script), "--"],
        watch=watch,
        liveness_grace_s=1.0,
        start_grace_s=3.0,
        health_every_s=0.1,
        cpu_shares=cpu_shares,
    )


def test_a_killed_child_is_restarted_and_stop_ends_all(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    sup = _supervisor(tmp_path, cpu_shares=[(0, 1), (2,)])
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(sup.run(poll_s=0.05)))
    runner.start()
    try:
        _until(lambda: _pids(tmp_path, 0) and _pids(tmp_path, 1))
        first = _pids(tmp_path, 0)[0]
        os.kill(first, signal.SIGKILL)
        _until(lambda: len(_pids(tmp_path, 0)) == 2)  # a young death: restarted after a 1 s backoff
        assert sup.children[0].restarts == 1 and sup.children[1].restarts == 0
        # Each child was handed its own CPUs as model.cpus; the restarted one the same as its predecessor.
        assert (tmp_path / "0.cpus").read_text().split() == ["0-1", "0-1"]
        assert (tmp_path / "1.cpus").read_text().split() == ["2"]
        collected = {m.name: m for m in FleetCollector(sup.children).collect()}
        assert {s.labels["process"]: s.value for s in collected["fakesake_worker_process_up"].samples} == {
            "0": 1,
            "1": 1,
        }
        assert len(collected["fakesake_worker_process_resident_memory_bytes"].samples) == 2
    finally:
        sup.stop()
        runner.join(timeout=30)
    assert codes == [0]
    assert all(c.proc is not None and c.proc.returncode == 0 for c in sup.children)  # each stopped by SIGTERM


def _gauges(sup: Supervisor, name: str) -> dict[str, float]:
    collected = {m.name: m for m in FleetCollector(sup.children).collect()}
    return {s.labels["process"]: s.value for s in collected[name].samples}


def test_a_wedged_child_is_killed_and_restarted_the_others_left_alone(tmp_path: Path) -> None:
    """A child that stops beating (alive, but its heartbeat goes stale) is killed once the grace has passed, and
    restarted; a healthy one is not touched. The live/ready gauges follow each child's heartbeat."""
    (tmp_path / "metrics").mkdir()
    beat = tmp_path / "hb"
    watch = HeartbeatWatch(SlotPlan(0, 0, str(beat), slots=2), max_age_s=0.5)
    sup = _supervisor(tmp_path, watch, HEARTBEAT=str(beat))
    runner = threading.Thread(target=sup.run, kwargs={"poll_s": 0.05})
    runner.start()
    try:
        _until(lambda: _gauges(sup, "fakesake_worker_process_live") == {"0": 1, "1": 1})
        assert _gauges(sup, "fakesake_worker_process_ready") == {"0": 1, "1": 1}
        assert (tmp_path / "0.cpus").read_text().split() == ["-"]  # no shares: run where the supervisor runs
        first_of_1, only_of_0 = _pids(tmp_path, 1)[0], _pids(tmp_path, 0)
        (tmp_path / "wedge-1").touch()  # child 1 stops beating but keeps running
        _until(lambda: _gauges(sup, "fakesake_worker_process_live")["1"] == 0)
        _until(lambda: sup.children[1].unresponsive_kills == 1)  # after the 1 s grace
        (tmp_path / "wedge-1").unlink()  # its successor beats again
        _until(lambda: len(_pids(tmp_path, 1)) == 2)
        with pytest.raises(ProcessLookupError):
            os.kill(first_of_1, 0)  # the wedged one is gone
        _until(lambda: _gauges(sup, "fakesake_worker_process_live") == {"0": 1, "1": 1})
        assert _gauges(sup, "fakesake_worker_process_unresponsive_kills") == {"0": 0, "1": 1}
        assert sup.children[1].restarts == 1 and _pids(tmp_path, 0) == only_of_0 and sup.children[0].restarts == 0
    finally:
        sup.stop()
        runner.join(timeout=30)


def test_a_child_that_never_beats_is_killed_after_the_start_grace(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    watch = HeartbeatWatch(SlotPlan(0, 0, str(tmp_path / "hb"), slots=2), max_age_s=0.5)
    sup = _supervisor(tmp_path, watch)  # no HEARTBEAT: the children never write one
    runner = threading.Thread(target=sup.run, kwargs={"poll_s": 0.05})
    started = time.monotonic()
    runner.start()
    try:
        _until(lambda: len(_pids(tmp_path, 0)) == 2 and len(_pids(tmp_path, 1)) == 2)
        assert time.monotonic() - started >= 3.0  # not before the start grace
        assert _gauges(sup, "fakesake_worker_process_unresponsive_kills") == {"0": 1, "1": 1}
    finally:
        sup.stop()
        runner.join(timeout=30)


def test_a_child_that_cannot_start_ends_the_supervisor_with_2(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    sup = _supervisor(tmp_path, EXIT_CODE=str(supervisor.EXIT_START_FAILED))
    assert sup.run(poll_s=0.05) == supervisor.EXIT_START_FAILED
    assert all(c.proc is not None and c.proc.poll() is not None for c in sup.children)


def test_children_share_the_cores_unless_threads_are_chosen() -> None:
    assert supervisor.thread_budget({}, 2, 16) == {"OMP_NUM_THREADS": "8"}
    assert supervisor.thread_budget({}, 4, 2) == {"OMP_NUM_THREADS": "1"}
    assert supervisor.thread_budget({"OMP_NUM_THREADS": "3"}, 2, 16) == {}
    assert supervisor.thread_budget({"FAKESAKE_MODEL__THREADS": "2"}, 2, 16) == {}


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--processes", "0"], "--processes needs a positive integer"), (["--processes", "99"], "METRICS__SLOTS")],
)
def test_worker_refuses_a_bad_process_count_with_one_line(
    argv: list[str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.service.celery_app import run_worker

    for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:
        monkeypatch.delenv(key)
    assert run_worker(argv) == supervisor.EXIT_START_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fakesake: config:") and says in err[0]


def test_the_watch_finds_each_child_by_pid_in_any_slot_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    """A restarted child may sit in another slot than its index: found by pid. An absent, damaged or non-object
    file is skipped (no child found there), never an error."""
    base = tmp_path / "hb"
    watch = HeartbeatWatch(SlotPlan(0, 0, str(base), slots=4), max_age_s=30)
    now = time.time()
    (tmp_path / "hb").write_text("{half a snapshot")  # slot 0: damaged
    (tmp_path / "hb-1").write_text("[1, 2]")  # slot 1: not an object; slot 2: absent
    (tmp_path / "hb-3").write_text(json.dumps({"pid": 4242, "last_heartbeat": now - 40, "model_loaded": True}))
    found = watch.snapshots()
    assert list(found) == [4242]
    assert watch.judge(found[4242], now)[:2] == (False, False) and "40.0s old" in watch.judge(found[4242], now)[2]
    assert watch.judge(None, now) == (False, False, "no heartbeat file names its pid")
