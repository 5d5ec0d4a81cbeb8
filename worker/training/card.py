"""``MODEL_CARD.md`` of a fine-tuned model: data counts, recipe, metrics, base weights and their hash. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.training.gate import GateDecision
from worker.training.history import EpochRecord


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states; the command collects it, this module only writes it."""

    model_ref: str
    arch: str
    size_px: int
    base_weights: str
    base_sha256: str
    weights_sha256: str
    counts: Mapping[str, Mapping[str, int]]  # split -> label -> images
    groups: Mapping[str, int]  # split -> groups of near-duplicates
    failed: int
    recipe: Mapping[str, Any]
    device: str
    history: Sequence[EpochRecord]
    best_epoch: int
    stopped_early: bool
    before: Mapping[str, Any]  # overall metrics of the base on the validation split
    after: Mapping[str, Any]
    calibration: str  # what happened to calibration.json, in a sentence
    gate: GateDecision | None


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def render(f: CardFacts) -> str:
    r = f.recipe
    counts = ", ".join(
        f"{split}: {sum(c.values())} ({c.get('human', 0)} human, {c.get('ai', 0)} ai; {f.groups.get(split, 0)} groups)"
        for split, c in f.counts.items()
    )
    trained = "the head only (backbone frozen, BatchNorm statistics kept)" if r["freeze_backbone"] else "all weights"
    lines = [
        f"# Fine-tuned {f.model_ref}",
        "",
        f"Backbone `{f.arch}` + the FFS head, {f.size_px} px squash resize, P(AI) = softmax index of 'by AI'. "
        f"Load it with `fakesake scan --model {f.model_ref.split('@', 1)[0]} --weights model.pt` (strict load).",
        "",
        "## Weights",
        f"- base: `{f.base_weights}` (sha256 `{f.base_sha256}`)",
        f"- this model: `model.pt` (sha256 `{f.weights_sha256}`), the weights of epoch {f.best_epoch}"
        + (" (the base: no epoch beat it on validation)" if f.best_epoch == 0 else ""),
        "",
        "## Data",
        f"- {counts}; {f.failed} inputs could not be read and were left out.",
        "- Split by source group (same folder and name without copy markers, same bytes, or same 64-bit dHash of "
        f"the pixels): no group straddles the split; about {r['val_fraction']:.0%} of each label validates, seed "
        f"{r['seed']}.",
        "",
        "## Recipe",
        f"- Trained {trained} on {f.device}; AdamW lr {r['lr']:g}, weight decay {r['weight_decay']:g}, cosine "
        f"schedule over {r['epochs']} epochs (warm-up {r['warmup_epochs']}), batch {r['batch_size']}.",
        f"- Augmentation: {r['augment_prob']:.0%} of images rotated (up to {r['rotation_deg']:g} deg) and "
        f"cropped (area {r['crop_scale'][0]:g}-{r['crop_scale'][1]:g}) before the squash resize, the rest "
        f"take the inference preprocessing as is; Mixup (alpha {r['mixup_alpha']:g}) or CutMix (alpha "
        f"{r['cutmix_alpha']:g}) on {r['mix_prob']:.0%} of batches, label smoothing {r['label_smoothing']:g}.",
        f"- Early stopping on validation ROC AUC (validation loss breaks ties), patience {r['patience']}: "
        + (f"stopped after epoch {f.history[-1].epoch}." if f.stopped_early else f"ran {f.history[-1].epoch} epochs."),
        "",
        "## Validation split, before vs after",
        "| | AUC | accuracy (argmax) | n |",
        "|---|---|---|---|",
        f"| base | {_num(f.before.get('auc'))} | {_num(f.before.get('accuracy'))} | {_num(f.before.get('n'))} |",
        f"| fine-tuned | {_num(f.after.get('auc'))} | {_num(f.after.get('accuracy'))} | {_num(f.after.get('n'))} |",
        "",
        "Full reports: `eval/before/report.md`, `eval/after/report.md`. Per-epoch metrics: `metrics.jsonl`.",
        "The validation split chose the epoch, so these figures are optimistic; judge the model on a held-out set "
        "(`fakesake eval`).",
        "",
        "## Calibration",
        f"- {f.calibration}",
    ]
    if f.gate is not None:
        verdict = "passed" if f.gate.passed else "REFUSED"
        lines += ["", "## Promotion gate", f"- {verdict}: {f.gate.reason}"]
    lines += [
        "",
        "## Epochs",
        "| epoch | train loss | val loss | val AUC | val accuracy | lr | img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for h in f.history:
        mark = " (best)" if h.epoch == f.best_epoch else ""
        lines.append(
            f"| {h.epoch}{mark} | {_num(h.train_loss)} | {_num(h.val_loss)} | {_num(h.val_auc)} | "
            f"{_num(h.val_accuracy)} | {'' if h.lr is None else f'{h.lr:.2e}'} | "
            f"{'' if h.img_per_s is None else f'{h.img_per_s:.1f}'} |"
        )
    return "\n".join(lines) + "\n"
