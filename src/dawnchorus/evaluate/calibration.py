"""From reviewed detections to numbers: per-species precision with a confidence interval, the
threshold that reaches a target precision, and a logistic calibration of score -> P(true detection).

Pure math on arrays (numpy, scikit-learn imported only where a calibration is fitted); reading the
verdict store and the run folder is the caller's job (``dawnchorus calibrate``, ``report``).

The review's random queue draws items per species from each bin of scores (ten equal bins over
[0, 1], as :data:`dawnchorus.io.verdicts.SCORE_BIN_EDGES`), so high-score bins, where most detections
are, and rare low-score bins are both reviewed. Such a sample is not a simple random sample of the
detections: precision is the **stratified** estimate, each bin weighted by its share of the detections
(the population: every window's score for the species at or above the threshold), and a verified
item stands for ``N_h / n_h`` detections of its bin. The interval is **Wilson's** on the stratified
estimate's effective sample size (Kish: ``n_eff = p (1 - p) / var``, ``var`` the stratified variance
with the finite-population correction), so one bin gives exactly Wilson's interval and a fully
reviewed population gives the exact precision. Bins holding detections but no verdict are left out
of the point estimate and widen the interval to what they could hold (all false, all true).

The logistic calibration is fitted on every verdict of a species, from any queue: each queue
chooses items by score (or recording), never by the truth, and selection on the score does not bias
P(true | score).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit, logit

from dawnchorus.errors import EvaluationError

# Ten equal score bins over [0, 1], as the review app's random queue draws them
# (dawnchorus.io.verdicts.SCORE_BIN_EDGES; tests/test_calibration.py checks they agree).
DEFAULT_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
# Scores are clipped this far from 0 and 1 before their logit is taken (float32 sigmoid outputs
# reach exactly 0 and 1).
SCORE_EPS = 1e-6
# Fewest verdicts of each kind (true, false) a calibration is fitted on.
MIN_PER_CLASS = 2


@dataclass(frozen=True)
class PrecisionEstimate:
    """The precision of one species' detections at a threshold, estimated from a stratified sample.

    ``n_verified``: verdicts at or above the threshold; ``n_detections``: the detections (population);
    ``coverage``: the share of detections in bins with at least one verdict (1.0: every bin seen).
    ``precision`` is None when no detection was verified (``low``/``high`` are then 0 and 1)."""

    precision: float | None
    low: float
    high: float
    n_verified: int
    n_detections: int
    coverage: float
    confidence: float = 0.95


@dataclass(frozen=True)
class ThresholdChoice:
    """The lowest threshold whose estimated precision reaches the target (``reached``), or None.

    ``precision`` and ``n_verified`` are those at ``threshold`` when reached; otherwise the best
    estimated precision over the thresholds with enough verdicts (None if none has), and ``reason``
    says why no threshold reached the target."""

    threshold: float | None
    reached: bool
    precision: float | None
    n_verified: int
    reason: str = ""


@dataclass(frozen=True)
class LogisticCalibration:
    """``P(true detection | score) = sigmoid(slope * logit(score) + intercept)``, fitted on ``n`` verdicts."""

    slope: float
    intercept: float
    n: int

    def apply(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities for ``scores`` (any shape)."""
        return calibrate_scores(scores, self.slope, self.intercept)

    def as_dict(self) -> dict[str, float | int]:
        """Plain data for the model file."""
        return {key: (int(v) if key == "n" else float(v)) for key, v in asdict(self).items()}


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (``n`` may be an effective, non-whole
    sample size; ``inf`` gives the proportion itself). ``n == 0`` gives (0, 1)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    if math.isinf(n):
        return p, p
    from scipy.stats import norm  # imported here: predict applies calibrations without it

    z = float(norm.ppf(0.5 + confidence / 2))
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified_precision(
    verified_scores: Any,
    verified_true: Any,
    population_scores: Any,
    threshold: float = 0.0,
    edges: Any = DEFAULT_EDGES,
    confidence: float = 0.95,
) -> PrecisionEstimate:
    """Precision of the detections at ``threshold`` (population: ``population_scores >= threshold``)
    from verdicts on a sample drawn per score bin (``verified_true``: 1 a true detection, 0 a false
    one; unsure verdicts left out by the caller). See the module docstring for the estimator and its
    interval."""
    scores, truth = _verified(verified_scores, verified_true)
    return _stratified(scores, truth, _Population(population_scores, edges), threshold, confidence)


