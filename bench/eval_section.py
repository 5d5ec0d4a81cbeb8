"""``fakesake eval`` beside ``fakesake scan`` (``python -m bench --only eval``).

Rows: scoring a labelled set (half real, half ai) through eval's path (``score_inputs``: load the model,
build the scan pipeline, classify, write ``scores.jsonl``) vs ``fakesake scan``'s path over the same files
(``builder.scanner``: load the model, build the same pipeline, classify), both whole commands with the code's
defaults (engine processes included), interleaved passes; target: eval as fast as scan, since it runs scan's
pipeline. Then re-reporting 10,000 saved scores: ``fakesake eval --from-scores`` without and with plots, and
``fakesake calibrate --from-scores``, each called in-process through the CLI's parser and entry.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Context, Row, interleaved, median, ratio_of
from bench.corpus import SPEC_NAME, image_set, weights_file, worker_settings

SECTION = "eval"
SAVED_ROWS = 10_000  # half real, half ai
TARGET_RATIO = 0.90
TARGET_REPORT_S = 1.0


def _scan_rate(settings: Any, sources: list[str], setup_s: list[float]) -> float:
    """Images/s of ``fakesake scan``'s path, model load and engine start included; all outcomes must be ok."""
    from worker.service import builder

    start = time.perf_counter()
    scanner = builder.scanner(settings)
    setup_s.append(time.perf_counter() - start)
    try:
        outcomes = list(scanner.classify(sources))
    finally:
        scanner.close()
    rate = len(sources) / (time.perf_counter() - start)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        raise RuntimeError(f"scan: {len(bad)} images failed, first: {bad[0].error}")
    return rate


def _eval_rate(settings: Any, real: list[str], ai: list[str], out: Path) -> float:
    """Images/s of ``fakesake eval``'s scoring (``score_inputs``), scores.jsonl written; all rows must be ok."""
    from worker.service.evaluate import score_inputs

    job = argparse.Namespace(real=real, ai=ai, dataset=None, manifest=None, perturb=None)
    start = time.perf_counter()
    rows, _ = score_inputs(job, settings, out)
    rate = len(rows) / (time.perf_counter() - start)
    bad = [r for r in rows if r["status"] != "ok"]
    if len(rows) != len(real) + len(ai) or bad:
        raise RuntimeError(f"eval: {len(rows)} rows for {len(real) + len(ai)} inputs, {len(bad)} failed")
    return rate


def _saved_scores(template: dict[str, Any], path: Path) -> None:
    """A scores.jsonl of :data:`SAVED_ROWS` rows shaped like ``template`` (a row eval wrote): seeded scores,
    real ~ Beta(2, 5) and ai ~ Beta(5, 2), with the band and label the spec's thresholds give them."""
    from worker.core import registry
    from worker.core.verdict import band_of, label_of
    from worker.evaluation.dataset import AI, GROUP_NAME, HUMAN

    thresholds = registry.get(SPEC_NAME).thresholds
    rng = np.random.default_rng(0)
    half = SAVED_ROWS // 2
    lines = []
    for truth, scores in ((HUMAN, rng.beta(2, 5, half)), (AI, rng.beta(5, 2, half))):
        group = GROUP_NAME[truth]
        for i, score in enumerate(scores.tolist()):
            band = band_of(score, thresholds)
            label = label_of(band)
            row = {
                **template,
                "source": f"/data/{group}/{i:05d}.jpg",
                "score": score,
                "label": label.value if label else None,
                "band": band.value,
                "truth": truth,
                "dataset": group,
            }
            lines.append(json.dumps(row, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _command_s(argv: list[str], passes: int) -> float:
    """Median seconds of one ``fakesake`` command run in-process (its parser and entry; stderr kept aside)."""
    from worker.service.cli import build_parser

    times = []
    for _ in range(passes):
        args = build_parser().parse_args(argv)
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = args.run(args)
        times.append(time.perf_counter() - start)
        if code != 0:
            raise RuntimeError(f"fakesake {' '.join(argv)} exited {code}: {err.getvalue().strip()}")
    return median(times)


def _rereport_rows(ctx: Context, template: dict[str, Any]) -> list[Row]:
    folder = ctx.workdir / "eval-saved"
    folder.mkdir(parents=True, exist_ok=True)
    scores = folder / "scores.jsonl"
    _saved_scores(template, scores)
    base = ["--from-scores", str(scores)]
    commands: dict[str, tuple[list[str], str]] = {
        "eval --from-scores --no-plots": (["eval", *base, "-o", str(folder), "--no-plots"], f"< {TARGET_REPORT_S:g} s"),
        "eval --from-scores (4 plots)": (["eval", *base, "-o", str(folder)], ""),
        "calibrate --from-scores (platt)": (["calibrate", *base, "-o", str(folder / "calibration.json")], ""),
    }
    repeat = 3 if ctx.quick else 5
    rows = []
    for i, (name, (argv, target)) in enumerate(commands.items()):
        _command_s(argv, 1)  # warm-up: the first imports (matplotlib above all) are not a re-report's cost
        seconds = _command_s(argv, repeat)
        ok = seconds < TARGET_REPORT_S if target else None
        rows.append(
            Row(
                SECTION,
                f"{name}, {SAVED_ROWS:,} saved rows (5k real, 5k ai)",
                seconds,
                "s",
                target=target,
                ok=ok,
                note="" if i else f"default --bootstrap 1000; median of {repeat} in-process runs after one warm-up",
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    weights = ctx.once("weights", lambda: weights_file(ctx.workdir))
    images = image_set(ctx.workdir, "jpeg-1024", ctx.n(64, 24))
    sources = images.sources
    half = len(sources) // 2
    real, ai = sources[:half], sources[half:]
    settings = worker_settings(weights)
    out = ctx.workdir / "eval-scored"
    out.mkdir(parents=True, exist_ok=True)
    setup_s: list[float] = []
    runs: dict[str, Callable[[], float]] = {
        "scan": partial(_scan_rate, settings, sources, setup_s),
        "eval": partial(_eval_rate, settings, real, ai, out),
    }
    for warm in runs.values():  # first imports and the weights' hash (cached per process) are no pass's cost
        warm()
    setup_s.clear()
    rates = interleaved(runs, ctx.passes)
    ratio = ratio_of(rates, "eval", "scan")
    first = next(json.loads(line) for line in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines())
    template = {**first, "status": "ok", "error": None, "perturbation": None}
    name = f"jpeg-1024, {len(sources)} files ({half} real, {len(sources) - half} ai)"
    return [
        Row(
            SECTION,
            f"eval scoring (score_inputs, scores.jsonl written), {name}",
            median(rates["eval"]),
            "img/s",
            median(rates["scan"]),
            "scan (builder.scanner + classify)",
            ratio,
            f">= {TARGET_RATIO:.2f}x (same pipeline)",
            ratio >= TARGET_RATIO,
            note=f"both whole commands: model load + engine processes start + classify + close; scan's setup "
            f"(load model + build scanner) median {median(setup_s):.2f} s of each pass; median of {ctx.passes} "
            "interleaved passes after one warm-up each",
        ),
        *_rereport_rows(ctx, template),
    ]
