"""Scores of per-window predictions against labelled soundscapes.

The three BirdCLEF competition metrics, reproduced from their Kaggle definitions:

- **2024/2025 - macro ROC-AUC** (:func:`macro_roc_auc`): sklearn ``roc_auc_score(average="macro")``
  over the classes that have at least one positive window (Kaggle's ``birdclef-roc-auc`` metric).
- **2023 - padded cmAP** (:func:`padded_cmap`): append ``padding`` rows of all-ones to both truth
  and predictions, then sklearn ``average_precision_score(average="macro")``. The padding gives
  every class a positive, so classes absent from the truth are scored too.
- **2022** (:func:`birdclef2022_score`): Kaggle scored a "weighted classification accuracy" over
  the scored species, with weights such that every species has the same total weight and, within
  a species, true positives and true negatives weigh the same; that is the mean over species of
  the balanced accuracy. The host named macro F1 as its closest offline analogue; the version
  shared on the competition forum computes, per species, ``F1 = 2TP / (2TP + FP + FN)`` over all
  windows (1.0 when the species is neither present nor predicted) and averages over species.

Arrays: ``y_true`` is ``(n_windows, n_classes)`` in {0, 1}; ``y_score`` the same shape with
probabilities; a window is a detection when its probability is ``>= threshold``. Reading label
files into window truth is :mod:`dawnchorus.io.annotations`; choosing thresholds is
:mod:`dawnchorus.evaluate.thresholds`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from dawnchorus.errors import EvaluationError
from dawnchorus.io.annotations import TIME_DECIMALS, load_truth, match_recordings, window_keys_as_columns
from dawnchorus.io.outputs import (
    KEY_COLUMNS,
    Thresholds,
    threshold_vector,
    validate_predictions,
)

# --------------------------------------------------------------------------------------------
# array checks


def as_truth_and_scores(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert ``(y_true, y_score)``: ``(n_windows, n_classes)`` int64 0/1 and float64.

    A 1-D pair is one class. Raises :class:`EvaluationError` for mismatched shapes, no windows,
    truth other than 0/1, or non-finite scores.
    """
    truth = np.asarray(y_true)
    scores = np.asarray(y_score, dtype=np.float64)
    if truth.ndim == 1:
        truth = truth[:, None]
    if scores.ndim == 1:
        scores = scores[:, None]
    if truth.ndim != 2 or truth.shape != scores.shape:
        raise EvaluationError(
            f"y_true {np.shape(y_true)} and y_score {np.shape(y_score)} must be the same "
            "(n_windows, n_classes) shape"
        )
    if truth.shape[0] == 0:
        raise EvaluationError("no windows to score (y_true is empty)")
    if not np.isin(truth, (0, 1)).all():
        raise EvaluationError("y_true must contain only 0 and 1")
    if not np.isfinite(scores).all():
        raise EvaluationError("y_score contains NaN or infinite values")
    return truth.astype(np.int64), scores


def f1_per_class(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-class ``F1 = 2TP / (2TP + FP + FN)`` of binary arrays; 1.0 for a class neither present
    nor predicted (the BirdCLEF 2022 forum convention)."""
    return _f1_per_class(_confusion_counts(truth, predicted))


def _confusion_counts(truth: np.ndarray, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class TP, FP, FN, TN counts of binary arrays."""
    truth = truth.astype(bool)
    predicted = predicted.astype(bool)
    return {
        "tp": (truth & predicted).sum(axis=0),
        "fp": (~truth & predicted).sum(axis=0),
        "fn": (truth & ~predicted).sum(axis=0),
        "tn": (~truth & ~predicted).sum(axis=0),
    }


def _f1_per_class(counts: dict[str, np.ndarray]) -> np.ndarray:
    """``2TP / (2TP + FP + FN)``; 1.0 for a class neither present nor predicted."""
    denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * counts["tp"] / np.maximum(denominator, 1), 1.0)
    return f1.astype(np.float64)


def _balanced_accuracy_per_class(counts: dict[str, np.ndarray]) -> np.ndarray:
    """Mean of recall on positives and recall on negatives, over those a class has."""
    positives = counts["tp"] + counts["fn"]
    negatives = counts["tn"] + counts["fp"]
    sensitivity = counts["tp"] / np.maximum(positives, 1)
    specificity = counts["tn"] / np.maximum(negatives, 1)
    weights = (positives > 0).astype(np.float64) + (negatives > 0)
    total = np.where(positives > 0, sensitivity, 0.0) + np.where(negatives > 0, specificity, 0.0)
    return total / np.maximum(weights, 1)


