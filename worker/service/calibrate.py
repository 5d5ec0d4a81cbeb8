"""``fakesake calibrate``: fit raw score -> calibrated P(AI) on labelled images and certify thresholds on it.

Scores come from the production pipeline exactly as ``fakesake eval`` makes them (raw: any configured
calibration is set aside while scoring, and written beside the output as ``NAME.scores.jsonl`` for refits), or
from an eval's ``scores.jsonl`` (``--from-scores``; only the unperturbed rows count, and a calibrated eval's
``raw_score`` is used). The file (:mod:`worker.core.calibration`) names the model and the sha256 of the weights
file that produced the scores, so a worker with other weights refuses it at start.
Exit codes: 0 written, 3 written but some inputs failed to score, 2 usage errors and too few images to certify
the target (the message says how many are needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from producers.errors import ConfigError
from worker.core import registry
from worker.evaluation import calibration as fitting
from worker.evaluation.dataset import AI
from worker.evaluation.report import Row
from worker.service.evaluate import read_scores, score_inputs
from worker.service.scan import settings_from_args

log = logging.getLogger(__name__)


def _raw(row: Row) -> float:
    raw = row.get("raw_score")
    return float(row["score"] if raw is None else raw)


def _weights_sha(rows: list[Row], args: argparse.Namespace, model: str) -> str:
    shas = {r.get("weights_sha256") for r in rows}
    known = sorted(str(s) for s in shas if s is not None)
    if len(known) > 1:
        raise ConfigError(f"the scores come from several weights files: {known}")
    if None not in shas:
        return known[0]
    if args.weights is None:
        raise ConfigError(
            "these scores do not record the sha256 of their weights (an older fakesake eval): "
            "pass --weights with the weights file that scored them, or score again"
        )
    from worker.inference.loader import resolve_weights
    from worker.service.loading import weights_sha256

    return weights_sha256(resolve_weights(registry.get(model.split("@", 1)[0]), args.weights))


def _scored_rows(args: argparse.Namespace, output: Path) -> tuple[list[Row], Path | None]:
    if args.from_scores:
        return read_scores(Path(args.from_scores)), None
    settings = settings_from_args(args)
    raw_model = settings.model.model_copy(update={"calibration": None, "calibration_dir": None})
    settings = settings.model_copy(update={"model": raw_model})
    scores = output.with_name(output.stem + ".scores.jsonl")
    job = argparse.Namespace(real=args.real, ai=args.ai, dataset=[], manifest=args.manifest, perturb=[])
    rows, _ = score_inputs(job, settings, output.parent, scores_file=scores)
    return rows, scores


def run_calibrate(args: argparse.Namespace) -> int:
    """Entry point of ``fakesake calibrate``; returns the process exit code."""
    given = args.real or args.ai or args.manifest
    if args.from_scores and given:
        raise ConfigError("--from-scores fits saved scores: it takes no --real, --ai or --manifest")
    if not args.from_scores and not given:
        raise ConfigError("nothing to calibrate on: give --real and --ai, --manifest, or --from-scores")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows, scores_file = _scored_rows(args, output)
    plain = [r for r in rows if r.get("perturbation") is None]
    ok = [r for r in plain if r["status"] == "ok"]
    failed = len(plain) - len(ok)
    refs = sorted({r["model"] for r in ok if r.get("model")})
    if len(refs) != 1:
        raise ConfigError(f"need scores of exactly one model, found {refs or 'none'}")
    model = refs[0].partition("+")[0]  # name@version: the file names the weights by their full sha256 below
    content = fitting.build(
        np.array([_raw(r) for r in ok]),
        np.array([r["truth"] == AI for r in ok], dtype=int),
        method=args.method,
        model=model,
        weights_sha256=_weights_sha(ok, args, model),
        target_fpr=args.target_fpr,
        target_fnr=args.target_fnr,
    )
    output.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    _summary(content, output, scores_file, failed)
    return 3 if failed else 0


def _summary(content: dict[str, Any], output: Path, scores_file: Path | None, failed: int) -> None:
    c, b = content["counts"], content["bounds"]
    lines = [
        f"calibration {content['id']} ({content['method']}) for {content['model']} -> {output}",
        f"  ai_min {content['ai_min']:.6f}: {c['false_positives']}/{c['real']} real images at/above, "
        f"FPR <= {b['fpr_upper']:.4%} at {content['confidence']:.0%} (target {content['target_fpr']:g})",
        f"  human_max {content['human_max']:.6f}: {c['false_negatives']}/{c['ai']} AI images below, "
        f"FNR <= {b['fnr_upper']:.4%} at {content['confidence']:.0%} (target {content['target_fnr']:g})",
    ]
    if scores_file is not None:
        lines.append(f"  raw scores in {scores_file} (refit with --from-scores)")
    if failed:
        lines.append(f"  {failed} inputs failed to score and were left out")
    print("\n".join(lines), file=sys.stderr)
