"""The promotion gate: a fine-tuned model must not be worse than its base on a labelled baseline set. Pure.

The metric is ROC AUC when the baseline holds both labels (threshold-free, so a shift of the score scale that
the new calibration absorbs is not counted against the model), else accuracy at the argmax (a single-class
set has no AUC). The model is refused when ``base - new > max_regression``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SetMetrics:
    """A model's metrics on the baseline set (``auc`` None when the set has one label)."""

    n: int
    auc: float | None
    accuracy: float | None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    base: float | None
    new: float | None
    max_regression: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(base: SetMetrics, new: SetMetrics, max_regression: float) -> GateDecision:
    """Pass unless the fine-tuned model's baseline metric fell by more than ``max_regression``."""
    metric = "auc" if base.auc is not None and new.auc is not None else "accuracy"
    before, after = (base.auc, new.auc) if metric == "auc" else (base.accuracy, new.accuracy)
    if before is None or after is None:
        return GateDecision(False, metric, before, after, max_regression, "no baseline image could be scored")
    drop = before - after
    if drop > max_regression:
        reason = (
            f"the fine-tuned model is worse than the base on the baseline set: {metric} {after:.4f} vs "
            f"{before:.4f} (a drop of {drop:.4f} > --max-regression {max_regression:g}, {new.n} images)"
        )
        return GateDecision(False, metric, before, after, max_regression, reason)
    reason = f"{metric} on the baseline set {after:.4f} vs base {before:.4f} (allowed drop {max_regression:g})"
    return GateDecision(True, metric, before, after, max_regression, reason)