# --------------------------------------------------------------------------------------------
# competition metrics


def roc_auc_classes(truth: np.ndarray) -> np.ndarray:
    """Which classes (columns of binary ``truth``, ``(items, classes)``) have both positive and
    negative items: those a ROC-AUC is defined for."""
    positives = np.asarray(truth).sum(axis=0)
    return (positives > 0) & (positives < len(truth))


def macro_roc_auc(y_true: Any, y_score: Any) -> float:
    """BirdCLEF 2024/2025 metric: macro ROC-AUC over classes with at least one positive.

    Classes without positives are skipped, as Kaggle does; classes without negatives are skipped
    too (their ROC-AUC is undefined; Kaggle's scorer would fail on them). Raises
    :class:`EvaluationError` when no class has both.
    """
    truth, scores = as_truth_and_scores(y_true, y_score)
    scored = roc_auc_classes(truth)
    if not scored.any():
        raise EvaluationError(
            "ROC-AUC is undefined: no class has both positive and negative windows"
        )
    return float(roc_auc_score(truth[:, scored], scores[:, scored], average="macro"))


def padded_cmap(y_true: Any, y_score: Any, padding: int = 5) -> float:
    """BirdCLEF 2023 metric: macro average precision after appending ``padding`` all-ones rows.

    The padding rows (truth 1, prediction 1 for every class) give every class a positive and
    soften the score of rare classes; classes absent from the truth are therefore scored.
    """
    if int(padding) != padding or padding < 0:
        raise EvaluationError(f"padding must be a non-negative integer, got {padding!r}")
    truth, scores = as_truth_and_scores(y_true, y_score)
    if padding == 0 and (truth.sum(axis=0) == 0).any():
        raise EvaluationError("cmAP without padding is undefined for classes without positives")
    ones = np.ones((int(padding), truth.shape[1]))
    padded_truth = np.concatenate([truth, ones])
    padded_scores = np.concatenate([scores, ones])
    return float(average_precision_score(padded_truth, padded_scores, average="macro"))


def birdclef2022_score(y_true: Any, y_pred_binary: Any) -> dict[str, Any]:
    """BirdCLEF 2022 scores of binary predictions (see the module docstring for both).

    Returns ``balanced_accuracy_macro`` (the Kaggle leaderboard metric: mean over species of the
    balanced accuracy), ``f1_macro`` (mean over species of the per-species F1, the offline
    analogue), and the per-class arrays ``balanced_accuracy_per_class`` and ``f1_per_class``.
    A species without positive windows has balanced accuracy = its specificity.
    """
    truth, predicted = as_truth_and_scores(y_true, y_pred_binary)
    if not np.isin(predicted, (0, 1)).all():
        raise EvaluationError("y_pred_binary must contain only 0 and 1 (apply thresholds first)")
    counts = _confusion_counts(truth, predicted)
    f1 = _f1_per_class(counts)
    balanced = _balanced_accuracy_per_class(counts)
    return {
        "f1_macro": float(f1.mean()),
        "balanced_accuracy_macro": float(balanced.mean()),
        "f1_per_class": f1,
        "balanced_accuracy_per_class": balanced,
    }


# --------------------------------------------------------------------------------------------
# per-class table


def _safe_binary_metric(metric: Any, truth: np.ndarray, scores: np.ndarray) -> float:
    if truth.min() == truth.max():
        return math.nan
    return float(metric(truth, scores))


def per_class_table(
    y_true: Any, y_score: Any, labels: Sequence[str], thresholds: Thresholds
) -> pd.DataFrame:
    """One row per label: ``label, support, precision, recall, f1, ap, roc_auc, threshold``.

    ``support`` counts positive windows. Precision is NaN when nothing was predicted, recall,
    AP and ROC-AUC are NaN when undefined (no positives, or no negatives for ROC-AUC); F1 is 1.0
    for a label neither present nor predicted, as in :func:`birdclef2022_score`.
    """
    truth, scores = as_truth_and_scores(y_true, y_score)
    labels = [str(label) for label in labels]
    if len(labels) != truth.shape[1]:
        raise EvaluationError(f"{len(labels)} labels for {truth.shape[1]} score columns")
    cutoffs = threshold_vector(thresholds, labels)
    counts = _confusion_counts(truth, scores >= cutoffs[None, :])
    predicted = counts["tp"] + counts["fp"]
    support = counts["tp"] + counts["fn"]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, counts["tp"] / np.maximum(predicted, 1), np.nan)
        recall = np.where(support > 0, counts["tp"] / np.maximum(support, 1), np.nan)
    ap = [
        float(average_precision_score(truth[:, k], scores[:, k])) if support[k] else math.nan
        for k in range(len(labels))
    ]
    auc = [
        _safe_binary_metric(roc_auc_score, truth[:, k], scores[:, k]) for k in range(len(labels))
    ]
    return pd.DataFrame(
        {
            "label": labels,
            "support": support.astype(np.int64),
            "precision": precision,
            "recall": recall,
            "f1": _f1_per_class(counts),
            "ap": ap,
            "roc_auc": auc,
            "threshold": cutoffs,
        }
    )