def _stratified(
    scores: np.ndarray, truth: np.ndarray, population: _Population, threshold: float, confidence: float = 0.95
) -> PrecisionEstimate:
    """:func:`stratified_precision` on checked verdicts and a binned population."""
    keep = scores >= threshold
    scores, truth = scores[keep], truth[keep]
    bins = score_bins(scores, population.edges)
    sizes = population.sizes_above(threshold)
    n_detections = int(sizes.sum())
    if n_detections == 0 or len(scores) == 0:
        return PrecisionEstimate(None, 0.0, 1.0, len(scores), n_detections, 0.0, confidence)
    sampled = np.bincount(bins, minlength=len(sizes)).astype(np.float64)
    hits = np.bincount(bins, weights=truth, minlength=len(sizes))
    # A verdict on a score outside the population's bins (a stale run) counts in its own bin's size.
    sizes = np.maximum(sizes, sampled)
    covered = sampled > 0
    coverage = float(sizes[covered].sum() / sizes.sum())
    weights = sizes[covered] / sizes[covered].sum()
    p_bin = hits[covered] / sampled[covered]
    precision = float(np.sum(weights * p_bin))
    finite = 1 - sampled[covered] / sizes[covered]  # the finite-population correction
    variance = float(np.sum(weights**2 * finite * p_bin * (1 - p_bin) / sampled[covered]))
    if variance > 0 and 0 < precision < 1:
        n_eff = precision * (1 - precision) / variance
    elif np.all(finite == 0):
        n_eff = math.inf  # every detection of every bin verified: the precision is known
    else:
        n_eff = float(sampled[covered].sum())  # every bin all true or all false: design effect 1
    low, high = wilson_interval(precision * n_eff, n_eff, confidence) if math.isfinite(n_eff) else (
        precision, precision
    )
    # Bins never sampled could hold only false or only true detections.
    low, high = low * coverage, high * coverage + (1 - coverage)
    return PrecisionEstimate(precision, low, high, len(scores), n_detections, coverage, confidence)


def threshold_for_precision(
    verified_scores: Any,
    verified_true: Any,
    population_scores: Any,
    target: float,
    min_count: int = 10,
    edges: Any = DEFAULT_EDGES,
) -> ThresholdChoice:
    """The lowest threshold (a verified score) whose stratified precision estimate (see
    :func:`stratified_precision`) is at least ``target`` with at least ``min_count`` verdicts at or
    above it. When none reaches the target, ``threshold`` is None and ``reason`` says whether too few
    verdicts or too low a precision stood in the way (the caller keeps the model's threshold)."""
    if not 0 < target <= 1:
        raise EvaluationError(f"target precision must be in (0, 1], got {target}")
    scores, truth = _verified(verified_scores, verified_true)
    population = _Population(population_scores, edges)  # sorted once for every candidate
    if len(scores) < min_count:
        return ThresholdChoice(
            None, False, None, len(scores), f"{len(scores)} verdicts, fewer than the {min_count} needed"
        )
    best: tuple[float, float, int] | None = None  # (precision, threshold, verdicts)
    for candidate in np.unique(scores):
        above = int(np.sum(scores >= candidate))
        if above < min_count:
            break
        estimate = _stratified(scores, truth, population, float(candidate))
        if estimate.precision is None:
            continue
        if estimate.precision >= target:
            return ThresholdChoice(float(candidate), True, estimate.precision, above)
        if best is None or estimate.precision > best[0]:
            best = (estimate.precision, float(candidate), above)
    if best is None:
        return ThresholdChoice(None, False, None, len(scores), f"no threshold keeps {min_count} verdicts")
    return ThresholdChoice(
        None, False, best[0], best[2],
        f"precision {best[0]:.2f} at best (threshold {best[1]:.3f}, {best[2]} verdicts above it)",
    )


