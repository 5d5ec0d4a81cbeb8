"""Several detectors in one scan: two seeded checkpoints, one fetch and decode per image, each detector's score
equal to its single-detector score, identities that follow the weights, and a fine-tuned checkpoint deployed by
configuration alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from tests.support.scoring_env import quick_scoring_env
from worker.core import registry
from worker.core.calibration import content_id
from worker.service.cli import main

MJ, SD = registry.get("ffs-mj-5m"), registry.get("ffs-sd-5m")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensemble")
    write_snapshot(MJ, root / "w", seeded_state(MJ, 0))
    write_snapshot(SD, root / "w", seeded_state(SD, 1))  # another seed: the two detectors disagree
    (root / "img").mkdir()
    for i in range(5):
        photo(72 + 16 * i, 96, 10 + i).save(root / "img" / f"{i}.jpg", quality=90)
    (root / "img" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_scoring_env(monkeypatch)


def scan(root: Path, *args: str) -> list[dict[str, Any]]:
    out = root / f"out-{hashlib.sha1(repr(args).encode()).hexdigest()[:8]}.jsonl"
    code = main(["scan", "--no-progress", "-o", str(out), *args, str(root / "img")])
    assert code == 3  # the broken file
    return [json.loads(line) for line in out.read_text().splitlines()]


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="module")
def singles(root: Path) -> dict[str, list[dict[str, Any]]]:
    with pytest.MonkeyPatch.context() as mp:
        quick_scoring_env(mp)
        return {name: scan(root, "--weights", str(root / "w"), "--model", name) for name in ("ffs-mj-5m", "ffs-sd-5m")}


def test_single_detector_records_keep_their_shape_and_name_the_weights(
    root: Path, singles: dict[str, list[dict[str, Any]]]
) -> None:
    mj = singles["ffs-mj-5m"]
    assert {r["model"] for r in mj} == {f"ffs-mj-5m@1.0+{sha12(root / 'w' / MJ.weights_file)}"}
    assert all("detectors" not in r and "fusion" not in r for r in mj)


@pytest.mark.parametrize("fusion", ["max", "mean", "min"])
def test_each_detectors_score_in_an_ensemble_equals_its_single_score(
    root: Path, singles: dict[str, list[dict[str, Any]]], fusion: str
) -> None:
    both = scan(root, "--weights", str(root / "w"), "--model", "ffs-mj-5m,ffs-sd-5m", "--fusion", fusion)
    mj, sd = singles["ffs-mj-5m"], singles["ffs-sd-5m"]
    assert [r["source"] for r in both] == [r["source"] for r in mj]
    fuse = {"max": max, "min": min, "mean": lambda a, b: (a + b) / 2}[fusion]
    for e, a, b in zip(both, mj, sd, strict=True):
        if e["status"] != "ok":
            assert e["error"]["code"] == a["error"]["code"] and e["model"] == f"{a['model']},{b['model']}"
            continue
        parts = e["detectors"]
        assert [p["model"] for p in parts] == [a["model"], b["model"]]
        # Equal up to float32 noise: a batch's composition changes the kernels' summation order (~3e-8 seen).
        assert [p["score"] for p in parts] == pytest.approx([a["score"], b["score"]], abs=1e-5)
        assert [p["band"] for p in parts] == [a["band"], b["band"]]
        assert e["score"] == pytest.approx(fuse(a["score"], b["score"]), abs=1e-5) and e["fusion"] == fusion
    assert any(a["score"] != b["score"] for a, b in zip(mj, sd, strict=True) if a["status"] == "ok")


def test_identity_changes_when_the_weights_change(root: Path) -> None:
    other = root / "other"
    write_snapshot(MJ, other, seeded_state(MJ, 7))
    a = scan(root, "--weights", str(root / "w"), "--model", "ffs-mj-5m")[0]
    b = scan(root, "--weights", str(other), "--model", "ffs-mj-5m")[0]
    assert a["model"] != b["model"] and b["model"] == f"ffs-mj-5m@1.0+{sha12(other / MJ.weights_file)}"


def test_a_finetuned_checkpoint_deploys_through_the_detectors_file(root: Path) -> None:
    """What `fakesake finetune` leaves in DIR (model.pt in the FFS layout, calibration.json fitted under the base's
    name for these weights) serves under its own name with no code change."""
    ft = root / "ft"
    ft.mkdir()
    (ft / "model.pt").write_bytes((root / "w" / SD.weights_file).read_bytes())
    sha = hashlib.sha256((ft / "model.pt").read_bytes()).hexdigest()
    body: dict[str, Any] = {
        "format": "fakesake-calibration/1",
        "model": MJ.ref,
        "weights_sha256": sha,
        "method": "temperature",
        "params": {"temperature": 2.0},
        "human_max": 0.4,
        "ai_min": 0.6,
        "target_fpr": 0.01,
        "target_fnr": 0.01,
        "confidence": 0.95,
    }
    body["id"] = content_id(body)
    body["created_at"] = "2026-01-01T00:00:00+00:00"
    (ft / "calibration.json").write_text(json.dumps(body))
    config = root / "detectors.toml"
    config.write_text(
        '[[detectors]]\nname = "kyc-ft"\nbase = "ffs-mj-5m"\nversion = "7"\n'
        'weights = "ft/model.pt"\ncalibration = "ft/calibration.json"\n'
    )
    records = scan(root, "--detectors", str(config), "--model", "kyc-ft,ffs-mj-5m", "--weights", str(root / "w"))
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r["detectors"][0]["model"] == f"kyc-ft@7+{sha[:12]}" for r in ok)
    assert all(r["detectors"][0]["calibration"] == body["id"] and "raw_score" in r["detectors"][0] for r in ok)
