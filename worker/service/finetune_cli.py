"""The ``fakesake finetune`` sub-command's flags (argparse only: ``fakesake --help`` imports no torch)."""

from __future__ import annotations

import argparse

SOURCES = "file, directory (recursive), http(s):// URL or s3://bucket/prefix"


def add_subcommand(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a detector on labelled images (reported mistakes, new generators)",
        description="Fine-tune an FFS detector with the model card's recipe (rotation, crop, Mixup/CutMix, cosine "
        "schedule, early stopping on validation AUC) and write DIR/model.pt (loads with --weights), "
        "calibration.json, eval/ (before vs after on the validation split), metrics.jsonl and MODEL_CARD.md. "
        "Exit 0 done, 3 done but some inputs were unreadable, 4 refused by the --baseline gate, 2 usage error.",
    )
    p.add_argument("--real", nargs="+", action="extend", metavar="SRC", help=f"human-made images: {SOURCES}")
    p.add_argument("--ai", nargs="+", action="extend", metavar="SRC", help=f"AI-generated images: {SOURCES}")
    p.add_argument(
        "--manifest",
        action="append",
        metavar="FILE",
        help="CSV or JSONL rows of source,label[,dataset] (what `fakesake eval --manifest` reads)",
    )
    p.add_argument("--model", help="detector to fine-tune (see `fakesake models`); env FAKESAKE_MODEL__NAME")
    p.add_argument(
        "--detectors", metavar="FILE", help="TOML/YAML file declaring detectors; env FAKESAKE_MODEL__DETECTORS_FILE"
    )
    p.add_argument(
        "--weights", help="base weights: file, snapshot dir, hf-hub:REPO[@REV] or s3://; env FAKESAKE_MODEL__WEIGHTS"
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="where the model and its reports go")
    p.add_argument("--epochs", type=int, default=30, help="most epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (even: Mixup/CutMix pair it up)")
    p.add_argument("--patience", type=int, default=5, help="epochs without a better validation AUC before stopping")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each label held out (by source group)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the augmentation and the shuffling")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-3 head only, 1e-4 all weights)")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only (what fits a CPU)")
    p.add_argument("--resume", metavar="DIR", help="continue the run whose output is DIR (its checkpoint/)")
    p.add_argument("--device", help="auto|cpu|cuda|cuda:N (auto: CUDA when present, with AMP and channels_last)")
    p.add_argument("--workers", type=int, help="data loader processes (default: 0 on CPU, up to 8 on CUDA)")
    p.add_argument(
        "--baseline",
        nargs="+",
        action="extend",
        metavar="SRC",
        help="promotion gate: manifest files or SRC:ai|human the new model must not be worse on than the base",
    )
    p.add_argument(
        "--max-regression", type=float, default=0.01, help="largest allowed drop of the baseline AUC (or accuracy)"
    )
    p.add_argument("--calibration-method", choices=["platt", "temperature", "isotonic"], default="platt")
    p.add_argument("--target-fpr", type=float, default=0.01, help="false-positive rate calibration.json certifies")
    p.add_argument("--no-plots", action="store_true", help="skip the eval PNG plots (no matplotlib needed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint; env FAKESAKE_S3__ENDPOINT_URL")
    p.add_argument("--allow-private", help="CIDRs reachable despite SSRF protection; env FAKESAKE_FETCH__ALLOW_PRIVATE")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from worker.service.finetune import run_finetune

    return run_finetune(args)
