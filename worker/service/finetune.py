"""``fakesake finetune``: fine-tune an FFS detector on labelled images and leave a model the worker can serve.

``DIR/`` gets ``model.pt`` (the plain FFS ``state_dict``: ``fakesake scan --model NAME --weights DIR/model.pt`` and
workers load it strictly, unchanged), ``calibration.json`` (fitted on the validation split, when it is large enough
to certify the target), ``eval/before`` and ``eval/after`` (the base and the new weights on the validation split,
as ``fakesake eval`` reports them), ``metrics.jsonl`` (one line per epoch, epoch 0 = the base), ``split.json``,
``MODEL_CARD.md`` and ``checkpoint/`` (what ``--resume`` continues from). With ``--baseline``, the promotion gate
(:mod:`worker.training.gate`) scores both models on that set too (``eval/baseline-*``, ``gate.json``).
Exit codes: 0 done, 3 done but some inputs could not be read (listed in ``split.json``), 4 the gate refused the
model (the message says why; the files are written for inspection), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from producers.errors import ConfigError
from producers.s3 import make_s3_client
from worker.core.registry import DetectorSpec
from worker.evaluation import dataset
from worker.service import builder, loading
from worker.service.scan import expand_inputs, settings_from_args
from worker.service.settings import WorkerSettings
from worker.training import card, corpus, gate, outputs, split
from worker.training.config import TrainConfig
from worker.training.trainer import OnEpoch, Trainer, score

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOME_FAILED = 3
EXIT_REFUSED = 4
_MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class FinetuneJob:
    """One ``fakesake finetune`` run, as data (the CLI builds it; tests build it with any spec)."""

    inputs: list[dataset.LabelledInput]
    output: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    weights: str | None = None
    device: str = "auto"
    resume: Path | None = None
    baseline: list[dataset.LabelledInput] = field(default_factory=list)
    max_regression: float = 0.01
    calibration_method: str = "platt"
    target_fpr: float = 0.01
    bootstrap: int = 1000
    plots: bool = False
    progress: bool = True


@dataclass(frozen=True)
class FinetuneOutcome:
    exit_code: int
    model_path: Path
    best_epoch: int
    gate: gate.GateDecision | None
    failed: int
    best_state: dict[str, Any] = field(repr=False, default_factory=dict)  # what model.pt was written from


def baseline_inputs(items: Sequence[str]) -> list[dataset.LabelledInput]:
    """``--baseline`` values: manifest files (CSV/JSONL of source,label[,dataset]) or ``SRC:ai|human``."""
    out: list[dataset.LabelledInput] = []
    for item in items:
        if Path(item).suffix.lower() in _MANIFEST_SUFFIXES and Path(item).is_file():
            out += dataset.read_manifest(item)
            continue
        source, colon, word = item.rpartition(":")
        if not colon or not source:
            raise ConfigError(f"--baseline {item!r}: expected a manifest file (CSV/JSONL) or SRC:ai|human")
        out.append(dataset.LabelledInput(source, dataset.parse_label(word, f"--baseline {item!r}"), "baseline"))
    return out


def _device_workers(device: str) -> tuple[str, int]:
    """On CUDA the loader decodes and augments in worker processes; on a CPU the cores run the model."""
    from worker.inference.loader import resolve_device

    resolved = resolve_device(device)
    return str(resolved), (min(8, max(1, (os.cpu_count() or 2) - 1)) if resolved.type == "cuda" else 0)


def run_finetune(args: argparse.Namespace) -> int:
    """Entry point of ``fakesake finetune``; returns the process exit code."""
    inputs = dataset.labelled_inputs(args.real or [], args.ai or [], [], args.manifest or [])
    if not inputs:
        raise ConfigError("nothing to train on: give --real and --ai, or --manifest")
    if not args.no_plots and find_spec("matplotlib") is None:
        raise ConfigError("the eval plots need matplotlib: pip install 'fakesake[eval]', or pass --no-plots")
    flags = argparse.Namespace(
        model=args.model,
        detectors=args.detectors,
        weights=args.weights,
        device=args.device,
        preprocess=None,
        batch_size=None,
        s3_endpoint_url=args.s3_endpoint_url,
        allow_private=args.allow_private,
    )
    settings = settings_from_args(flags)
    spec = loading.catalog(settings).get(settings.model.name)
    device, workers = _device_workers(settings.model.device)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
        freeze_backbone=args.freeze_backbone,
        lr=args.lr,
        workers=workers if args.workers is None else args.workers,
    )
    job = FinetuneJob(
        inputs=inputs,
        output=Path(args.output),
        config=config,
        weights=settings.model.weights or spec.weights,
        device=device,
        resume=Path(args.resume) if args.resume else None,
        baseline=baseline_inputs(args.baseline or []),
        max_regression=args.max_regression,
        calibration_method=args.calibration_method,
        target_fpr=args.target_fpr,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    return finetune(job, spec, settings).exit_code


def _read(
    inputs: list[dataset.LabelledInput], settings: WorkerSettings, spec: DetectorSpec, progress: bool, what: str
) -> tuple[list[corpus.Item], list[corpus.Failure]]:
    from worker.inference.imaging import DecodePolicy

    s3 = make_s3_client(settings.s3) if any(i.source.startswith("s3://") for i in inputs) else None
    sources = list(dataset.expand(inputs, lambda items: expand_inputs(items, s3)))
    fetcher = builder.fetcher(settings, allow_local_files=True, client=s3, job_retries=False)
    policy: DecodePolicy = replace(loading.decode_policy(settings, spec), mode="exact")
    return corpus.read(sources, fetcher, policy, progress=progress, what=what)


def finetune(
    job: FinetuneJob, spec: DetectorSpec, settings: WorkerSettings, *, on_epoch: OnEpoch | None = None
) -> FinetuneOutcome:
    """Read, split, train, export, evaluate, calibrate, gate and describe (see the module docstring)."""
    from worker.inference.ffs_module import FFSDetector
    from worker.inference.loader import build_module, load_detector, resolve_device, save_checkpoint

    out, cfg = job.output, job.config
    out.mkdir(parents=True, exist_ok=True)
    if settings.model.threads:
        import torch

        torch.set_num_threads(settings.model.threads)
    policy = replace(loading.decode_policy(settings, spec), mode="exact")
    items, failures = _read(job.inputs, settings, spec, job.progress, "read")
    sp = split.split([i.source.label for i in items], split.groups([i.keys for i in items]), cfg.val_fraction, cfg.seed)
    split_doc = corpus.split_doc(items, sp, failures)
    (out / "split.json").write_text(json.dumps(split_doc, indent=1) + "\n", encoding="utf-8")
    s3_factory = partial(make_s3_client, settings.s3)
    base = load_detector(
        spec, job.weights, revision=settings.model.revision, device="cpu", s3_client_factory=s3_factory
    )
    assert base.path is not None  # the loader always reads a local file
    base_sha = loading.weights_sha256(base.path)
    device = resolve_device(job.device)
    train_items, val_items = [items[i] for i in sp.train], [items[i] for i in sp.val]
    from worker.training.data import TrainImages

    train = TrainImages(corpus.examples(train_items, spec.ai_index), spec.preprocessing, policy, cfg)
    val = corpus.eval_images(val_items, spec.preprocessing, policy, spec.ai_index)
    recipe = {k: v for k, v in cfg.as_dict().items() if k not in ("workers", "eval_batch_size")}
    run = {
        "model": spec.ref,
        "arch": spec.arch,
        "base_sha256": base_sha,
        "recipe": recipe,
        "split": corpus.digest(split_doc),
    }
    module = base.module
    assert isinstance(module, FFSDetector)
    trainer = Trainer(
        module,
        train,
        val,
        cfg,
        ai_index=spec.ai_index,
        device=device,
        out=out,
        run=run,
        progress=job.progress,
    )
    if job.resume is not None:
        from worker.training import checkpoint

        trainer.restore(checkpoint.load(job.resume / "checkpoint"))
    result = trainer.fit(on_epoch)

    final = build_module(spec)
    final.load_state_dict(result.best_state)
    model_path = save_checkpoint(final, out / "model.pt")
    new_sha = loading.weights_sha256(model_path)
    # Both sides of every comparison are read back from their files, strictly, as scan and the workers read them.
    before = load_detector(spec, base.path, device=device)
    after = load_detector(spec, model_path, device=device)
    thresholds = loading.thresholds(settings, spec)

    def evaluate(name: str, loaded: Any, data: Any, its: list[corpus.Item], sha: str) -> list[dict[str, Any]]:
        scores = score(loaded.module, data, spec.ai_index, device, batch_size=cfg.eval_batch_size, amp=False).scores
        # the model name a scan with these weights stamps on its records
        identity = spec.with_overrides(weights_sha256=sha).identity
        rows = outputs.score_rows([i.source for i in its], scores, model=identity, thresholds=thresholds, sha256=sha)
        outputs.write_eval(
            out / "eval" / name,
            rows,
            model=identity,
            thresholds=thresholds,
            resamples=job.bootstrap,
            seed=cfg.seed,
            plots=job.plots,
        )
        return rows

    rows_before = evaluate("before", before, val, val_items, base_sha)
    rows_after = evaluate("after", after, val, val_items, new_sha)
    calibration = outputs.calibrate(
        out / "calibration.json",
        rows_after,
        model=spec.ref,
        sha256=new_sha,
        method=job.calibration_method,
        target_fpr=job.target_fpr,
    )
    decision = None
    if job.baseline:
        decision = _gate(job, settings, spec, evaluate, ((before, base_sha), (after, new_sha)), thresholds)
    facts = card.CardFacts(
        model_ref=spec.ref,
        arch=spec.arch,
        size_px=spec.preprocessing.size_px,
        base_weights=str(job.weights or f"hf-hub:{spec.hub_repo}"),
        base_sha256=base_sha,
        weights_sha256=new_sha,
        counts=split_doc["counts"],
        groups={"train": sp.train_groups, "validation": sp.val_groups},
        failed=len(failures),
        recipe=cfg.as_dict(),
        device=str(device),
        history=result.history,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        before=outputs.headline(rows_before, thresholds),
        after=outputs.headline(rows_after, thresholds),
        calibration=calibration,
        gate=decision,
    )
    (out / "MODEL_CARD.md").write_text(card.render(facts), encoding="utf-8")
    code = EXIT_REFUSED if decision is not None and not decision.passed else EXIT_SOME_FAILED if failures else EXIT_OK
    _summary(out, facts, decision)
    return FinetuneOutcome(code, model_path, result.best_epoch, decision, len(failures), result.best_state)


def _gate(
    job: FinetuneJob, settings: WorkerSettings, spec: DetectorSpec, evaluate: Any, models: Any, thresholds: Any
) -> gate.GateDecision:
    """Score the base and the new weights (``models``: two (loaded, sha256)) on ``--baseline`` and decide;
    ``gate.json`` records the decision."""
    items, failures = _read(job.baseline, settings, spec, job.progress, "baseline")
    if failures:
        log.warning("finetune: %d baseline inputs could not be read and are left out", len(failures))
    if not items:
        decision = gate.GateDecision(False, "auc", None, None, job.max_regression, "no baseline image could be read")
    else:
        policy = replace(loading.decode_policy(settings, spec), mode="exact")
        data = corpus.eval_images(items, spec.preprocessing, policy, spec.ai_index)
        base, new = (
            gate.SetMetrics(**outputs.headline(evaluate(name, loaded, data, items, sha), thresholds))
            for name, (loaded, sha) in zip(("baseline-before", "baseline-after"), models, strict=True)
        )
        decision = gate.decide(base, new, job.max_regression)
    (job.output / "gate.json").write_text(json.dumps(decision.as_dict(), indent=2) + "\n", encoding="utf-8")
    return decision


def _summary(out: Path, facts: card.CardFacts, decision: gate.GateDecision | None) -> None:
    def auc(m: Any) -> str:
        return "n/a" if m.get("auc") is None else f"{m['auc']:.4f}"

    lines = [
        f"finetune {facts.model_ref}: best epoch {facts.best_epoch} of {facts.history[-1].epoch}; validation AUC "
        f"{auc(facts.before)} -> {auc(facts.after)}; model in {out / 'model.pt'}",
        f"  calibration: {facts.calibration}",
    ]
    if facts.failed:
        lines.append(f"  {facts.failed} inputs could not be read (listed in {out / 'split.json'})")
    if decision is not None:
        lines.append(f"  gate {'passed' if decision.passed else 'REFUSED'}: {decision.reason}")
    print("\n".join(lines), file=sys.stderr)
