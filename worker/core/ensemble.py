"""Scores to verdicts, for one detector or an ensemble of several. Pure.

:func:`judge` is the one way a score becomes a verdict (calibrate, band, then let provenance raise the band).
:func:`judge_ensemble` does the same for several detectors that scored the same image: each gets its own
verdict (its calibration, its thresholds), and one fused ``score``/``band`` follows the job's
:class:`~producers.contract.Fusion` rule:

* ``max`` (default): the highest calibrated score, and the most AI band of any detector (ai > uncertain >
  human). Detectors trained on different generators (Midjourney, Stable Diffusion) each miss the other's
  images, so the one that recognises its generator should decide.
* ``mean``: the mean score, banded by the mean of the detectors' thresholds.
* ``min``: the lowest score and the least AI band: an image is ``ai`` only when every detector says so.

Provenance then raises the fused band as for a single detector; the per-detector entries keep the models' view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from producers.contract import Band, DetectorScore, Fusion, Verdict
from worker.core.calibration import Calibration, Calibrations
from worker.core.evidence import Entry, fuse
from worker.core.registry import DetectorSpec, Thresholds
from worker.core.verdict import band_of, label_of, verdict

_RANK = {Band.HUMAN: 0, Band.UNCERTAIN: 1, Band.AI: 2}


@dataclass(frozen=True)
class Member:
    """One detector a pipeline or worker serves: what it is, how it bands, and where its inputs are scored."""

    spec: DetectorSpec
    infer: Callable[[Any], Future[float]]  # one model input -> its score (a batcher's submit)
    thresholds: Thresholds | None = None  # None: the spec's
    calibrations: Calibrations = field(default_factory=Calibrations)
    input: int | None = None  # which of a shared decode's outputs is this detector's; None: the only one

    def model_input(self, decoded: Any) -> Any:
        """This detector's input among what the decode made (one per distinct preprocessing)."""
        return decoded if self.input is None else decoded[self.input]


@dataclass(frozen=True)
class Judgement:
    """What one scored image is: the verdict after calibration and provenance, the ``evidence`` field, which
    bytes were read (S3 version id and ETag), and for an ensemble each detector's own result."""

    verdict: Verdict
    evidence: dict[str, Any]
    source_version: str | None
    etag: str | None
    detectors: list[DetectorScore] | None = None
    fusion: Fusion | None = None


def judge(
    score: float,
    spec: DetectorSpec,
    thresholds: Thresholds | None,
    calibration: Calibration | None,
    prepared_meta: dict[str, Any],
    evidence: list[Entry] | None,
) -> Judgement:
    """The one way a score becomes a verdict, for scans and jobs alike: calibrate and band it, then let
    provenance raise the band (never lower it)."""
    v, fields = fuse(verdict(score, spec, thresholds, calibration), evidence)
    return Judgement(v, fields, prepared_meta.get("version_id"), prepared_meta.get("etag"))


def fused(verdicts: Sequence[Verdict], limits: Sequence[Thresholds], rule: Fusion) -> Verdict:
    """One verdict for several detectors' verdicts of one image (``limits``: each one's effective thresholds)."""
    if not verdicts or len(verdicts) != len(limits):
        raise ValueError("need one thresholds per verdict, and at least one verdict")
    scores = [v.score for v in verdicts]
    if rule is Fusion.MEAN:
        score = fmean(scores)
        band = band_of(score, Thresholds(fmean(t.human_max for t in limits), fmean(t.ai_min for t in limits)))
    elif rule is Fusion.MIN:
        score, band = min(scores), min((v.band for v in verdicts), key=_RANK.__getitem__)
    else:
        score, band = max(scores), max((v.band for v in verdicts), key=_RANK.__getitem__)
    return Verdict(score=score, label=label_of(band), band=band, model=",".join(v.model for v in verdicts))


def judge_ensemble(
    scores: Sequence[float],
    members: Sequence[Member],
    calibrations: Sequence[Calibration | None],
    rule: Fusion,
    prepared_meta: dict[str, Any],
    evidence: list[Entry] | None,
) -> Judgement:
    """Each detector's verdict on its own score, and the fused verdict (see the module doc)."""
    verdicts = [verdict(s, m.spec, m.thresholds, c) for s, m, c in zip(scores, members, calibrations, strict=True)]
    limits = [
        c.thresholds if c is not None else (m.thresholds or m.spec.thresholds)
        for m, c in zip(members, calibrations, strict=True)
    ]
    v, fields = fuse(fused(verdicts, limits, rule), evidence)
    parts = [
        DetectorScore(
            model=d.model, score=d.score, band=d.band, label=d.label, raw_score=d.raw_score, calibration=d.calibration
        )
        for d in verdicts
    ]
    return Judgement(v, fields, prepared_meta.get("version_id"), prepared_meta.get("etag"), parts, rule)
