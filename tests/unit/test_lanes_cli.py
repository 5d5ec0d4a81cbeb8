"""``fakesake lanes`` and the lane sets of adverts: the names KEDA triggers and depth metrics use (no Redis)."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from producers import serving
from producers.cli import add_subcommands
from producers.contract import ALL_QUEUES, DEFAULT_MODEL, MAX_SERVED_DETECTORS, lanes_for, queue_name, side_lane
from producers.lanes_cli import run_lanes


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="fakesake")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["lanes", *argv])
    out = io.StringIO()
    return run_lanes(args, out), out.getvalue()


def test_the_lanes_of_an_ensemble_are_what_its_jobs_are_queued_in() -> None:
    code, out = _run("--model", "kyc-ft,ffs-mj-5m")
    assert code == 0
    assert out.splitlines() == [
        f"{queue_name(p, ['ffs-mj-5m', 'kyc-ft'])}\t{p}\tffs-mj-5m,kyc-ft" for p in ("interactive", "bulk")
    ]


def test_without_a_model_the_default_lanes_are_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKESAKE_DEFAULT_MODEL", raising=False)
    code, out = _run("--format", "json")
    assert code == 0
    assert json.loads(out) == [{"queue": q, "lane": q.split(".")[1], "detectors": DEFAULT_MODEL} for q in ALL_QUEUES]


def test_worker_lists_every_lane_a_worker_serving_the_set_consumes() -> None:
    code, out = _run("--model", "c,a,b", "--worker", "--priority", "bulk")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 14 and {r[1] for r in rows} == {"bulk"}
    lanes, sides = rows[:7], rows[7:]  # the lanes first, as before; then their side lanes
    assert {r[0] for r in lanes} == {q for q in lanes_for(["a", "b", "c"]) if ".bulk" in q}
    assert {r[2] for r in lanes} == {"a", "b", "c", "a,b", "a,c", "b,c", "a,b,c"}
    assert sides == [[side_lane(q), lane, d] for q, lane, d in lanes]


def test_worker_prints_every_list_a_worker_consumes_side_lanes_included() -> None:
    """A KEDA trigger per printed queue watches every list the worker's Celery consumer takes from."""
    from worker.service.celery_app import consumed_lanes
    from worker.service.settings import WorkerSettings

    settings = WorkerSettings(model={"names": "b-det,a-det"}, batch={"intake": "celery"})
    code, out = _run("--model", "a-det,b-det", "--worker", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 12
    assert sorted(r["queue"] for r in rows) == sorted(consumed_lanes(settings))
    ab = queue_name("interactive", ["a-det", "b-det"])
    assert {"queue": f"{ab}.side", "lane": "interactive", "detectors": "a-det,b-det"} in rows


def test_worker_refuses_more_detectors_than_a_worker_serves(capsys: pytest.CaptureFixture[str]) -> None:
    names = ",".join(f"d{i}" for i in range(MAX_SERVED_DETECTORS + 1))
    assert _run("--model", names, "--worker")[0] == 2
    assert "a worker serves 1 to 6 detectors, not 7" in capsys.readouterr().err


def test_an_empty_detector_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("--model", "a,,b")[0] == 2
    assert "an empty detector name" in capsys.readouterr().err


@pytest.mark.parametrize("names", [["a"], ["b", "a"], ["a", "b", "c", "d"], [f"d{i}" for i in range(6)]])
def test_worker_lanes_are_lanes_for_with_their_detector_sets(names: list[str]) -> None:
    lanes = serving.worker_lanes(names)
    assert set(lanes) == set(lanes_for(names)) and len(lanes) == 2 * (2 ** len(names) - 1)
    for queue, detectors in lanes.items():
        assert queue == queue_name(queue.split(".")[1], detectors.split(","))


def test_served_lanes_join_the_advertised_sets_and_skip_stray_ones() -> None:
    adverts = [
        serving.Advert("w1", frozenset({"a", "b"})),
        serving.Advert("w2", frozenset({"a"})),
        serving.Advert("w3", frozenset()),
        serving.Advert("w4", frozenset(f"d{i}" for i in range(MAX_SERVED_DETECTORS + 1))),
    ]
    assert serving.served_lanes(adverts) == serving.worker_lanes(["a", "b"])
