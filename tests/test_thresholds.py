"""Threshold tuning on validation windows (dawnchorus.evaluate.thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from dawnchorus.errors import EvaluationError
from dawnchorus.evaluate import metrics, thresholds

# Hand example: class "a" has one positive, class "b" none.
HAND_TRUTH = np.array([[1, 0], [0, 0], [0, 0]])
HAND_SCORES = np.array([[0.2, 1.0], [0.9, 0.1], [0.1, 0.3]])


def test_tune_thresholds_finds_the_separating_threshold() -> None:
    rng = np.random.default_rng(6)
    truth = (rng.random((300, 4)) < 0.3).astype(int)
    # Positives score in [0.62, 0.9], negatives in [0.1, 0.38]: thresholds 0.4..0.6 separate.
    noise = rng.random(truth.shape)
    scores = np.where(truth == 1, 0.62 + 0.28 * noise, 0.1 + 0.28 * noise)
    global_threshold, per_class = thresholds.tune_thresholds(truth, scores)
    assert 0.38 < global_threshold <= 0.62
    assert global_threshold == pytest.approx(0.5)  # middle of the tied plateau 0.4 ... 0.6
    assert np.all((per_class > 0.38) & (per_class <= 0.62))
    binary = (scores >= per_class[None, :]).astype(int)
    assert metrics.birdclef2022_score(truth, binary)["f1_macro"] == 1.0


def test_tune_thresholds_gives_low_support_classes_the_global_threshold() -> None:
    rng = np.random.default_rng(7)
    truth = (rng.random((200, 3)) < 0.4).astype(int)
    truth[:, 2] = 0
    truth[:2, 2] = 1  # only two positives: below min_support=3
    scores = np.where(truth == 1, 0.85, 0.3) + 0.02 * rng.random(truth.shape)
    scores[:, 0] = np.where(truth[:, 0] == 1, 0.25, 0.1)  # class 0 separates only near 0.2
    global_threshold, per_class = thresholds.tune_thresholds(truth, scores, min_support=3)
    assert per_class[2] == global_threshold
    assert per_class[0] == pytest.approx(0.2)  # middle of its own plateau 0.15 ... 0.25
    assert 0.32 < per_class[1] <= 0.85
    _, relaxed = thresholds.tune_thresholds(truth, scores, min_support=2)
    assert 0.32 < relaxed[2] <= 0.85


def test_tune_thresholds_rejects_an_empty_grid() -> None:
    with pytest.raises(EvaluationError, match="grid"):
        thresholds.tune_thresholds(HAND_TRUTH, HAND_SCORES, grid=[])
