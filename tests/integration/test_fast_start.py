"""A scan whose ONNX graph is cached starts without torch or timm, in its engine processes too, and scores
exactly as the first (exporting) start did, within the ONNX parity bound of the model card's pipeline.

Real processes: ``sys.modules`` of a fresh interpreter is the only honest witness of what a start imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.card import CardPipeline
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import encode, photo
from worker.core import registry

pytest.importorskip("onnxruntime")

SPEC = registry.get("ffs-mj-5m")
REPO = Path(__file__).resolve().parents[2]
PARITY = 1e-4

# Runs `fakesake scan` (CLI) or the scanner with engine processes, then reports what the process imported and,
# for engine processes, whether their address space holds libtorch.
PROBE = r"""
import json, os, sys
mode, report = sys.argv[1], sys.argv[2]
found = {}
if mode == "cli":
    from worker.service.cli import main
    found["code"] = main(sys.argv[3:])
else:
    from worker.service import builder
    from worker.service.settings import WorkerSettings
    scanner = builder.scanner(WorkerSettings())
    outcomes = list(scanner.classify(sys.argv[3:]))
    found["scores"] = [o.score for o in outcomes]
    found["children"] = len(scanner.pool.pids)
    found["children_with_libtorch"] = sum(
        "libtorch" in open(f"/proc/{pid}/maps").read() for pid in scanner.pool.pids
    )
    scanner.close()
found["torch"] = "torch" in sys.modules
found["timm"] = "timm" in sys.modules
with open(report, "w") as f:
    json.dump(found, f)
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fast-start")
    weights = write_snapshot(SPEC, root / "weights", seeded_state(SPEC, 0))
    images = []
    for i in range(12):
        path = root / "images" / f"{i:02d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode(photo(400 + 16 * i, 300, i), "JPEG", quality=90))
        images.append(str(path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKESAKE_")}
    env.update(
        FAKESAKE_MODEL__WEIGHTS=str(weights),
        FAKESAKE_MODEL__DEVICE="cpu",
        FAKESAKE_MODEL__ONNX_CACHE_DIR=str(root / "graphs"),
        FAKESAKE_FETCH__ALLOW_LOCAL_FILES="true",
        PYTHONPATH=str(REPO),
    )
    return {"root": root, "weights": weights, "images": images, "env": env}


def _run(rig: dict[str, Any], mode: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    report = rig["root"] / f"report-{mode}.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(report), *args],
        env={**rig["env"], **(env or {})},
        cwd=REPO,
        check=True,
        timeout=280,
        stdout=subprocess.DEVNULL,
    )
    found: dict[str, Any] = json.loads(report.read_text())
    return found


def _scores(path: Path) -> list[float]:
    return [json.loads(line)["score"] for line in path.read_text().splitlines()]


def test_a_scan_imports_neither_torch_nor_timm_cold_or_warm(rig: dict[str, Any]) -> None:
    cold_out, warm_out = rig["root"] / "cold.jsonl", rig["root"] / "warm.jsonl"
    scan = ["scan", "--no-progress", "--batch-size", "16", *rig["images"][:4]]
    for graph in (rig["root"] / "graphs").glob("*"):
        graph.unlink()  # cold, whatever ran before
    cold = _run(rig, "cli", *scan, "-o", str(cold_out))
    assert cold == {"code": 0, "torch": False, "timm": False}  # the first start exports, in a child process
    assert list((rig["root"] / "graphs").glob("*.onnx"))
    warm = _run(rig, "cli", *scan, "-o", str(warm_out))
    assert warm == {"code": 0, "torch": False, "timm": False}
    assert _scores(warm_out) == _scores(cold_out)
    card = CardPipeline(rig["weights"], SPEC)
    expected = [card.score_file(p) for p in rig["images"][:4]]
    assert max(abs(a - b) for a, b in zip(_scores(warm_out), expected, strict=True)) <= PARITY


def test_engine_processes_start_without_torch(rig: dict[str, Any]) -> None:
    _run(rig, "cli", "scan", "--no-progress", "-o", str(rig["root"] / "prime.jsonl"), rig["images"][0])  # cache
    found = _run(rig, "pool", *rig["images"], env={"FAKESAKE_BATCH__PROCESSES": "2", "FAKESAKE_BATCH__MAX_SIZE": "4"})
    assert found["children"] == 2 and found["children_with_libtorch"] == 0
    assert found["torch"] is False and found["timm"] is False
    assert all(s is not None for s in found["scores"]) and len(found["scores"]) == 12


def test_a_scan_of_many_batches_starts_its_engine_processes_early_without_torch(rig: dict[str, Any]) -> None:
    _run(rig, "cli", "scan", "--no-progress", "-o", str(rig["root"] / "prime.jsonl"), rig["images"][0])  # cache
    pool_env = {"FAKESAKE_BATCH__PROCESSES": "2", "FAKESAKE_BATCH__MAX_SIZE": "4"}
    lazy = _run(rig, "pool", *rig["images"], env=pool_env)  # builder.scanner without start_early
    out = rig["root"] / "early.jsonl"
    early = _run(rig, "cli", "scan", "--no-progress", "-o", str(out), *rig["images"], env=pool_env)
    assert early == {"code": 0, "torch": False, "timm": False}
    assert _scores(out) == lazy["scores"]


def test_the_console_scan_exits_at_once_with_every_record_flushed(rig: dict[str, Any]) -> None:
    # `fakesake scan` skips the interpreter's teardown (worker.service.cli.entry): what it printed must all arrive,
    # and its exit code must be the scan's.
    _run(rig, "cli", "scan", "--no-progress", "-o", str(rig["root"] / "prime.jsonl"), rig["images"][0])  # cache
    env = {**rig["env"], "FAKESAKE_BATCH__PROCESSES": "2", "FAKESAKE_BATCH__MAX_SIZE": "4"}
    missing = str(rig["root"] / "missing.jpg")
    cmd = [sys.executable, "-m", "worker.service.cli", "scan", "--no-progress", *rig["images"], missing]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["source"] for r in records] == [*rig["images"], missing]
    assert records[-1]["status"] == "error" and all(r["status"] == "ok" for r in records[:-1])
    assert done.returncode == 3, done.stderr  # some inputs failed


def test_a_reader_that_stops_early_gets_no_traceback(rig: dict[str, Any]) -> None:
    # `fakesake scan folder | head -1`: the scan stops at the closed pipe, quietly (exit 1, no traceback).
    # 300 records (~450 bytes each) are more than a pipe holds (64 KiB): the scan is still writing when the
    # reader goes away. With only the 12 images, it could write them all and exit 0 before the close.
    env = {**rig["env"], "FAKESAKE_BATCH__PROCESSES": "1"}
    cmd = [sys.executable, "-m", "worker.service.cli", "scan", "--no-progress", *rig["images"] * 25]
    with subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())
        proc.stdout.close()  # the reader goes away after one record
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=280)
    assert first["source"] == rig["images"][0]
    assert code == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
