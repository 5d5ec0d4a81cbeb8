"""Binary-classification metrics on P(AI) scores, in plain numpy. Pure.

``y`` is 1 for AI (the positive class) and 0 for human; ``s`` is the score, higher = more likely AI. A score
``>= threshold`` is called AI. Ties are handled as scikit-learn does (one ROC point per distinct score, so a tie
between classes is a diagonal step), and every function here returns what scikit-learn returns on the same
arrays; the tests use scikit-learn as the oracle, the package does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def _arrays(y: ArrayLike, s: ArrayLike) -> tuple[NDArray[np.int_], FloatArray]:
    yy = np.asarray(y).astype(int).ravel()
    ss = np.asarray(s, dtype=np.float64).ravel()
    if yy.shape != ss.shape:
        raise ValueError(f"labels and scores differ in length: {yy.size} vs {ss.size}")
    if yy.size and not np.isin(yy, (0, 1)).all():
        raise ValueError("labels must be 0 (human) or 1 (ai)")
    return yy, ss


def _both_classes(y: NDArray[np.int_]) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


@dataclass(frozen=True)
class _Ranked:
    """A score set sorted once, highest first, with the last index of each run of equal scores (all tied items
    flip together): what every ROC point is computed from, with or without per-item weights."""

    y: NDArray[np.int_]
    s: FloatArray
    last: NDArray[np.intp]
    order: NDArray[np.intp]

    @classmethod
    def of(cls, y: NDArray[np.int_], s: FloatArray) -> _Ranked:
        order = np.argsort(-s, kind="mergesort")
        s_sorted = s[order]
        return cls(y[order], s_sorted, np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1], order)

    def counts(self, weights: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
        """True and false positives at each distinct score; ``weights`` (in sorted order) count an item that
        many times, as a bootstrap resample does (a weight of 0 adds a repeated point, which changes no area
        and no operating point)."""
        if weights is None:
            tps = np.cumsum(self.y)[self.last].astype(np.float64)
            return tps, (self.last + 1 - tps).astype(np.float64)
        tps = np.cumsum(weights * self.y)[self.last]
        return tps, np.cumsum(weights)[self.last] - tps  # what is not a true positive is a false one


def _counts_by_threshold(y: NDArray[np.int_], s: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """True and false positives when calling AI every score ``>=`` each distinct score, highest first."""
    ranked = _Ranked.of(y, s)
    tps, fps = ranked.counts()
    return tps, fps, ranked.s[ranked.last]


@dataclass(frozen=True)
class RocCurve:
    """Every ROC point, from (0, 0) at threshold +inf to (1, 1) at the lowest score."""

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


def roc_curve(y: ArrayLike, s: ArrayLike) -> RocCurve:
    """As ``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)``; needs both classes."""
    yy, ss = _arrays(y, s)
    if not _both_classes(yy):
        raise ValueError("a ROC curve needs both classes")
    tps, fps, thr = _counts_by_threshold(yy, ss)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    return RocCurve(fps / fps[-1], tps / tps[-1], np.r_[np.inf, thr])


def roc_auc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve (trapezoids: a tie across classes counts one half), as ``roc_auc_score``."""
    return area(roc_curve(y, s))


def area(curve: RocCurve) -> float:
    """Area under ``curve`` by trapezoids."""
    return float(np.sum(np.diff(curve.fpr) * (curve.tpr[1:] + curve.tpr[:-1]) / 2))


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    """Step-wise area under precision/recall, as ``sklearn.metrics.average_precision_score``."""
    yy, ss = _arrays(y, s)
    if not _both_classes(yy):
        raise ValueError("average precision needs both classes")
    tps, fps, _ = _counts_by_threshold(yy, ss)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class OperatingPoint:
    """The best TPR whose FPR stays within a bound, and the threshold that gives it (None: flag nothing)."""

    max_fpr: float
    tpr: float
    fpr: float
    threshold: float | None


def tpr_at_fpr(y: ArrayLike, s: ArrayLike, max_fpr: float) -> OperatingPoint:
    """The highest TPR among thresholds whose FPR is ``<= max_fpr`` on this set, at the highest threshold that
    reaches it (the fewest false positives for that TPR)."""
    return operating_point(roc_curve(y, s), max_fpr)


def operating_point(curve: RocCurve, max_fpr: float) -> OperatingPoint:
    """:func:`tpr_at_fpr` on a curve already computed."""
    # fpr and tpr never decrease along the curve: the last point within the bound has the highest TPR, and
    # the first point with that TPR has the lowest FPR
    last = int(curve.fpr.searchsorted(max_fpr, side="right")) - 1
    i = int(curve.tpr.searchsorted(curve.tpr[last], side="left"))
    thr = float(curve.thresholds[i])
    return OperatingPoint(max_fpr, float(curve.tpr[i]), float(curve.fpr[i]), None if math.isinf(thr) else thr)


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None


