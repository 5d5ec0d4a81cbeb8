"""``fakesake eval`` end to end: seeded weights, generated images, the real scan pipeline, the files it writes
and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.support.checkpoints import seeded_state, write_snapshot
from tests.support.images import photo
from tests.support.scoring_env import quick_scoring_env
from worker.core import registry
from worker.service import loading
from worker.service.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    spec = registry.get("ffs-mj-5m")
    write_snapshot(spec, root / "weights", seeded_state(spec))
    for cls, seed in (("real", 0), ("ai", 50)):
        (root / cls).mkdir()
        for i in range(4):
            photo(64 + 16 * i, 64, seed + i).save(root / cls / f"{i}.jpg", quality=92)
    (root / "broken.jpg").write_bytes(b"this is not an image")
    return root


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    quick_scoring_env(monkeypatch)


@pytest.fixture(scope="module")
def run(corpus: Path) -> tuple[int, Path]:
    out = corpus / "out"
    with pytest.MonkeyPatch.context() as mp:
        quick_scoring_env(mp)
        code = main(
            [
                "eval",
                "--weights",
                str(corpus / "weights"),
                "--real",
                str(corpus / "real"),
                str(corpus / "broken.jpg"),
                "--ai",
                str(corpus / "ai"),
                "--dataset",
                f"mj={corpus / 'ai'}:ai",
                "--perturb",
                "jpeg:50",
                "--perturb",
                "crop:0.5",
                "--bootstrap",
                "50",
                "-o",
                str(out),
            ]
        )
    return code, out


def test_eval_writes_scores_report_and_plots(run: tuple[int, Path], corpus: Path) -> None:
    code, out = run
    assert code == 3  # broken.jpg failed (in every pass), and is reported, not dropped
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * (4 + 1 + 4 + 4)
    assert {r["perturbation"] for r in rows} == {None, "jpeg:50", "crop:0.5"}
    broken = [r for r in rows if r["source"].endswith("broken.jpg")]
    assert [(r["status"], r["error"]["code"], r["truth"]) for r in broken] == [("error", "not-an-image", "human")] * 3
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(0 <= r["score"] <= 1 and r["model"].startswith("ffs-mj-5m@1.0+") for r in ok)  # + weights sha
    # label is the pipeline's verdict (the band's), as in every record; the truth is its own key
    assert all(r["label"] == {"ai": "ai", "human": "human", "uncertain": None}[r["band"]] for r in ok)

    report = json.loads((out / "report.json").read_text())
    assert report["model"] == ok[0]["model"]
    assert [(d["name"], d["label"], d["n"], d["n_failed"]) for d in report["datasets"]] == [
        ("real", "human", 5, 1),
        ("ai", "ai", 4, 0),
        ("mj", "ai", 4, 0),
    ]
    assert all(d["auc"] is None and d["auc_undefined_reason"] for d in report["datasets"])
    o = report["overall"]
    assert (o["n_real"], o["n_ai"], o["n_failed"]) == (5, 8, 1)
    assert {"auc", "average_precision", "accuracy", "ece", "tpr_at_fpr", "confusion", "auc_ci95"} <= set(o)
    assert set(o["tpr_at_fpr"]) == {"0.01", "0.001"} and {"tpr", "threshold"} <= set(o["tpr_at_fpr"]["0.01"])
    assert set(o["confusion"]) == {"tp", "fp", "tn", "fn"} and sum(o["confusion"].values()) == 12
    assert [p["name"] for p in report["perturbations"]] == ["jpeg:50", "crop:0.5"]
    assert report["failures"]["by_code"] == {"not-an-image": 3}

    assert report["plots"] == ["roc.png", "histogram.png", "reliability.png", "datasets.png"]
    for name in report["plots"]:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        with Image.open(out / name) as img:
            img.verify()
    md = (out / "report.md").read_text()
    assert "## Perturbations" in md and "argmax" in md and "broken.jpg" in md


def test_perturbed_scores_differ_from_the_originals(run: tuple[int, Path]) -> None:
    _, out = run
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    by = {(r["source"], r["dataset"], r["perturbation"]): r["score"] for r in rows if r["status"] == "ok"}
    clean = {k[:2]: v for k, v in by.items() if k[2] is None}
    for name in ("jpeg:50", "crop:0.5"):
        assert any(abs(by[(*k, name)] - v) > 1e-4 for k, v in clean.items())


def test_from_scores_reproduces_the_report_without_a_model(
    run: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out = run

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("--from-scores must not load a model")

    monkeypatch.setattr(loading, "load_model", no_model)
    again = tmp_path / "again"
    code = main(["eval", "--from-scores", str(out / "scores.jsonl"), "--bootstrap", "50", "-o", str(again)])
    assert code == 3
    assert json.loads((again / "report.json").read_text()) == json.loads((out / "report.json").read_text())
    assert (again / "report.md").read_text() == (out / "report.md").read_text()

    # only the scored lines: every input scored, exit 0
    lines = (out / "scores.jsonl").read_text().splitlines()
    scored = tmp_path / "scored.jsonl"
    scored.write_text("\n".join(line for line in lines if '"status":"ok"' in line) + "\n")
    assert main(["eval", "--from-scores", str(scored), "--no-plots", "-o", str(tmp_path / "ok")]) == 0


def test_a_run_where_every_input_scores_exits_0(corpus: Path, tmp_path: Path) -> None:
    real, ai = corpus / "real" / "0.jpg", corpus / "ai" / "0.jpg"
    weights = str(corpus / "weights")
    argv = ["eval", "--weights", weights, "--real", str(real), "--ai", str(ai), "--no-plots", "-o", str(tmp_path)]
    code = main([*argv, "--bootstrap", "10"])
    assert code == 0
    assert json.loads((tmp_path / "report.json").read_text())["failures"]["n"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "-o", "{tmp}"],  # nothing to evaluate
        ["eval", "--ai", "x.jpg", "--perturb", "blur:3", "-o", "{tmp}"],
        ["eval", "--dataset", "mj=folder", "-o", "{tmp}"],
        ["eval", "--from-scores", "{tmp}/scores.jsonl", "--ai", "x.jpg", "-o", "{tmp}"],
        ["eval", "--from-scores", "{tmp}/missing.jsonl", "-o", "{tmp}"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert "fakesake: config:" in capsys.readouterr().err
