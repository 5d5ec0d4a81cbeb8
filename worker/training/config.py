"""The fine-tuning recipe as data: the model card's (rotation, crop, Mixup and CutMix, up to 30 epochs with
early stopping, batch 32) with the knobs ``fakesake finetune`` exposes. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from producers.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune. ``lr`` None: 1e-3 for the head alone, 1e-4 for the whole network (AdamW)."""

    epochs: int = 30
    batch_size: int = 32
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0
    freeze_backbone: bool = False
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_epochs: int = 0
    # timm's Mixup: each batch is mixed (prob) with Mixup or CutMix (switch_prob picks CutMix).
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    # 0 keeps the targets hard apart from the mixing: the calibration fitted afterwards sets the final scale.
    label_smoothing: float = 0.0
    # Share of training images that are rotated and cropped before the squash resize; the rest take the exact
    # inference preprocessing, so the model keeps seeing what it will be served.
    augment_prob: float = 0.5
    rotation_deg: float = 10.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    workers: int = 0
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append("--epochs must be >= 1")
        if self.batch_size < 2 or self.batch_size % 2:
            problems.append("--batch-size must be even and >= 2 (Mixup/CutMix pair up the batch)")
        if self.patience < 1:
            problems.append("--patience must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("--val-fraction must lie strictly between 0 and 1")
        if self.lr is not None and self.lr < 0:
            problems.append("--lr must be >= 0")
        if not 0.0 <= self.mix_prob <= 1.0 or not 0.0 <= self.augment_prob <= 1.0:
            problems.append("probabilities must lie in [0, 1]")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            problems.append("crop_scale must satisfy 0 < low <= high <= 1")
        if self.workers < 0:
            problems.append("--workers must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.freeze_backbone else 1e-4

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr": self.learning_rate, "crop_scale": list(self.crop_scale)}
