"""Early stopping on the validation metric. Pure.

The metric is ROC AUC (threshold-free: fine-tuning moves the scale of the scores, the calibration fitted
afterwards fixes it), with the validation loss breaking ties: on a small validation set AUC saturates at 1.0
quickly, and a falling loss still means better-separated scores. Epoch 0 is the base model, so when no epoch
beats it the base weights stay the best ones and the card says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Tracks the best epoch; :attr:`should_stop` after ``patience`` epochs in a row without improvement."""

    patience: int
    min_delta: float = 0.0
    best_epoch: int | None = None
    best_auc: float = -math.inf
    best_loss: float = math.inf
    bad_epochs: int = 0

    def better(self, auc: float | None, loss: float) -> bool:
        """Whether (``auc``, ``loss``) beats the best so far: a higher AUC, or the same AUC and a lower loss."""
        a = -math.inf if auc is None or math.isnan(auc) else auc
        if self.best_epoch is None:
            return True
        if a > self.best_auc + self.min_delta:
            return True
        return a >= self.best_auc and loss < self.best_loss

    def update(self, epoch: int, auc: float | None, loss: float) -> bool:
        """Record an epoch's metrics; True when it is the new best."""
        if self.better(auc, loss):
            self.best_epoch = epoch
            self.best_auc = -math.inf if auc is None or math.isnan(auc) else auc
            self.best_loss = loss
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EarlyStopping:
        return cls(**state)
