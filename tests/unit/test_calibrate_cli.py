"""``fakesake calibrate`` end to end (from saved scores, and once on seeded weights), calibrated scans, the
weights check and the per-tenant files the builder reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from producers.errors import ConfigError
from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from tests.support.scoring_env import quick_scoring_env
from worker.core import registry
from worker.core.calibration import Calibration
from worker.service import loading
from worker.service.cli import main
from worker.service.settings import ModelSettings, WorkerSettings

SPEC = registry.get("ffs-mj-5m")
SHA = "c" * 64


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_scoring_env(monkeypatch)


def _row(source: str, truth: str, score: float | None, **extra: Any) -> dict[str, Any]:
    status = "ok" if score is not None else "error"
    error = None if score is not None else {"code": "not-an-image", "message": "x"}
    return {
        "source": source,
        "status": status,
        "score": score,
        "label": None,
        "band": None,
        "model": SPEC.ref,
        "error": error,
        "truth": truth,
        "dataset": "real" if truth == "human" else "ai",
        "perturbation": None,
        **extra,
    }


def _scores(path: Path, n_real: int, n_ai: int, *, sha: str | None = SHA, seed: int = 0, broken: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    rows = [_row(f"r{i}.jpg", "human", float(v), weights_sha256=sha) for i, v in enumerate(rng.beta(2, 8, n_real))]
    rows += [_row(f"a{i}.jpg", "ai", float(v), weights_sha256=sha) for i, v in enumerate(rng.beta(8, 2, n_ai))]
    if broken:
        rows.append(_row("broken.jpg", "human", None, weights_sha256=sha))
    rows.append({**_row("r0.jpg", "human", 0.99, weights_sha256=sha), "perturbation": "jpeg:50"})  # not fitted
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_from_scores_writes_a_calibration_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = _scores(tmp_path / "scores.jsonl", 400, 400, broken=True)
    out = tmp_path / "cal" / "calibration.json"
    code = main(["calibrate", "--from-scores", str(scores), "--method", "temperature", "-o", str(out)])
    assert code == 3  # written; the input that failed to score is counted and left out, as eval does
    content = json.loads(out.read_text())
    cal = Calibration.parse(out.read_text(), str(out))
    assert (cal.model, cal.weights_sha256, cal.method, cal.id) == (SPEC.ref, SHA, "temperature", content["id"])
    assert content["counts"]["real"] == 400 and content["counts"]["ai"] == 400  # failures and perturbations left out
    assert content["target_fpr"] == content["target_fnr"] == 0.01 and content["bounds"]["fpr_upper"] <= 0.01
    assert content["created_at"] and cal.thresholds.ai_min == content["ai_min"]
    assert cal.id in capsys.readouterr().err


def test_from_scores_fits_the_raw_score_of_a_calibrated_eval(tmp_path: Path) -> None:
    plain = _scores(tmp_path / "plain.jsonl", 300, 300)
    rows = [json.loads(line) for line in plain.read_text().splitlines()]
    shifted = [{**r, "raw_score": r["score"], "score": 0.5, "calibration": "cal-old"} for r in rows]
    calibrated = tmp_path / "calibrated.jsonl"
    calibrated.write_text("".join(json.dumps(r) + "\n" for r in shifted))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["calibrate", "--from-scores", str(plain), "-o", str(a)]) == 0
    assert main(["calibrate", "--from-scores", str(calibrated), "-o", str(b)]) == 0
    assert json.loads(a.read_text())["id"] == json.loads(b.read_text())["id"]


def test_too_few_real_images_exit_2_saying_how_many(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = _scores(tmp_path / "scores.jsonl", 120, 400)
    out = tmp_path / "calibration.json"
    assert main(["calibrate", "--from-scores", str(scores), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "need at least 299 real images" in err and "have 120" in err and not out.exists()
    assert main(["calibrate", "--from-scores", str(scores), "--target-fpr", "0.05", "-o", str(out)]) == 0


def test_scores_without_the_weights_hash_need_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = _scores(tmp_path / "scores.jsonl", 400, 400, sha=None)
    assert main(["calibrate", "--from-scores", str(scores), "-o", str(tmp_path / "c.json")]) == 2
    assert "pass --weights" in capsys.readouterr().err
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    out = tmp_path / "c.json"
    assert main(["calibrate", "--from-scores", str(scores), "--weights", str(weights), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_inputs_and_saved_scores_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scores = _scores(tmp_path / "scores.jsonl", 400, 400)
    assert main(["calibrate", "--from-scores", str(scores), "--real", "x/", "-o", str(tmp_path / "c.json")]) == 2
    assert main(["calibrate", "-o", str(tmp_path / "c.json")]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err


# --- the builder: settings, tenants, weights --------------------------------------------------------------


def _write_cal(path: Path, scores_dir: Path, sha: str, seed: int = 0) -> Calibration:
    scores = _scores(scores_dir / f"s{seed}.jsonl", 400, 400, sha=sha, seed=seed)
    assert main(["calibrate", "--from-scores", str(scores), "--target-fpr", "0.02", "-o", str(path)]) == 0
    return Calibration.parse(path.read_text(), str(path))


def test_builder_reads_the_global_and_tenant_calibrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"the weights")
    sha = hashlib.sha256(b"the weights").hexdigest()
    tenants = tmp_path / "tenants"
    tenants.mkdir()
    default = _write_cal(tmp_path / "global.json", tmp_path, sha, seed=1)
    acme = _write_cal(tenants / "acme.json", tmp_path, sha, seed=2)
    monkeypatch.setenv("FAKESAKE_MODEL__CALIBRATION", str(tmp_path / "global.json"))
    monkeypatch.setenv("FAKESAKE_MODEL__CALIBRATION_DIR", str(tenants))
    cals = loading.calibrations(WorkerSettings(), SPEC, weights)
    assert cals.for_tenant("acme") == acme and cals.for_tenant("globex") == default
    assert set(cals.tenants) == {"acme"}

    weights.write_bytes(b"other weights")  # a different file: refused, naming both hashes
    with pytest.raises(ConfigError) as info:
        loading.calibrations(WorkerSettings(), SPEC, weights)
    assert sha in info.value.message and hashlib.sha256(b"other weights").hexdigest() in info.value.message


def test_builder_refuses_raw_threshold_overrides_next_to_a_calibration(tmp_path: Path) -> None:
    settings = WorkerSettings(model=ModelSettings(calibration=str(tmp_path / "c.json"), ai_min=0.9))
    with pytest.raises(ConfigError, match="own thresholds"):
        loading.calibrations(settings, SPEC, tmp_path / "w.pt")
    assert not loading.calibrations(WorkerSettings(), SPEC, None)  # nothing configured: nothing read


# --- on seeded weights ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calibrate")
    write_snapshot(SPEC, root / "weights", seeded_state(SPEC))
    # the same tensors saved in another layout: the model loads the same, but the file (and its sha256) differs
    write_snapshot(SPEC, root / "other", seeded_state(SPEC), layout="lightning")
    for cls, seed in (("real", 0), ("ai", 50)):
        (root / cls).mkdir()
        for i in range(4):
            photo(64 + 16 * i, 64, seed + i).save(root / cls / f"{i}.jpg", quality=92)
    return root


def test_calibrate_and_scan_on_seeded_weights(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights, out = corpus / "weights", corpus / "out"
    cal_file = out / "cal.json"
    argv = ["calibrate", "--weights", str(weights), "--real", str(corpus / "real"), "--ai", str(corpus / "ai")]
    # four real images certify no better than 60% (1 - 0.05 ** (1 / 4) = 0.53)
    assert main([*argv, "--method", "isotonic", "--target-fpr", "0.6", "-o", str(cal_file)]) == 0
    cal = Calibration.parse(cal_file.read_text(), str(cal_file))
    sha = hashlib.sha256((weights / SPEC.weights_file).read_bytes()).hexdigest()
    assert (cal.model, cal.weights_sha256, cal.method) == (SPEC.ref, sha, "isotonic")
    raw = {r["source"]: r for r in map(json.loads, (out / "cal.scores.jsonl").read_text().splitlines())}
    assert len(raw) == 8 and {r["weights_sha256"] for r in raw.values()} == {sha}

    records = out / "scan.jsonl"
    code = main(
        ["scan", "--weights", str(weights), "--calibration", str(cal_file), str(corpus / "real"), "-o", str(records)]
    )
    assert code == 0
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(lines) == 4
    for r in lines:
        assert r["calibration"] == cal.id and r["raw_score"] == pytest.approx(raw[r["source"]]["score"], abs=1e-6)
        assert r["score"] == pytest.approx(cal.apply(r["raw_score"]))
        expected = (
            "ai" if r["score"] >= cal.thresholds.ai_min else "human" if r["score"] < cal.thresholds.human_max else None
        )
        assert r["label"] == expected

    capsys.readouterr()
    other = ["scan", "--weights", str(corpus / "other"), "--calibration", str(cal_file), str(corpus / "real")]
    assert main(other) == 2  # fitted for other weights: refused before anything is scanned
    err = capsys.readouterr().err
    assert sha in err and "refit" in err


def test_eval_reports_calibrated_scores_against_the_calibrations_thresholds(tmp_path: Path) -> None:
    cal = _write_cal(tmp_path / "cal.json", tmp_path, SHA)
    scores = _scores(tmp_path / "scores.jsonl", 50, 50, seed=3)
    out = tmp_path / "eval"
    argv = ["eval", "--from-scores", str(scores), "--calibration", str(tmp_path / "cal.json"), "--no-plots"]
    assert main([*argv, "--bootstrap", "5", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["thresholds"] == {"human_max": cal.thresholds.human_max, "ai_min": cal.thresholds.ai_min}
