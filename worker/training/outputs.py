"""What a fine-tuning run leaves beside ``model.pt``: the before-vs-after evaluation of the validation split
(``eval/before`` and ``eval/after``, each the ``scores.jsonl``/``report.json``/``report.md`` of ``fakesake eval``,
so ``fakesake eval --from-scores`` re-reports them) and ``calibration.json`` fitted on the validation scores of
the new weights, with ``fakesake calibrate``'s fitting and certification."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from producers.errors import ConfigError
from producers.output import record
from worker.core.registry import Thresholds
from worker.core.verdict import band_of, label_of
from worker.evaluation import calibration as fitting
from worker.evaluation.dataset import AI, LabelledSource
from worker.evaluation.report import Row, build_report, overall, render_markdown, score_row, scored


def score_rows(
    sources: Sequence[LabelledSource], scores: Sequence[float], *, model: str, thresholds: Thresholds, sha256: str
) -> list[Row]:
    """``fakesake eval`` score lines for in-process scores (same keys, same verdict)."""
    rows = []
    for src, s in zip(sources, scores, strict=True):
        band = band_of(s, thresholds)
        label = label_of(band)
        line = record(src.source, "ok", score=s, label=label.value if label else None, band=band.value, model=model)
        rows.append({**score_row(line, src.label, src.dataset, None), "weights_sha256": sha256})
    return rows


def write_eval(
    directory: Path,
    rows: list[Row],
    *,
    model: str,
    thresholds: Thresholds,
    resamples: int,
    seed: int,
    plots: bool,
) -> dict[str, Any]:
    """Write one evaluation (scores, report.json, report.md and, with ``plots``, the PNGs); return the report."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = build_report(rows, model=model, thresholds=thresholds, resamples=resamples, seed=seed)
    names: list[str] = []
    if plots:
        from worker.evaluation import plots as figures

        y, s = scored(rows)
        names = figures.write_all(report, y, s, directory)
    report["plots"] = names
    (directory / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / "report.md").write_text(render_markdown(report, names), encoding="utf-8")
    return report


def calibrate(
    path: Path,
    rows: list[Row],
    *,
    model: str,
    sha256: str,
    method: str,
    target_fpr: float,
) -> str:
    """Fit and write ``calibration.json`` from the validation rows of the new weights; the sentence for the
    card. Too few validation images to certify ``target_fpr`` is no error: the file is not written and the
    sentence says how many images it would take."""
    raw = np.array([r["score"] for r in rows], dtype=np.float64)
    y = np.array([r["truth"] == AI for r in rows], dtype=int)
    try:
        content = fitting.build(raw, y, method=method, model=model, weights_sha256=sha256, target_fpr=target_fpr)
    except ConfigError as exc:
        path.unlink(missing_ok=True)  # a file from an earlier run would name other weights
        return f"not written: {exc.message}. Fit one on more images with `fakesake calibrate --weights model.pt`."
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return (
        f"`calibration.json` ({content['method']}, id {content['id']}) fitted on the {content['counts']['real']} real "
        f"and {content['counts']['ai']} AI validation images: ai_min {content['ai_min']:.4f} (FPR <= "
        f"{content['bounds']['fpr_upper']:.2%} at 95%), human_max {content['human_max']:.4f}. The validation split "
        "also chose the epoch: refit on held-out images before relying on these thresholds. Use it with "
        "`--calibration calibration.json`."
    )


def headline(rows: list[Row], thresholds: Thresholds) -> dict[str, Any]:
    """AUC, argmax accuracy and count of one evaluation (what the card's before/after table shows)."""
    o = overall(rows, thresholds, resamples=1)
    return {"auc": o["auc"], "accuracy": o["accuracy"], "n": o["n"]}
