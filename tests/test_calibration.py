"""Precision, thresholds and calibration from verdicts (dawnchorus.evaluate.calibration), on known arrays."""

from __future__ import annotations

import numpy as np
import pytest

from dawnchorus.errors import EvaluationError
from dawnchorus.evaluate.calibration import (
    DEFAULT_EDGES,
    calibrate_scores,
    fit_logistic_calibration,
    score_bins,
    stratified_precision,
    threshold_for_precision,
    wilson_interval,
)
from dawnchorus.io import verdicts


def test_wilson_interval_matches_published_values() -> None:
    # Newcombe (1998), Table I: 81/263 -> 0.2553..0.3662 (Wilson, 95 %); 15/148 -> 0.0624..0.1605.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + 1.959964**2), abs=1e-6)


def test_bins_agree_with_the_review_queue() -> None:
    assert tuple(DEFAULT_EDGES) == tuple(verdicts.SCORE_BIN_EDGES)
    scores = np.array([0.0, 0.05, 0.1, 0.3999, 0.5, 0.95, 1.0])
    assert list(score_bins(scores)) == [verdicts.score_bin(s) for s in scores]


def test_one_bin_is_wilsons_interval() -> None:
    """A simple random sample from one bin of a very large population: Wilson's interval."""
    population = np.full(10_000_000, 0.95)
    verified = np.full(40, 0.95)
    truth = np.r_[np.ones(30), np.zeros(10)]
    estimate = stratified_precision(verified, truth, population)
    assert estimate.precision == pytest.approx(0.75)
    assert (estimate.low, estimate.high) == pytest.approx(wilson_interval(30, 40), abs=1e-5)
    assert estimate.coverage == 1.0 and estimate.n_verified == 40 and estimate.n_detections == 10_000_000


def test_bins_are_weighted_by_their_share_of_detections() -> None:
    # 900 detections in bin 0.9-1.0 (sample: 9 of 10 true), 100 in 0.5-0.6 (sample: 2 of 10 true).
    population = np.r_[np.full(900, 0.95), np.full(100, 0.55)]
    verified = np.r_[np.full(10, 0.95), np.full(10, 0.55)]
    truth = np.r_[np.ones(9), 0, np.ones(2), np.zeros(8)]
    estimate = stratified_precision(verified, truth, population)
    assert estimate.precision == pytest.approx(0.9 * 0.9 + 0.1 * 0.2)  # not the sample's 11/20
    assert estimate.low < estimate.precision < estimate.high
    # At threshold 0.9 only the top bin counts.
    top = stratified_precision(verified, truth, population, threshold=0.9)
    assert top.precision == pytest.approx(0.9) and top.n_verified == 10 and top.n_detections == 900


def test_fully_reviewed_detections_give_the_exact_precision() -> None:
    population = np.r_[np.full(5, 0.95), np.full(4, 0.55)]
    truth = np.r_[1, 1, 1, 1, 0, 1, 0, 0, 1]
    estimate = stratified_precision(population, truth, population)
    assert estimate.precision == pytest.approx(6 / 9)
    assert estimate.low == estimate.high == pytest.approx(6 / 9)


def test_unreviewed_bins_widen_the_interval_to_what_they_could_hold() -> None:
    population = np.r_[np.full(800, 0.95), np.full(200, 0.35)]  # the 0.3-0.4 bin never reviewed
    verified = np.full(20, 0.95)
    truth = np.ones(20)
    estimate = stratified_precision(verified, truth, population)
    assert estimate.coverage == pytest.approx(0.8)
    assert estimate.precision == 1.0
    assert estimate.high == 1.0 and estimate.low <= 0.8 * wilson_interval(20, 20)[0] + 1e-12


def test_stratified_interval_covers_the_true_precision() -> None:
    """Repeated stratified samples from a population of known truth: the 95 % interval holds the
    population's precision in about 95 % of them."""
    rng = np.random.default_rng(0)
    scores = rng.beta(2, 1.2, size=5000)
    truth = rng.random(5000) < scores**1.5  # higher scores more often true
    detections = scores >= 0.3
    true_precision = truth[detections].mean()
    bins = score_bins(scores)
    hits = 0
    draws = 300
    for _ in range(draws):
        picked = np.concatenate(
            [rng.choice(np.flatnonzero((bins == b) & detections), 8, replace=False) for b in range(3, 10)]
        )
        estimate = stratified_precision(scores[picked], truth[picked], scores, threshold=0.3)
        hits += estimate.low <= true_precision <= estimate.high
    assert 0.9 <= hits / draws <= 0.99