def confusion(y: ArrayLike, predicted_ai: ArrayLike) -> Confusion:
    """Counts of a binary decision (``predicted_ai`` true = called AI) against the truth."""
    yy = np.asarray(y).astype(bool).ravel()
    pp = np.asarray(predicted_ai).astype(bool).ravel()
    if yy.shape != pp.shape:
        raise ValueError(f"labels and decisions differ in length: {yy.size} vs {pp.size}")
    return Confusion(
        tp=int(np.sum(yy & pp)), fp=int(np.sum(~yy & pp)), tn=int(np.sum(~yy & ~pp)), fn=int(np.sum(yy & ~pp))
    )


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of P(AI): its range, how many scores fell in it, their mean, and the fraction truly AI."""

    lower: float
    upper: float
    n: int
    mean_score: float | None
    fraction_ai: float | None


def reliability_bins(y: ArrayLike, s: ArrayLike, n_bins: int = 10) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1], each ``(lower, upper]`` and the first closed, as scikit-learn's
    ``calibration_curve(strategy="uniform")`` bins them."""
    yy, ss = _arrays(y, s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges[1:-1], ss, side="left"), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        member = index == b
        n = int(member.sum())
        bins.append(
            ReliabilityBin(
                float(edges[b]),
                float(edges[b + 1]),
                n,
                float(ss[member].mean()) if n else None,
                float(yy[member].mean()) if n else None,
            )
        )
    return bins


def expected_calibration_error(y: ArrayLike, s: ArrayLike, n_bins: int = 10) -> float:
    """ECE of P(AI): the count-weighted mean of |fraction AI - mean score| over :func:`reliability_bins`."""
    bins = reliability_bins(y, s, n_bins)
    total = sum(b.n for b in bins)
    if not total:
        raise ValueError("no scores")
    # an empty bin has no mean and no fraction, and weighs nothing
    gaps = [
        b.n * abs(b.fraction_ai - b.mean_score) for b in bins if b.fraction_ai is not None and b.mean_score is not None
    ]
    return float(sum(gaps) / total)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval (95% by default)."""

    low: float
    high: float


def bootstrap_intervals(
    y: ArrayLike,
    s: ArrayLike,
    statistics: Callable[[RocCurve], Sequence[float]],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """Percentile intervals of each value ``statistics`` returns from a resample's ROC curve, over resamples
    drawn with replacement within each class.

    Resampling within each class keeps the class counts fixed, so every resample has both classes and AUC or
    TPR at an FPR is always defined; the interval reflects the sampling of these images, not of the class mix.
    The scores are sorted once: a resample is a count per image, and its curve is two weighted cumulative sums
    (10,000 scores x 1,000 resamples in well under a second, where sorting each resample took seconds).
    Seeded: the same data give the same intervals.
    """
    yy, ss = _arrays(y, s)
    if not _both_classes(yy) or resamples < 1:
        raise ValueError("a bootstrap interval needs both classes and at least one resample")
    ranked = _Ranked.of(yy, ss)
    position = np.empty_like(ranked.order)
    position[ranked.order] = np.arange(ranked.order.size)  # original index -> sorted index
    thresholds = np.r_[np.inf, ranked.s[ranked.last]]
    rng = np.random.default_rng(seed)
    # Drawing from each class's sorted positions draws the same images as drawing their indices (choice picks
    # the same slots), without a gather per resample. The loop is the bootstrap's whole cost: no np.r_ in it.
    pos, neg = position[np.flatnonzero(yy == 1)], position[np.flatnonzero(yy == 0)]
    tps, fps = np.zeros(ranked.last.size + 1), np.zeros(ranked.last.size + 1)  # the curve's (0, 0) first
    values = []
    for _ in range(resamples):
        drawn = np.concatenate((rng.choice(pos, pos.size), rng.choice(neg, neg.size)))
        tps[1:], fps[1:] = ranked.counts(np.bincount(drawn, minlength=yy.size).astype(np.float64))
        values.append(list(statistics(RocCurve(fps / fps[-1], tps / tps[-1], thresholds))))
    alpha = (1.0 - level) / 2
    bounds = np.quantile(np.asarray(values, dtype=np.float64), [alpha, 1.0 - alpha], axis=0)
    return [Interval(float(lo), float(hi)) for lo, hi in zip(bounds[0], bounds[1], strict=True)]
