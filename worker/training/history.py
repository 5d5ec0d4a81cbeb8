"""Per-epoch metrics of a fine-tuning run: one JSON object a line in ``DIR/metrics.jsonl``. Pure.

Epoch 0 is the base model on the validation split (no training), so every later line reads against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did. ``train_loss``/``lr``/``img_per_s`` are None for epoch 0 (nothing trained)."""

    epoch: int
    val_auc: float | None
    val_loss: float
    val_accuracy: float
    best: bool
    train_loss: float | None = None
    lr: float | None = None
    train_images: int = 0
    seconds: float | None = None
    img_per_s: float | None = None

    def line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        return cls(**data)


def write(records: list[EpochRecord], path: Path) -> None:
    """The whole history (a resumed run rewrites the file up to its checkpoint, then appends)."""
    path.write_text("".join(r.line() + "\n" for r in records), encoding="utf-8")


def append(record: EpochRecord, path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(record.line() + "\n")
