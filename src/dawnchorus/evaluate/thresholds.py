"""Detection thresholds chosen on validation windows: one global threshold and one per class.

:func:`tune_thresholds` picks the thresholds that ``train`` stores in the model file and
``tune-thresholds`` rewrites. This module does not compute the competition scores
(:mod:`dawnchorus.evaluate.metrics`) or read label files (:mod:`dawnchorus.io.annotations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dawnchorus.errors import EvaluationError
from dawnchorus.evaluate.metrics import as_truth_and_scores, f1_per_class

# The grid searched: 0.05, 0.10, ..., 0.95.
DEFAULT_GRID = np.round(np.linspace(0.05, 0.95, 19), 4)


def tune_thresholds(
    y_true: Any,
    y_score: Any,
    min_support: int = 3,
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
) -> tuple[float, np.ndarray]:
    """Pick detection thresholds on validation windows.

    The global threshold maximises the **macro** F1 over all classes (each species weighs the
    same, as in BirdCLEF 2022; a class absent from the truth scores 1.0 only if never predicted,
    so false alarms on it count). Each class with at least ``min_support`` positive windows gets
    the threshold maximising its own F1; the others get the global threshold. Among tied grid
    values the middle one is taken. Returns ``(global_threshold, per_class_thresholds)``.
    """
    truth, scores = as_truth_and_scores(y_true, y_score)
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if grid.size == 0 or not np.isfinite(grid).all():
        raise EvaluationError("threshold grid must be a non-empty list of finite numbers")
    f1 = _f1_by_threshold(truth, scores, grid)
    global_threshold = _middle_of_best(f1.mean(axis=1), grid)
    per_class = np.full(truth.shape[1], global_threshold, dtype=np.float64)
    support = truth.sum(axis=0)
    for k in np.flatnonzero(support >= max(min_support, 1)):
        per_class[k] = _middle_of_best(f1[:, k], grid)
    return global_threshold, per_class


def _f1_by_threshold(truth: np.ndarray, scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(len(grid), n_classes) per-class F1 at each threshold of the grid."""
    rows = [f1_per_class(truth, scores >= cutoff) for cutoff in grid]
    return np.vstack(rows)


def _middle_of_best(values: np.ndarray, grid: np.ndarray) -> float:
    """The grid value in the middle of the best-scoring ones: robust when a plateau ties."""
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(grid[best[len(best) // 2]])