def fit_logistic_calibration(
    scores: Any, true: Any, min_per_class: int = MIN_PER_CLASS
) -> LogisticCalibration:
    """Fit ``P(true | score) = sigmoid(a * logit(score) + b)`` on verdicts (scikit-learn's
    LogisticRegression, unpenalised, on the logit of the clipped score: Platt scaling of the logit).

    Raises :class:`EvaluationError` when it cannot be fitted or would not be a calibration: fewer
    than ``min_per_class`` true or false verdicts, or a slope <= 0 (higher scores not more often true).
    """
    from sklearn.linear_model import LogisticRegression

    scores, truth = _verified(scores, true)
    positives, negatives = int(truth.sum()), int(len(truth) - truth.sum())
    if min(positives, negatives) < min_per_class:
        raise EvaluationError(
            f"{positives} true and {negatives} false verdicts; a calibration needs {min_per_class} of each"
        )
    features = logit(np.clip(scores, SCORE_EPS, 1 - SCORE_EPS)).reshape(-1, 1)
    fitted = LogisticRegression(C=np.inf, max_iter=1000).fit(features, truth.astype(int))
    slope, intercept = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])
    if not slope > 0:
        raise EvaluationError(f"higher scores are not more often true (fitted slope {slope:.3g})")
    return LogisticCalibration(slope, intercept, len(truth))


def calibrate_scores(scores: Any, slope: Any, intercept: Any) -> np.ndarray:
    """``sigmoid(slope * logit(score) + intercept)``, broadcast (a (windows, labels) table with one
    slope and intercept per label); where a slope is NaN the score is returned unchanged."""
    scores = np.asarray(scores, dtype=np.float64)
    slope = np.asarray(slope, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    calibrated = expit(slope * logit(np.clip(scores, SCORE_EPS, 1 - SCORE_EPS)) + intercept)
    return np.where(np.isnan(slope), scores, calibrated)


def score_bins(scores: Any, edges: Any = DEFAULT_EDGES) -> np.ndarray:
    """The bin of ``edges`` each score falls in (scores at or above the last edge in the last bin,
    below the first in the first)."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(scores, dtype=np.float64), side="right") - 1
    return np.clip(index, 0, len(edges) - 2)


class _Population:
    """One species' scores (the population of its detections at any threshold), sorted, with where
    each bin of ``edges`` starts, so the bins' sizes above a threshold take one search."""

    def __init__(self, scores: Any, edges: Any) -> None:
        self.scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
        self.edges = np.asarray(edges, dtype=np.float64)
        inner = np.searchsorted(self.scores, self.edges[1:-1], side="left")  # as score_bins assigns them
        self.bounds = np.concatenate([[0], inner, [len(self.scores)]])

    def sizes_above(self, threshold: float) -> np.ndarray:
        """How many scores at or above ``threshold`` each bin holds."""
        first = np.searchsorted(self.scores, threshold, side="left")
        return np.clip(self.bounds[1:] - np.maximum(self.bounds[:-1], first), 0, None).astype(np.float64)


def _verified(scores: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(true, dtype=np.float64).reshape(-1)
    if scores.shape != truth.shape:
        raise EvaluationError(f"{len(scores)} scores but {len(truth)} verdicts")
    if not np.all(np.isin(truth, (0.0, 1.0))):
        raise EvaluationError("verdicts must be 1 (true detection) or 0 (false)")
    return scores, truth