def test_threshold_is_the_lowest_reaching_the_target() -> None:
    # A census of 10 detections per score 0.05, 0.15, ... 0.95, true in 0, 1, ..., 9 of each ten.
    scores = np.repeat(np.arange(10) / 10 + 0.05, 10)
    truth = np.concatenate([np.r_[np.ones(k), np.zeros(10 - k)] for k in range(10)])
    # Precision at or above 0.75: (7 + 8 + 9) / 30 = 0.8; at or above 0.65: (6+7+8+9)/40 = 0.75.
    choice = threshold_for_precision(scores, truth, scores, target=0.8, min_count=10)
    assert choice.reached and choice.threshold == pytest.approx(0.75)
    assert choice.precision == pytest.approx(0.8) and choice.n_verified == 30


def test_threshold_needs_min_count_verdicts_above_it() -> None:
    scores = np.repeat(np.arange(10) / 10 + 0.05, 10)
    truth = np.concatenate([np.r_[np.ones(k), np.zeros(10 - k)] for k in range(10)])
    # 0.9 is reached only at 0.95 (10 verdicts): refused when 20 are needed.
    choice = threshold_for_precision(scores, truth, scores, target=0.9, min_count=20)
    assert not choice.reached and choice.threshold is None
    assert choice.precision == pytest.approx((8 + 9) / 20) and "0.85" in choice.reason
    too_few = threshold_for_precision(scores[:5], truth[:5], scores, target=0.9, min_count=10)
    assert too_few.threshold is None and "5 verdicts" in too_few.reason


def test_threshold_rejects_an_impossible_target() -> None:
    with pytest.raises(EvaluationError, match="target precision"):
        threshold_for_precision([0.5], [1], [0.5], target=1.5)


def test_logistic_calibration_recovers_a_known_curve() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.01, 0.99, 20_000)
    truth = rng.random(20_000) < calibrate_scores(scores, 2.0, -1.0)
    fitted = fit_logistic_calibration(scores, truth)
    assert fitted.slope == pytest.approx(2.0, abs=0.1)
    assert fitted.intercept == pytest.approx(-1.0, abs=0.1)
    assert fitted.n == 20_000
    assert fitted.apply(0.5) == pytest.approx(1 / (1 + np.exp(1.0)), abs=0.03)


def test_calibration_refuses_one_sided_or_inverted_verdicts() -> None:
    with pytest.raises(EvaluationError, match="0 false verdicts"):
        fit_logistic_calibration([0.2, 0.6, 0.9], [1, 1, 1])
    with pytest.raises(EvaluationError, match="not more often true"):
        fit_logistic_calibration([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [1, 1, 0, 1, 0, 0])
    with pytest.raises(EvaluationError, match=r"1 \(true detection\) or 0"):
        fit_logistic_calibration([0.1, 0.2], [1, 2])


def test_calibrated_table_keeps_uncalibrated_labels() -> None:
    table = np.array([[0.2, 0.2], [0.9, 0.9]])
    out = calibrate_scores(table, np.array([1.0, np.nan]), np.array([0.0, np.nan]))
    assert out[:, 0] == pytest.approx([0.2, 0.9])  # slope 1, intercept 0: the identity
    assert out[:, 1] == pytest.approx([0.2, 0.9])
    shifted = calibrate_scores(table, np.array([1.0, 1.0]), np.array([np.log(3.0), 0.0]))
    assert shifted[0, 0] == pytest.approx(0.2 * 3 / (0.2 * 3 + 0.8))  # odds times 3


def test_bin_sizes_above_any_threshold_match_counting_the_population() -> None:
    """Scores on bin edges, at 1.0 and thresholds on and between edges: the estimate's population per
    bin is exactly the count of scores at or above the threshold in that bin."""
    rng = np.random.default_rng(2)
    population = np.concatenate([rng.random(500), np.array(DEFAULT_EDGES), [1.0, 1.0, 0.0]])
    picked = rng.choice(len(population), 120, replace=False)
    truth = (rng.random(120) < population[picked]).astype(float)
    for threshold in (0.0, 0.2, 0.25, 0.3, 0.95, 1.0):
        estimate = stratified_precision(population[picked], truth, population, threshold)
        above = population >= threshold
        assert estimate.n_detections == int(above.sum())
        sizes = np.bincount(score_bins(population[above]), minlength=10)
        keep = population[picked] >= threshold
        bins = score_bins(population[picked][keep])
        sampled = np.bincount(bins, minlength=10)
        hits = np.bincount(bins, weights=truth[keep], minlength=10)
        seen = sampled > 0
        if not seen.any():
            assert estimate.precision is None
            continue
        expected = np.sum(sizes[seen] / sizes[seen].sum() * hits[seen] / sampled[seen])
        assert estimate.precision == pytest.approx(expected)
