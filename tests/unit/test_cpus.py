"""``model.cpus``: parsing CPU lists, the supervisor's shares, and pinning every thread of a process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from producers.errors import ConfigError
from tests.support.workers import REPO_ROOT
from worker.service import cpus
from worker.service.settings import WorkerSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("  ", None),
        ("inherit", None),
        ("0", (0,)),
        ("3,1", (1, 3)),
        ("0-3,8", (0, 1, 2, 3, 8)),
        (" 2-3 , 3-4 ", (2, 3, 4)),
    ],
)
def test_parse(text: str, expected: tuple[int, ...] | None) -> None:
    assert cpus.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [("all", "CPU list"), ("1-", "CPU list"), ("-1", "CPU list"), ("3-1", "backwards"), ("0,,1", "CPU list")],
)
def test_parse_refuses_what_is_no_cpu_list(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cpus.parse(text)


def test_the_setting_is_checked_when_settings_load() -> None:
    assert WorkerSettings.model_validate({"model": {"cpus": " 0-1 "}}).model.cpus == "0-1"
    with pytest.raises(ValueError, match=r"model\.cpus"):
        WorkerSettings.model_validate({"model": {"cpus": "most"}})


@pytest.mark.parametrize("cpu_list", [(0,), (0, 1, 2, 3, 8), (1, 3, 5), (0, 1, 4, 5, 6, 9)])
def test_format_list_is_what_parse_reads(cpu_list: tuple[int, ...]) -> None:
    assert cpus.parse(cpus.format_list(cpu_list)) == cpu_list
    assert cpus.format_list((0, 1, 2, 3, 8)) == "0-3,8"


def test_shares_are_disjoint_contiguous_and_cover_every_cpu() -> None:
    assert cpus.shares([0, 1], 2) == [(0,), (1,)]
    assert cpus.shares(range(16), 4) == [tuple(range(k, k + 4)) for k in (0, 4, 8, 12)]
    assert cpus.shares([0, 2, 4, 6, 8], 2) == [(0, 2, 4), (6, 8)]  # the first child takes the odd CPU out
    assert cpus.shares([5, 1, 3], 3) == [(1,), (3,), (5,)]
    assert cpus.shares([0, 1], 3) is None  # fewer CPUs than children: not split


def test_child_shares_split_what_this_process_may_use_unless_told_to_inherit(caplog: pytest.LogCaptureFixture) -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert cpus.child_shares("inherit", 1) is None
    split = cpus.child_shares("", 1)
    assert split == [tuple(mine)]
    with caplog.at_level(logging.WARNING, logger=cpus.__name__):
        assert cpus.child_shares("", len(mine) + 1) is None
    assert "not pinned" in caplog.text


# Run in a fresh interpreter: a thread started BEFORE the pin must follow it too, as must one started after.
PROBE = textwrap.dedent(
    """
    import json, os, sys, threading
    from worker.service import cpus
    before = threading.Event(); stop = threading.Event()
    early = threading.Thread(target=lambda: (before.set(), stop.wait())); early.start(); before.wait()
    pinned = cpus.apply(sys.argv[1])
    late = threading.Thread(target=stop.wait); late.start()
    masks = sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})
    stop.set(); early.join(); late.join()
    print(json.dumps({"pinned": pinned, "masks": masks}))
    """
)


def _probe(setting: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, setting], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_apply_pins_every_thread_including_those_started_before() -> None:
    first = min(os.sched_getaffinity(0))
    done = _probe(str(first))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pinned": [first], "masks": [[first]]}


def test_apply_leaves_the_process_alone_when_the_setting_is_empty() -> None:
    done = _probe("")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"pinned": None, "masks": [sorted(os.sched_getaffinity(0))]}


def test_a_cpu_the_process_may_not_use_is_a_config_error_naming_what_it_may() -> None:
    before = os.sched_getaffinity(0)
    with pytest.raises(ConfigError, match=r"model.cpus 4095: cannot run there .*this process may use"):
        cpus.pin([4095])
    assert os.sched_getaffinity(0) == before  # this process was left as it was


@pytest.mark.parametrize(("setting", "says"), [("4095", "cannot run there"), ("most", "CPU list")])
def test_a_worker_whose_cpus_cannot_be_had_does_not_start(
    setting: str, says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.service.celery_app import EXIT_START_FAILED, run_worker

    for key in [k for k in os.environ if k.startswith("FAKESAKE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(cpus.ENV, setting)
    before = os.sched_getaffinity(0)
    assert run_worker(["--processes", "2"]) == EXIT_START_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fakesake: config") and says in err[0], err
    assert os.sched_getaffinity(0) == before


def test_a_system_without_affinity_calls_pins_nothing_and_splits_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_setaffinity")
    monkeypatch.delattr(os, "sched_getaffinity")
    with pytest.raises(ConfigError, match="needs Linux"):
        cpus.apply("0")
    assert cpus.apply("") is None  # nothing asked, nothing refused
    assert cpus.child_shares("", 2) is None


def test_without_proc_the_calling_thread_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc/self/task to list: the calling thread is pinned (those it starts later inherit its mask)."""
    before = os.sched_getaffinity(0)
    first = min(before)

    def no_proc(path: str) -> list[str]:
        raise FileNotFoundError(path)

    monkeypatch.setattr(cpus.os, "listdir", no_proc)
    try:
        cpus.pin([first])
        assert os.sched_getaffinity(0) == {first}
    finally:
        os.sched_setaffinity(0, before)  # only this thread was pinned: put it back
