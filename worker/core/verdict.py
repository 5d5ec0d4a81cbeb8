"""Turn a P(AI) score into a label and a band. Pure."""

from __future__ import annotations

from producers.contract import Band, Label, Verdict
from worker.core.registry import DetectorSpec, Thresholds


def band_of(score: float, thresholds: Thresholds) -> Band:
    if score >= thresholds.ai_min:
        return Band.AI
    if score < thresholds.human_max:
        return Band.HUMAN
    return Band.UNCERTAIN


def label_of(score: float) -> Label:
    # Two-class softmax: argmax is index 1 ("by AI") exactly when P(AI) > 0.5; a tie reads as human.
    return Label.AI if score > 0.5 else Label.HUMAN


def verdict(score: float, spec: DetectorSpec, thresholds: Thresholds | None = None) -> Verdict:
    """The verdict for one score under the spec's (or overriding) thresholds."""
    t = thresholds or spec.thresholds
    return Verdict(score=score, label=label_of(score), band=band_of(score, t), model=spec.ref)
