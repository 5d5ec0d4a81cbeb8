"""Turn a P(AI) score into a band and a label. Pure.

One story for both fields: the ``band`` is the verdict with room to abstain (``human`` below
``human_max``, ``ai`` from ``ai_min``, ``uncertain`` between), and the ``label`` is that verdict where there is
one — ``ai`` exactly when the band is ``ai``, ``human`` exactly when it is ``human`` — and ``None`` (JSON
``null``) in the uncertain band. A record therefore never says ``label: ai`` next to ``band: uncertain``. Callers
that want a forced binary call use ``score`` against a threshold of their own choosing.

Under a :class:`~worker.core.calibration.Calibration` the story is the same on the calibrated scale: ``score``
is the calibrated P(AI), banded by the calibration's own thresholds; ``raw_score`` keeps the model's output.
"""

from __future__ import annotations

from producers.contract import Band, Label, Verdict
from worker.core.calibration import Calibration
from worker.core.registry import DetectorSpec, Thresholds


def band_of(score: float, thresholds: Thresholds) -> Band:
    if score >= thresholds.ai_min:
        return Band.AI
    if score < thresholds.human_max:
        return Band.HUMAN
    return Band.UNCERTAIN


_LABEL_OF_BAND: dict[Band, Label | None] = {Band.AI: Label.AI, Band.HUMAN: Label.HUMAN, Band.UNCERTAIN: None}


def label_of(band: Band) -> Label | None:
    """The label a band implies: the band's verdict, or None when the band abstains."""
    return _LABEL_OF_BAND[band]


def verdict(
    score: float, spec: DetectorSpec, thresholds: Thresholds | None = None, calibration: Calibration | None = None
) -> Verdict:
    """The verdict for one score under the spec's (or overriding) thresholds; with a ``calibration``, the
    calibrated score under the calibration's thresholds."""
    if calibration is not None:
        calibrated = calibration.apply(score)
        band = band_of(calibrated, calibration.thresholds)
        return Verdict(
            score=calibrated,
            label=label_of(band),
            band=band,
            model=spec.identity,
            raw_score=score,
            calibration=calibration.id,
        )
    band = band_of(score, thresholds or spec.thresholds)
    return Verdict(score=score, label=label_of(band), band=band, model=spec.identity)
