"""worker.evaluation.metrics against scikit-learn (the oracle; a test-only dependency), and on sets whose
answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from worker.evaluation import metrics


def _random_set(seed: int, n: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes, always
    s = rng.beta(2, 2, n) + 0.3 * y
    s = np.clip(s, 0, 1)
    if ties:
        s = np.round(s, 1)  # few distinct scores: many ties inside and across classes
    return y, s


SETS = [(seed, n, ties) for seed in range(4) for n in (7, 60, 500) for ties in (False, True)]


@pytest.mark.parametrize(("seed", "n", "ties"), SETS)
def test_roc_auc_and_average_precision_match_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _random_set(seed, n, ties=ties)
    curve = metrics.roc_curve(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.tpr, tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(curve.thresholds, thr)
    assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize(("seed", "n", "ties"), SETS)
def test_confusion_matches_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _random_set(seed, n, ties=ties)
    c = metrics.confusion(y, s > 0.5)
    tn, fp, fn, tp = skm.confusion_matrix(y, s > 0.5, labels=[0, 1]).ravel()
    assert (c.tp, c.fp, c.tn, c.fn) == (tp, fp, tn, fn)
    assert c.accuracy == pytest.approx(skm.accuracy_score(y, s > 0.5))


@pytest.mark.parametrize(("seed", "n", "ties"), SETS)
def test_reliability_bins_match_calibration_curve(seed: int, n: int, ties: bool) -> None:
    y, s = _random_set(seed, n, ties=ties)
    bins = [b for b in metrics.reliability_bins(y, s, 10) if b.n]
    prob_true, prob_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b.fraction_ai for b in bins], prob_true, atol=1e-12)
    np.testing.assert_allclose([b.mean_score for b in bins], prob_pred, atol=1e-12)
    expected = sum(b.n * abs(t - p) for b, t, p in zip(bins, prob_true, prob_pred, strict=True)) / len(y)
    assert metrics.expected_calibration_error(y, s) == pytest.approx(expected, abs=1e-12)


def test_perfect_separation_has_auc_one_and_full_tpr_at_zero_fpr() -> None:
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.roc_auc(y, s) == 1.0
    assert metrics.average_precision(y, s) == 1.0
    point = metrics.tpr_at_fpr(y, s, 0.01)
    assert (point.tpr, point.fpr, point.threshold) == (1.0, 0.0, 0.8)


def test_identical_scores_have_auc_one_half() -> None:
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.full(6, 0.7)
    assert metrics.roc_auc(y, s) == 0.5
    assert metrics.average_precision(y, s) == pytest.approx(0.5)
    # all or nothing: no threshold flags some of a tie, so only "flag nothing" keeps the FPR at 0
    point = metrics.tpr_at_fpr(y, s, 0.5)
    assert (point.tpr, point.fpr, point.threshold) == (0.0, 0.0, None)


def test_tpr_at_fpr_picks_the_lowest_threshold_within_the_bound() -> None:
    # 10 reals 0.00..0.09 and one high real at 0.95; AIs at 0.5, 0.6, 0.97, 0.99
    reals = [i / 100 for i in range(10)] + [0.95]
    ais = [0.5, 0.6, 0.97, 0.99]
    y = np.array([0] * len(reals) + [1] * len(ais))
    s = np.array(reals + ais)
    strict = metrics.tpr_at_fpr(y, s, 0.01)  # no false positive allowed among 11 reals
    assert (strict.tpr, strict.fpr, strict.threshold) == (0.5, 0.0, 0.97)
    loose = metrics.tpr_at_fpr(y, s, 0.1)  # one false positive (1/11 <= 0.1)
    assert (loose.tpr, loose.fpr, loose.threshold) == (1.0, pytest.approx(1 / 11), 0.5)
    # the threshold really gives that operating point
    called = s >= loose.threshold
    assert called[y == 1].mean() == loose.tpr and called[y == 0].mean() == loose.fpr


@pytest.mark.parametrize("seed", range(3))
def test_tpr_at_fpr_agrees_with_the_sklearn_curve(seed: int) -> None:
    y, s = _random_set(seed, 400, ties=seed == 2)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    for bound in (0.01, 0.05, 0.2):
        within = fpr <= bound
        point = metrics.tpr_at_fpr(y, s, bound)
        assert point.tpr == tpr[within].max()
        best = thr[within][np.argmax(tpr[within])]
        assert point.threshold == (None if np.isinf(best) else best)


def test_single_class_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="both classes"):
        metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="both classes"):
        metrics.average_precision([0, 0], [0.2, 0.5])


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    y, s = _random_set(7, 300, ties=False)

    def stat(curve: metrics.RocCurve) -> list[float]:
        return [metrics.area(curve), metrics.operating_point(curve, 0.05).tpr]

    first = metrics.bootstrap_intervals(y, s, stat, resamples=200, seed=3)
    again = metrics.bootstrap_intervals(y, s, stat, resamples=200, seed=3)
    other = metrics.bootstrap_intervals(y, s, stat, resamples=200, seed=4)
    assert first == again and first != other
    auc = metrics.roc_auc(y, s)
    assert first[0].low < auc < first[0].high
    assert 0 <= first[1].low <= first[1].high <= 1


@pytest.mark.parametrize("ties", [False, True])
def test_a_weighted_resample_gives_the_statistics_of_the_resampled_set(ties: bool) -> None:
    """The bootstrap counts each image as often as it was drawn instead of sorting the drawn set: the AUC and
    the operating points must be those of the drawn set itself (scikit-learn's AUC as the oracle)."""
    y, s = _random_set(11, 200, ties=ties)
    seen: list[list[float]] = []

    def stat(curve: metrics.RocCurve) -> list[float]:
        seen.append([metrics.area(curve), metrics.operating_point(curve, 0.1).tpr])
        return seen[-1]

    metrics.bootstrap_intervals(y, s, stat, resamples=5, seed=9)
    rng = np.random.default_rng(9)  # the same draws, made by hand
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for auc, tpr in seen:
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        assert auc == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)
        assert tpr == pytest.approx(metrics.tpr_at_fpr(y[idx], s[idx], 0.1).tpr, abs=1e-12)