# --------------------------------------------------------------------------------------------
# matching predictions to truth and evaluating


def align_predictions(
    predictions: pd.DataFrame, truth: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match prediction rows to truth windows on ``(audio_id, end_s)``.

    ``audio_id`` comes from each prediction's ``file`` stem (see :func:`match_recordings`).
    Returns ``(predictions, truth)`` restricted to the truth's windows, in the same order, both
    with an ``audio_id`` column. Raises :class:`EvaluationError` naming every recording of the
    truth that has no predictions, and windows of a predicted recording that are missing.
    """
    predictions = validate_predictions(predictions, probability_dtype=np.float64)
    truth = window_keys_as_columns(truth)
    truth_ids = set(truth["audio_id"])
    mapping = match_recordings(predictions["file"], truth_ids)
    absent = sorted(truth_ids - set(mapping.values()))
    if absent:
        raise EvaluationError(
            f"no predictions for {len(absent)} recording(s) of the truth: {', '.join(absent)}"
        )
    predictions = predictions[predictions["file"].isin(mapping)].copy()
    predictions.insert(0, "audio_id", predictions["file"].map(mapping))
    pred_keys = _keys(predictions)
    truth_keys = _keys(truth)
    if pred_keys.duplicated().any():
        recording, end = pred_keys[pred_keys.duplicated()].iloc[0].split("|")
        raise EvaluationError(f"predictions: window of {recording} ending at {end} s appears twice")
    position = pd.Series(np.arange(len(pred_keys)), index=pred_keys)
    matched = position.reindex(truth_keys)
    if matched.isna().any():
        lost = list(truth_keys[matched.isna().to_numpy()])
        shown = ", ".join(f"{key.split('|')[0]} at {key.split('|')[1]} s" for key in lost[:5])
        raise EvaluationError(
            f"predictions miss {len(lost)} window(s) of the truth (by end time): {shown}"
            + (" ..." if len(lost) > 5 else "")
        )
    aligned = predictions.iloc[matched.to_numpy(dtype=np.int64)].reset_index(drop=True)
    return aligned, truth.reset_index(drop=True)


def _keys(frame: pd.DataFrame) -> pd.Series:
    ends = frame["end_s"].astype(np.float64).round(TIME_DECIMALS)
    end_text = ends.map(lambda value: f"{value:.{TIME_DECIMALS}f}")
    return frame["audio_id"].astype(str) + "|" + end_text


def check_probabilities(
    table: pd.DataFrame, labels: Sequence[str], source: str = "predictions", row_names: str | None = None
) -> None:
    """Raise :class:`EvaluationError` naming the first NaN or infinite probability of ``labels``.

    The message names ``source``, the column, the recording and window and, with ``row_names``
    (``"line"`` for a CSV file: the header is line 1; ``"row"``: rows counted from 1), the row.
    """
    present = [label for label in labels if label in table.columns]
    values = table[present].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    rows, columns = np.nonzero(bad)
    row, column = int(rows[0]), int(columns[0])
    value = values[row, column]
    record = table.iloc[row]
    where = ""
    if row_names is not None:
        where = f"line {row + 2}: " if row_names == "line" else f"row {row + 1}: "
    others = f" ({len(rows)} non-finite probabilities in all)" if len(rows) > 1 else ""
    raise EvaluationError(
        f"{source}: {where}{present[column]} is {'NaN' if np.isnan(value) else value} for "
        f"{record['file']} at {float(record['start_s']):g}-{float(record['end_s']):g} s, "
        f"a probability must be a number{others}"
    )


def _json_number(value: Any) -> float | int | None:
    if isinstance(value, (np.integer, int)):
        return int(value)
    number = float(value)
    return None if math.isnan(number) else number


def evaluate(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    labels: Sequence[str],
    thresholds: Thresholds,
    scored_labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score per-window predictions against per-window truth; a JSON-serialisable summary.

    ``labels`` are the model's labels (``thresholds`` aligned with them, or a number/mapping);
    ``scored_labels`` restricts scoring to a subset (BirdCLEF 2022 scored 21 of 152). A scored
    label missing from the truth table counts as absent from every window. Keys:
    ``cmap_padded, roc_auc_macro (None if undefined), f1_macro_2022, balanced_accuracy,
    n_windows, n_recordings, scored_labels, unscored_truth_labels, per_class``.
    """
    labels = [str(label) for label in labels]
    scored = list(scored_labels) if scored_labels is not None else labels
    unknown = [label for label in scored if label not in labels]
    if unknown:
        raise EvaluationError(f"scored_labels not among the model labels: {', '.join(unknown)}")
    cutoffs = threshold_vector(thresholds, labels)[[labels.index(label) for label in scored]]
    aligned_predictions, aligned_truth = align_predictions(predictions, truth)
    missing = [label for label in scored if label not in aligned_predictions.columns]
    if missing:
        raise EvaluationError(f"predictions: no column for label(s) {', '.join(missing)}")
    check_probabilities(aligned_predictions, scored)
    y_score = aligned_predictions[scored].to_numpy(dtype=np.float64)
    y_true = np.column_stack(
        [
            aligned_truth[label].to_numpy() if label in aligned_truth.columns
            else np.zeros(len(aligned_truth))
            for label in scored
        ]
    ).astype(np.int64)
    return _summary(y_true, y_score, scored, cutoffs, aligned_truth, labels)


def _summary(
    y_true: np.ndarray,
    y_score: np.ndarray,
    scored: list[str],
    cutoffs: np.ndarray,
    aligned_truth: pd.DataFrame,
    labels: list[str],
) -> dict[str, Any]:
    try:
        roc_auc: float | None = macro_roc_auc(y_true, y_score)
    except EvaluationError:
        roc_auc = None
    score_2022 = birdclef2022_score(y_true, (y_score >= cutoffs[None, :]).astype(np.int64))
    table = per_class_table(y_true, y_score, scored, cutoffs)
    keys = ("audio_id", "end_s", *KEY_COLUMNS)
    truth_labels = [c for c in aligned_truth.columns if c not in keys]
    return {
        "cmap_padded": padded_cmap(y_true, y_score),
        "roc_auc_macro": roc_auc,
        "f1_macro_2022": score_2022["f1_macro"],
        "balanced_accuracy": score_2022["balanced_accuracy_macro"],
        "n_windows": int(len(y_true)),
        "n_recordings": int(aligned_truth["audio_id"].nunique()),
        "scored_labels": scored,
        "unscored_truth_labels": sorted(
            str(c) for c in truth_labels if c not in labels and aligned_truth[c].any()
        ),
        "per_class": [
            {key: str(value) if key == "label" else _json_number(value)
             for key, value in row.items()}
            for row in table.to_dict("records")
        ],
    }


def evaluate_files(
    predictions_path: str | Path,
    labels_path: str | Path,
    model: Any = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluate a prediction file against a label file (or Raven tables).

    ``model`` (a loaded model) supplies labels, per-class thresholds, scored labels and the window
    length; without it the labels are the prediction columns and the threshold is ``threshold``
    (0.5 by default). The result records which files and thresholds were used.
    """
    from dawnchorus.io.outputs import label_columns, read_probabilities

    predictions = read_probabilities(predictions_path, probability_dtype=np.float64)
    labels = list(model.labels) if model is not None else label_columns(predictions)
    window_s = (
        float(model.config.audio.clip_s)
        if model is not None
        else float((predictions["end_s"] - predictions["start_s"]).median())
    )
    scored = getattr(model, "scored_labels", None) if model is not None else None
    check_probabilities(predictions, scored or labels, source=str(predictions_path),
                        row_names="line" if Path(predictions_path).suffix.lower() == ".csv" else "row")
    truth = load_truth(labels_path, predictions, labels, window_s)
    if threshold is not None:
        thresholds: Any = float(threshold)
    elif model is not None:
        thresholds = model.class_thresholds
    else:
        thresholds = 0.5
    result = evaluate(predictions, truth, labels, thresholds, scored_labels=scored)
    result["predictions_path"] = str(Path(predictions_path).resolve())
    result["labels_path"] = str(Path(labels_path).resolve())
    result["threshold_source"] = (
        "global option" if threshold is not None else "model" if model is not None else "default 0.5"
    )
    return result
