"""``fakesake eval``: score labelled images with the production pipeline and report how accurate it is.

The pipeline is the one ``fakesake scan`` builds (:func:`worker.service.builder.scanner`, the same settings
with the same flags laid over them, the same input expansion), so the report describes what production does.
Scores go to ``DIR/scores.jsonl`` (one scan record per input plus its truth, dataset and perturbation), and
``--from-scores`` re-reports from that file without loading a model. Perturbations re-encode the fetched
bytes (:class:`worker.evaluation.perturb.PerturbingFetcher`) before the unchanged pipeline decodes them.
Exit codes: 0 every input scored, 3 some failed (counted per code and listed), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from producers.errors import ConfigError, FakesakeError
from worker.core import registry
from worker.evaluation import dataset
from worker.evaluation.perturb import Wrap, parse_perturbations
from worker.evaluation.report import Row, build_report, render_markdown, score_row, scored
from worker.service.scan import expand_inputs, outcome_record, settings_from_args

log = logging.getLogger(__name__)

SCORES = "scores.jsonl"


def read_scores(path: Path) -> list[Row]:
    """The rows of an eval's ``scores.jsonl`` (ConfigError naming the line that is not one)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--from-scores {path}: {exc.strerror}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--from-scores {path}, line {n}: not JSON ({exc.msg})") from None
        missing = {"source", "status", "score", "model", "truth", "dataset", "perturbation"} - set(row)
        if missing:
            raise ConfigError(f"--from-scores {path}, line {n}: not a fakesake eval score line (no {sorted(missing)})")
        rows.append(row)
    if not rows:
        raise ConfigError(f"--from-scores {path}: no score lines")
    return rows


def _expand(inputs: list[dataset.LabelledInput], s3_client: Any) -> list[dataset.LabelledSource]:
    try:
        return list(dataset.expand(inputs, lambda items: expand_inputs(items, s3_client)))
    except FakesakeError as exc:  # an S3 prefix that cannot be listed: nothing to evaluate on
        raise ConfigError(f"cannot list the inputs: {exc.code.value}: {exc.message}") from None


def score_inputs(
    args: argparse.Namespace, settings: Any, out: Path, scores_file: Path | None = None
) -> tuple[list[Row], list[str]]:
    """Score every labelled source, once as fetched and once per perturbation; rows are written as they come
    (to ``scores_file``, default ``out/scores.jsonl``), each with the sha256 of the weights that scored it."""
    from producers.s3 import make_s3_client
    from worker.inference.imaging import decode
    from worker.service import builder, loading

    inputs = dataset.labelled_inputs(args.real or [], args.ai or [], args.dataset or [], args.manifest or [])
    if not inputs:
        raise ConfigError("nothing to evaluate: give --real/--ai, --dataset, --manifest or --from-scores")
    perturbations = parse_perturbations(args.perturb or [])
    needs_s3 = any(i.source.startswith("s3://") for i in inputs)
    s3_client = make_s3_client(settings.s3) if needs_s3 else None
    sources = _expand(inputs, s3_client)
    loaded = loading.load_model(settings)
    sha = loading.weights_sha256(loaded.weights_path) if loaded.weights_path is not None else None
    # Perturbations decode at full resolution with the pipeline's limits and codes (never the fast draft mode).
    image_decode = partial(decode, policy=replace(loading.decode_policy(settings, loaded.spec), mode="exact"))
    rows: list[Row] = []
    with open(scores_file or out / SCORES, "w", encoding="utf-8") as f:
        for p in [None, *perturbations]:
            wrap = Wrap(p, image_decode) if p is not None else None
            scanner = builder.scanner(settings, s3_client, loaded=loaded, wrap_fetcher=wrap)
            name = p.name if p is not None else None
            log.info("eval: scoring %d inputs (%s)", len(sources), name or "as fetched")
            try:
                outcomes = scanner.classify(s.source for s in sources)
                for src, outcome in zip(sources, outcomes, strict=True):
                    row = score_row(outcome_record(outcome), src.label, src.dataset, name)
                    row["weights_sha256"] = sha  # `fakesake calibrate --from-scores` ties its file to these weights
                    rows.append(row)
                    f.write(json.dumps(row, separators=(",", ":")) + "\n")
            finally:
                scanner.close()
    return rows, [p.name for p in perturbations]


def _model_of(rows: list[Row], settings: Any) -> tuple[str, Any]:
    """The model that produced the rows and its thresholds (overridden as the settings say)."""
    from worker.service import loading

    refs = sorted({r["model"] for r in rows if r.get("model")})
    if len(refs) > 1:
        raise ConfigError(f"the scores come from several models: {refs}; evaluate one at a time")
    ref = refs[0] if refs else registry.get(settings.model.name).ref
    spec = registry.get(ref.split("@", 1)[0])
    if settings.model.calibration is not None:  # calibrated scores are banded by the calibration's thresholds
        return ref, loading.read_calibration(settings.model.calibration).thresholds
    return ref, loading.thresholds(settings, spec)


def _perturbation_names(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r["perturbation"] for r in rows if r["perturbation"] is not None))


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of ``fakesake eval``; returns the process exit code."""
    out = Path(args.output)
    given = args.real or args.ai or args.dataset or args.manifest or args.perturb
    if args.from_scores and given:
        raise ConfigError("--from-scores re-reports saved scores: it takes no inputs or --perturb")
    if args.bootstrap < 1:
        raise ConfigError("--bootstrap needs at least 1 resample")
    if not args.no_plots and find_spec("matplotlib") is None:  # found out now, not after an hour of scoring
        raise ConfigError("the plots need matplotlib: pip install 'fakesake[eval]', or pass --no-plots")
    settings = settings_from_args(args)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_scores:
        rows = read_scores(Path(args.from_scores))
        names = _perturbation_names(rows)
        if Path(args.from_scores).resolve() != (out / SCORES).resolve():
            (out / SCORES).write_text(Path(args.from_scores).read_text(encoding="utf-8"), encoding="utf-8")
    else:
        rows, names = score_inputs(args, settings, out)
    model, thresholds = _model_of(rows, settings)
    report = build_report(
        rows, model=model, thresholds=thresholds, perturbations=names, resamples=args.bootstrap, seed=args.seed
    )
    plots: list[str] = []
    if not args.no_plots:
        from worker.evaluation import plots as figures

        y, s = scored([r for r in rows if r["perturbation"] is None])
        plots = figures.write_all(report, y, s, out)
    report["plots"] = plots
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report, plots), encoding="utf-8")
    failed = report["failures"]["n"]
    _summary(report, out)
    return 3 if failed else 0


def _summary(report: dict[str, Any], out: Path) -> None:
    o = report["overall"]
    auc = "undefined" if o["auc"] is None else f"{o['auc']:.4f}"
    acc = "n/a" if o["accuracy"] is None else f"{o['accuracy']:.4f}"
    print(
        f"eval {report['model']}: {o['n_real']} real, {o['n_ai']} ai, {report['failures']['n']} failed; "
        f"AUC {auc}, accuracy (argmax 0.5) {acc}; report in {out}",
        file=sys.stderr,
    )
