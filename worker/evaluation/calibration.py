"""Fit a calibration (raw score -> calibrated P(AI)) and certify thresholds on it. numpy only.

Fitting (``y`` = 1 for AI images, ``s`` = raw scores):

* ``platt``: logistic regression of ``y`` on ``logit(s)`` (two parameters) by Newton's method with a
  backtracking line search, on Platt's smoothed targets ``(n+ + 1)/(n+ + 2)`` and ``1/(n- + 2)``: with hard 0/1
  targets a separable set has no finite optimum and plain Newton runs the slope off to infinity;
* ``temperature``: the same with the intercept fixed at 0 (one parameter, ``1/temperature``);
* ``isotonic``: pool-adjacent-violators on the raw scores (tied scores pooled first).

Thresholds: ``ai_min`` is the lowest calibrated cut at which the false-positive rate on the real images is at
most ``target_fpr`` with ``confidence`` (one-sided Clopper-Pearson upper bound on the observed false positives),
``human_max`` the highest cut at which the false-negative rate on the AI images is bounded the same way by
``target_fnr``. With too few images even zero errors cannot certify the target: :class:`NotEnoughImages` says
how many are needed (``n >= ln(1 - confidence) / ln(1 - target)``, ~300 for 1%, ~3,000 for 0.1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from producers.errors import ConfigError
from worker.core.calibration import EPS, Calibration, CalibrationFile, content_id
from worker.core.registry import Thresholds

Array = np.ndarray[Any, Any]
METHODS = ("platt", "temperature", "isotonic")


class NotEnoughImages(ConfigError):
    """Too few images of one class to certify the error-rate target even with no errors at all."""

    def __init__(self, kind: str, have: int, need: int, target: float, confidence: float) -> None:
        self.kind, self.have, self.need = kind, have, need
        rate = "false-positive" if kind == "real" else "false-negative"
        super().__init__(
            f"need at least {need} {kind} images to certify a {rate} rate <= {target:g} with "
            f"{confidence:.0%} confidence (have {have}); add {kind} images or raise the target"
        )


def _logits(s: Array) -> Array:
    q = np.clip(np.asarray(s, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q / (1.0 - q))


def _platt_targets(y: Array) -> Array:
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    return np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))


def _nll(z: Array, t: Array) -> float:
    # -sum(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))), written to stay finite for large |z|
    return float(np.sum(np.logaddexp(0.0, z) - t * z))


def _newton(features: Array, t: Array, max_iter: int = 100, tol: float = 1e-10) -> Array:
    """Minimise the logistic loss of ``features @ w`` against soft targets ``t``; step halving keeps every
    step a descent step."""
    w = np.zeros(features.shape[1])
    ridge = 1e-12 * np.eye(features.shape[1])  # keeps the Hessian invertible for a constant feature
    loss = _nll(features @ w, t)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(features @ w)))
        grad = features.T @ (p - t)
        if float(np.max(np.abs(grad))) < tol * max(1.0, t.size):
            break
        hess = (features * (p * (1 - p))[:, None]).T @ features + ridge
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            trial = w - scale * step
            trial_loss = _nll(features @ trial, t)
            if trial_loss <= loss:
                break
            scale /= 2
        else:
            break  # no descent along the Newton direction: at the optimum to float precision
        w, loss = trial, trial_loss
    return w


def fit_platt(s: Array, y: Array) -> dict[str, float]:
    x = _logits(s)
    w = _newton(np.column_stack([x, np.ones_like(x)]), _platt_targets(np.asarray(y)))
    if w[0] <= 0:
        raise ConfigError("the scores do not rise with the truth (Platt slope <= 0): nothing to calibrate")
    return {"a": float(w[0]), "b": float(w[1])}


def fit_temperature(s: Array, y: Array) -> dict[str, float]:
    x = _logits(s)
    w = _newton(x[:, None], _platt_targets(np.asarray(y)))
    if w[0] <= 0:
        raise ConfigError("the scores do not rise with the truth (1/temperature <= 0): nothing to calibrate")
    return {"temperature": float(1.0 / w[0])}


def fit_isotonic(s: Array, y: Array) -> dict[str, list[float]]:
    """Pool adjacent violators; the points are each block's first and last raw score at the block's mean."""
    s = np.asarray(s, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xs, inverse = np.unique(s, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    weights = np.bincount(inverse).astype(np.float64)
    # blocks as a stack of (mean, weight, first x index, last x index)
    means: list[float] = []
    wts: list[float] = []
    first: list[int] = []
    last: list[int] = []
    for i, (total, w) in enumerate(zip(sums, weights, strict=True)):
        means.append(total / w)
        wts.append(w)
        first.append(i)
        last.append(i)
        while len(means) > 1 and means[-2] > means[-1]:
            w_sum = wts[-2] + wts[-1]
            means[-2] = (means[-2] * wts[-2] + means[-1] * wts[-1]) / w_sum
            wts[-2] = w_sum
            last[-2] = last[-1]
            del means[-1], wts[-1], first[-1], last[-1]
    px: list[float] = []
    py: list[float] = []
    for m, a, b in zip(means, first, last, strict=True):
        px.append(float(xs[a]))
        py.append(float(m))
        if b != a:
            px.append(float(xs[b]))
            py.append(float(m))
    return {"x": px, "y": py}


def fit(method: str, s: Array, y: Array) -> dict[str, Any]:
    if method == "platt":
        return fit_platt(s, y)
    if method == "temperature":
        return fit_temperature(s, y)
    if method == "isotonic":
        return fit_isotonic(s, y)
    raise ConfigError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


# --- the binomial bound -----------------------------------------------------------------------------------


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(k + 1, dtype=np.float64)
    # log C(n, i) by cumulative sums of log((n - j + 1) / j)
    log_comb = np.concatenate([[0.0], np.cumsum(np.log((n - i[1:] + 1) / i[1:]))])
    terms = log_comb + i * math.log(p) + (n - i) * math.log1p(-p)
    top = float(terms.max())
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper limit on a rate after ``k`` events in ``n`` trials: the p at which
    ``P(X <= k) = 1 - confidence`` (the beta quantile ``Beta(k + 1, n - k).ppf(confidence)``), by bisection."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return 1.0 - math.pow(alpha, 1.0 / n)  # closed form
    lo, hi = k / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return hi


def images_needed(target: float, confidence: float = 0.95) -> int:
    """The fewest images with zero errors that certify an error rate <= ``target``."""
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target) - 1e-9)


def max_errors(n: int, target: float, confidence: float = 0.95) -> int:
    """The most errors among ``n`` that still certify ``target``; -1 when even zero cannot."""
    if n <= 0 or upper_bound(0, n, confidence) > target:
        return -1
    lo, hi = 0, n  # upper_bound rises with k: the last k that passes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if upper_bound(mid, n, confidence) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


# --- thresholds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certified:
    human_max: float
    ai_min: float
    false_positives: int
    false_negatives: int
    fpr_upper: float
    fnr_upper: float


def certify(real: Array, ai: Array, target_fpr: float, target_fnr: float, confidence: float = 0.95) -> Certified:
    """Cuts on the calibrated scores ``real`` and ``ai`` that certify both targets (NotEnoughImages if a class is
    too small). Each cut sits halfway to the next observed score, not on it, so a score a hair away from a
    fitted one is called the same way."""
    real = np.sort(np.asarray(real, dtype=np.float64))[::-1]  # descending
    ai = np.sort(np.asarray(ai, dtype=np.float64))  # ascending
    every = np.unique(np.concatenate([real, ai]))
    k_fp = max_errors(real.size, target_fpr, confidence)
    if k_fp < 0:
        raise NotEnoughImages("real", int(real.size), images_needed(target_fpr, confidence), target_fpr, confidence)
    k_fn = max_errors(ai.size, target_fnr, confidence)
    if k_fn < 0:
        raise NotEnoughImages("ai", int(ai.size), images_needed(target_fnr, confidence), target_fnr, confidence)

    # ai_min: every real scoring >= ai_min is a false positive; keep the (k_fp + 1)-th highest below it
    if k_fp >= real.size:
        ai_min = 0.0
    else:
        edge = float(real[k_fp])
        above = every[every > edge]
        ai_min = (edge + float(above[0])) / 2 if above.size else float(np.nextafter(edge, np.inf))
        if ai_min > 1.0:
            raise ConfigError("real images score 1.0 after calibration: no cut can certify the false-positive rate")
    # human_max: every AI image scoring < human_max is a false negative; keep the (k_fn + 1)-th lowest at/above it
    if k_fn >= ai.size:
        human_max = 1.0
    else:
        edge = float(ai[k_fn])
        below = every[every < edge]
        human_max = (edge + float(below[-1])) / 2 if below.size else edge
    # Where the classes overlap the two cuts cross: lowering human_max to ai_min only removes false negatives,
    # so both bounds still hold and the uncertain band is empty.
    human_max = min(human_max, ai_min)
    fp = int(np.sum(real >= ai_min))
    fn = int(np.sum(ai < human_max))
    return Certified(
        human_max=human_max,
        ai_min=ai_min,
        false_positives=fp,
        false_negatives=fn,
        fpr_upper=upper_bound(fp, int(real.size), confidence),
        fnr_upper=upper_bound(fn, int(ai.size), confidence),
    )


# --- the file ---------------------------------------------------------------------------------------------


def build(
    raw: Array,
    y: Array,
    *,
    method: str,
    model: str,
    weights_sha256: str,
    target_fpr: float,
    target_fnr: float | None = None,
    confidence: float = 0.95,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Fit ``method`` on raw scores ``raw`` (truth ``y``, 1 = AI), certify thresholds, and return the content of
    the calibration file (validated)."""
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=int)
    if not 0.0 < target_fpr < 1.0 or (target_fnr is not None and not 0.0 < target_fnr < 1.0):
        raise ConfigError("the target rates must lie strictly between 0 and 1")
    target_fnr = target_fpr if target_fnr is None else target_fnr
    n_real, n_ai = int(np.sum(y == 0)), int(np.sum(y == 1))
    if n_real == 0 or n_ai == 0:
        raise ConfigError(f"calibration needs scored real and AI images (have {n_real} real, {n_ai} ai)")
    # fail on the counts before fitting: the message is what the user needs
    for kind, n, target in (("real", n_real, target_fpr), ("ai", n_ai, target_fnr)):
        if max_errors(n, target, confidence) < 0:
            raise NotEnoughImages(kind, n, images_needed(target, confidence), target, confidence)
    params = fit(method, raw, y)
    # thresholds are not needed to apply the map; the certified ones come next
    probe = Calibration("", model, weights_sha256, method, params, Thresholds())  # type: ignore[arg-type]
    calibrated = np.array([probe.apply(float(v)) for v in raw])
    cut = certify(calibrated[y == 0], calibrated[y == 1], target_fpr, target_fnr, confidence)
    content: dict[str, Any] = {
        "format": "fakesake-calibration/1",
        "model": model,
        "weights_sha256": weights_sha256,
        "method": method,
        "params": params,
        "human_max": cut.human_max,
        "ai_min": cut.ai_min,
        "target_fpr": target_fpr,
        "target_fnr": target_fnr,
        "confidence": confidence,
        "counts": {
            "real": n_real,
            "ai": n_ai,
            "false_positives": cut.false_positives,
            "false_negatives": cut.false_negatives,
        },
        "bounds": {"fpr_upper": cut.fpr_upper, "fnr_upper": cut.fnr_upper},
    }
    content["id"] = content_id(content)
    content["created_at"] = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    CalibrationFile.model_validate(content)  # what we write is what the loader accepts
    return content
