"""Fitting calibrations and certifying thresholds on synthetic score sets whose answers are known."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from producers.errors import ConfigError
from worker.core.calibration import Calibration, logit
from worker.core.registry import Thresholds
from worker.evaluation import calibration as fitting

SHA = "0" * 64
MODEL = "ffs-mj-5m@1.0"


def _apply(method: str, params: dict[str, Any], s: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    cal = Calibration("cal-x", MODEL, SHA, method, params, Thresholds())  # type: ignore[arg-type]
    return np.array([cal.apply(float(v)) for v in s])


def _logistic_set(n: int, a: float, b: float, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Raw scores sigmoid(x) whose truth follows P(ai) = sigmoid(a * x + b): Platt's answer is (a, b)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(a * x + b)))).astype(int)
    return 1 / (1 + np.exp(-x)), y


def _beta_set(n_real: int, n_ai: int, seed: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    s = np.concatenate([rng.beta(2, 8, n_real), rng.beta(8, 2, n_ai)])
    return s, np.concatenate([np.zeros(n_real, dtype=int), np.ones(n_ai, dtype=int)])


# --- the binomial bound -------------------------------------------------------------------------------------

# (k, n, Clopper-Pearson one-sided 95% upper limit = scipy.stats.beta.ppf(0.95, k + 1, n - k))
KNOWN = [
    (0, 300, 0.009936081944457708),
    (1, 300, 0.01571455489158395),
    (5, 1000, 0.010484076911415651),
    (30, 3000, 0.013539307620630348),
    (2, 10, 0.5069013010632024),
]


@pytest.mark.parametrize(("k", "n", "expected"), KNOWN)
def test_upper_bound_matches_known_values(k: int, n: int, expected: float) -> None:
    assert fitting.upper_bound(k, n) == pytest.approx(expected, rel=1e-8)


def test_upper_bound_matches_scipy_beta_quantile() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 1), (0, 50), (3, 50), (49, 50), (7, 20000), (120, 9000), (400, 1000)]:
        for confidence in (0.9, 0.95, 0.99):
            ours = fitting.upper_bound(k, n, confidence)
            assert ours == pytest.approx(stats.beta.ppf(confidence, k + 1, n - k), rel=1e-7, abs=1e-12)
    assert fitting.upper_bound(5, 5) == 1.0


def test_binomial_cdf_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n, p in [(0, 10, 0.1), (3, 10, 0.5), (50, 1000, 0.04), (999, 1000, 0.999)]:
        assert fitting.binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9)


def test_images_needed_for_zero_false_positives() -> None:
    assert fitting.images_needed(0.01) == 299  # ln(0.05) / ln(0.99) = 298.07
    assert fitting.images_needed(0.001) == 2995
    assert fitting.max_errors(298, 0.01) == -1 and fitting.max_errors(299, 0.01) == 0


# --- the fits ---------------------------------------------------------------------------------------------


def test_platt_recovers_the_generating_parameters_on_overlapping_sets() -> None:
    s, y = _logistic_set(40000, a=1.5, b=-0.5, seed=1)
    params = fitting.fit_platt(s, y)
    assert params["a"] == pytest.approx(1.5, abs=0.06) and params["b"] == pytest.approx(-0.5, abs=0.06)


def test_platt_does_not_diverge_on_separable_sets() -> None:
    s, y = _beta_set(500, 500, seed=2)
    s = np.where(y == 1, 0.7 + 0.3 * s, 0.3 * s)  # reals all below 0.3, AI all above 0.7
    params = fitting.fit_platt(s, y)
    assert all(math.isfinite(v) for v in params.values()) and params["a"] > 0
    p = _apply("platt", params, s)
    assert p[y == 1].min() > 0.5 > p[y == 0].max()  # still separates, with finite confidence
    assert p.max() < 1.0 and p.min() > 0.0


def test_temperature_recovers_the_temperature_and_keeps_the_ranking() -> None:
    s, y = _logistic_set(40000, a=0.5, b=0.0, seed=3)  # temperature 2
    params = fitting.fit_temperature(s, y)
    assert params["temperature"] == pytest.approx(2.0, rel=0.05)
    p = _apply("temperature", params, s)
    assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(p, kind="stable"))
    assert _apply("temperature", params, np.array([0.5]))[0] == pytest.approx(0.5)


def test_platt_keeps_the_ranking() -> None:
    s, y = _beta_set(300, 300, seed=4)
    p = _apply("platt", fitting.fit_platt(s, y), s)
    assert np.array_equal(np.argsort(s, kind="stable"), np.argsort(p, kind="stable"))


def test_isotonic_is_monotone_and_equals_scikit_learn() -> None:
    s, y = _logistic_set(3000, a=1.0, b=0.0, seed=5)
    s = np.round(s, 3)  # tied scores are pooled
    params = fitting.fit_isotonic(s, y)
    p = _apply("isotonic", params, np.sort(s))
    assert np.all(np.diff(p) >= 0) and len(np.unique(p)) < len(np.unique(s))  # monotone, with ties added
    isotonic = pytest.importorskip("sklearn.isotonic")
    ref = isotonic.IsotonicRegression(out_of_bounds="clip").fit(s, y)
    grid = np.linspace(-0.1, 1.1, 997)
    assert np.allclose(_apply("isotonic", params, grid), ref.predict(grid), atol=1e-12)


def test_scores_falling_with_the_truth_are_refused() -> None:
    s, y = _beta_set(200, 200, seed=6)
    with pytest.raises(ConfigError, match="do not rise"):
        fitting.fit_platt(1 - s, y)


def test_logit_clips_saturated_scores() -> None:
    assert math.isfinite(logit(0.0)) and logit(1.0) == pytest.approx(-logit(0.0))


# --- thresholds -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", fitting.METHODS)
def test_thresholds_certify_the_rates_on_held_out_images(method: str) -> None:
    s, y = _beta_set(1500, 1500, seed=7)
    content = fitting.build(s, y, method=method, model=MODEL, weights_sha256=SHA, target_fpr=0.01)
    cal = Calibration.parse(json.dumps(content))
    assert cal.thresholds.human_max <= cal.thresholds.ai_min
    assert content["bounds"]["fpr_upper"] <= 0.01 and content["bounds"]["fnr_upper"] <= 0.01
    held_out, truth = _beta_set(100_000, 100_000, seed=8)
    p = _apply(method, content["params"], held_out)
    assert np.mean(p[truth == 0] >= cal.thresholds.ai_min) <= 0.01
    assert np.mean(p[truth == 1] < cal.thresholds.human_max) <= 0.01


def test_a_percentile_threshold_would_not_have_held() -> None:
    """The reason for the bound: the empirical 99th percentile of the reals lets more than 1% through."""
    s, y = _beta_set(1500, 1500, seed=7)
    content = fitting.build(s, y, method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.01)
    p = _apply("platt", content["params"], s[y == 0])
    assert content["ai_min"] > np.quantile(p, 0.99)


def test_overlapping_classes_leave_no_uncertain_band_and_keep_both_bounds() -> None:
    s, y = _beta_set(2000, 2000, seed=9)
    s = np.where(y == 1, 0.3 + 0.5 * s, 0.5 * s + 0.2)  # heavy overlap
    content = fitting.build(s, y, method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.05)
    assert content["human_max"] <= content["ai_min"]
    assert content["bounds"]["fpr_upper"] <= 0.05 and content["bounds"]["fnr_upper"] <= 0.05


def test_too_few_real_images_says_how_many_are_needed() -> None:
    s, y = _beta_set(100, 1000, seed=10)
    with pytest.raises(fitting.NotEnoughImages, match="need at least 299 real images") as info:
        fitting.build(s, y, method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.01)
    assert (info.value.have, info.value.need) == (100, 299)
    with pytest.raises(fitting.NotEnoughImages, match="need at least 59 ai images"):
        fitting.build(
            s[:130], y[:130], method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.5, target_fnr=0.05
        )


def test_the_id_hashes_the_content_not_the_date() -> None:
    s, y = _beta_set(400, 400, seed=11)
    a = fitting.build(s, y, method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.02)
    b = fitting.build(s, y, method="platt", model=MODEL, weights_sha256=SHA, target_fpr=0.02)
    c = fitting.build(s, y, method="platt", model=MODEL, weights_sha256="1" * 64, target_fpr=0.02)
    assert a["id"] == b["id"] != c["id"] and a["id"].startswith("cal-")
