"""Metrics: BirdCLEF 2022/2023/2024 scores (hand examples, sklearn) and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from dawnchorus.errors import EvaluationError
from dawnchorus.evaluate import metrics
from dawnchorus.io import annotations

# Hand example: class "a" has one positive, class "b" none.
HAND_TRUTH = np.array([[1, 0], [0, 0], [0, 0]])
HAND_SCORES = np.array([[0.2, 1.0], [0.9, 0.1], [0.1, 0.3]])


def _random_problem(seed: int = 0, n: int = 400, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, classes)) < 0.25).astype(int)
    scores = np.clip(truth * 0.3 + rng.random((n, classes)) * 0.7, 0, 1)
    return truth, scores


# ------------------------------------------------------------------ competition metrics


def test_perfect_predictions_score_one_on_every_metric() -> None:
    truth, _ = _random_problem()
    truth[:, -1] = 0  # a class with no positives at all
    scores = truth.astype(float)
    assert metrics.macro_roc_auc(truth, scores) == 1.0
    assert metrics.padded_cmap(truth, scores) == 1.0
    result = metrics.birdclef2022_score(truth, truth)
    assert result["f1_macro"] == 1.0
    assert result["balanced_accuracy_macro"] == 1.0
    np.testing.assert_array_equal(result["f1_per_class"], np.ones(truth.shape[1]))


def test_random_scores_give_roc_auc_near_one_half() -> None:
    rng = np.random.default_rng(1)
    truth = (rng.random((4000, 8)) < 0.3).astype(int)
    assert metrics.macro_roc_auc(truth, rng.random(truth.shape)) == pytest.approx(0.5, abs=0.03)


def test_roc_auc_matches_sklearn_on_the_classes_with_positives() -> None:
    truth, scores = _random_problem(seed=2)
    truth[:, 1] = 0  # no positives: skipped (Kaggle 2024)
    truth[:, 3] = 1  # no negatives: undefined, skipped
    kept = [0, 2, 4, 5]
    expected = roc_auc_score(truth[:, kept], scores[:, kept], average="macro")
    assert metrics.macro_roc_auc(truth, scores) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_skips_a_class_without_positives_but_padded_cmap_counts_it() -> None:
    # Hand values: "a" has positive 0.2 against negatives 0.9 and 0.1 -> AUC 1/2. "b" is skipped.
    assert metrics.macro_roc_auc(HAND_TRUTH, HAND_SCORES) == pytest.approx(0.5)
    # Padded cmAP (5 rows of ones):
    #   a: five 1.0 positives (P=1, R=5/6), 0.9 negative, 0.2 positive (P=6/7, R=1)
    #      AP = 5/6 * 1 + 1/6 * 6/7 = 41/42
    #   b: the 1.0 negative ties with the five positives: P=5/6 at R=1 -> AP = 5/6
    #   macro = (41/42 + 35/42) / 2 = 19/21
    assert metrics.padded_cmap(HAND_TRUTH, HAND_SCORES) == pytest.approx(19 / 21, abs=1e-12)
    # The absent class moves cmAP but not ROC-AUC.
    quieter = HAND_SCORES.copy()
    quieter[:, 1] = 0.0
    assert metrics.padded_cmap(HAND_TRUTH, quieter) == pytest.approx((41 / 42 + 1) / 2)
    assert metrics.macro_roc_auc(HAND_TRUTH, quieter) == pytest.approx(0.5)


def test_padded_cmap_equals_the_kaggle_recipe() -> None:
    truth, scores = _random_problem(seed=3)
    for padding in (1, 5):
        pad = np.ones((padding, truth.shape[1]))
        expected = average_precision_score(
            np.vstack([truth, pad]), np.vstack([scores, pad]), average="macro"
        )
        assert metrics.padded_cmap(truth, scores, padding=padding) == pytest.approx(expected)


def test_padded_cmap_rejects_bad_padding() -> None:
    with pytest.raises(EvaluationError, match="padding"):
        metrics.padded_cmap(HAND_TRUTH, HAND_SCORES, padding=-1)
    with pytest.raises(EvaluationError, match="without padding"):
        metrics.padded_cmap(HAND_TRUTH, HAND_SCORES, padding=0)


def test_birdclef2022_hand_example() -> None:
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    predicted = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    result = metrics.birdclef2022_score(truth, predicted)
    # a: TP1 FN1 FP1 TN1 -> F1 = 2/4, BA = (1/2 + 1/2)/2 = 1/2
    # b: TP1 TN3         -> F1 = 1,   BA = 1
    # c: no positives, FP1 TN3 -> F1 = 0, BA = specificity 3/4
    np.testing.assert_allclose(result["f1_per_class"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(result["balanced_accuracy_per_class"], [0.5, 1.0, 0.75])
    assert result["f1_macro"] == pytest.approx(0.5)
    assert result["balanced_accuracy_macro"] == pytest.approx(0.75)


def test_birdclef2022_matches_sklearn_per_class() -> None:
    truth, scores = _random_problem(seed=4)
    predicted = (scores >= 0.5).astype(int)
    result = metrics.birdclef2022_score(truth, predicted)
    for k in range(truth.shape[1]):
        assert result["f1_per_class"][k] == pytest.approx(
            f1_score(truth[:, k], predicted[:, k], zero_division=1.0)
        )
        assert result["balanced_accuracy_per_class"][k] == pytest.approx(
            balanced_accuracy_score(truth[:, k], predicted[:, k])
        )


def test_absent_species_scores_one_only_when_never_predicted() -> None:
    truth = np.zeros((4, 1), dtype=int)
    assert metrics.birdclef2022_score(truth, truth)["f1_macro"] == 1.0
    one_false_alarm = np.array([[1], [0], [0], [0]])
    result = metrics.birdclef2022_score(truth, one_false_alarm)
    assert result["f1_macro"] == 0.0
    assert result["balanced_accuracy_macro"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("truth", "scores", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "same"),
        (np.full((3, 2), 2), np.zeros((3, 2)), "only 0 and 1"),
        (np.zeros((3, 2)), np.full((3, 2), np.nan), "NaN"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
    ],
)
def test_bad_arrays_are_rejected(truth: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        metrics.padded_cmap(truth, scores)


def test_roc_auc_without_any_scorable_class_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="undefined"):
        metrics.macro_roc_auc(np.zeros((4, 2)), np.zeros((4, 2)))


def test_f1_per_class_matches_sklearn() -> None:
    truth, scores = _random_problem(seed=8, n=300, classes=5)
    predicted = (scores >= 0.5).astype(int)
    expected = [f1_score(truth[:, k], predicted[:, k]) for k in range(truth.shape[1])]
    np.testing.assert_allclose(metrics.f1_per_class(truth, predicted), expected)
    absent = np.zeros((4, 1), dtype=int)
    assert metrics.f1_per_class(absent, absent)[0] == 1.0
    assert metrics.f1_per_class(absent, np.ones((4, 1), dtype=int))[0] == 0.0


def test_binary_score_rejects_probabilities() -> None:
    with pytest.raises(EvaluationError, match="thresholds"):
        metrics.birdclef2022_score(HAND_TRUTH, HAND_SCORES)


# ------------------------------------------------------------------ per-class table


def test_per_class_table_values_match_sklearn() -> None:
    truth, scores = _random_problem(seed=5)
    labels = [f"sp{k}" for k in range(truth.shape[1])]
    thresholds = np.linspace(0.3, 0.8, truth.shape[1])
    table = metrics.per_class_table(truth, scores, labels, thresholds)
    assert list(table.columns) == [
        "label", "support", "precision", "recall", "f1", "ap", "roc_auc", "threshold",
    ]
    assert list(table["label"]) == labels
    for k, row in table.iterrows():
        predicted = scores[:, k] >= thresholds[k]
        assert row["support"] == truth[:, k].sum()
        assert row["recall"] == pytest.approx(predicted[truth[:, k] == 1].mean())
        assert row["precision"] == pytest.approx(truth[predicted, k].mean())
        assert row["f1"] == pytest.approx(f1_score(truth[:, k], predicted))
        assert row["ap"] == pytest.approx(average_precision_score(truth[:, k], scores[:, k]))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(truth[:, k], scores[:, k]))
        assert row["threshold"] == thresholds[k]


def test_per_class_table_marks_undefined_values_nan() -> None:
    table = metrics.per_class_table(HAND_TRUTH, HAND_SCORES, ["a", "b"], 0.95)
    absent = table.set_index("label").loc["b"]
    assert absent["support"] == 0
    assert np.isnan(absent["recall"]) and np.isnan(absent["ap"]) and np.isnan(absent["roc_auc"])
    assert absent["precision"] == 0.0  # predicted once (1.0 >= 0.95), wrongly
    assert np.isnan(table.set_index("label").loc["a", "precision"])  # never predicted


# ------------------------------------------------------------------ alignment and evaluate


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path




def _predictions(
    files: list[str], n_windows: int, labels: list[str], seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for file in files:
        for k in range(n_windows):
            rows.append({"file": file, "start_s": 5.0 * k, "end_s": 5.0 * (k + 1)})
    frame = pd.DataFrame(rows)
    for label in labels:
        frame[label] = rng.random(len(frame)).astype(np.float32)
    return frame


def _truth(ids: list[str], n_windows: int, labels: list[str], seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        [{"audio_id": i, "end_s": 5.0 * (k + 1)} for i in ids for k in range(n_windows)]
    )
    for label in labels:
        frame[label] = (rng.random(len(frame)) < 0.4).astype(np.uint8)
    return frame


def test_align_matches_file_stems_and_birdclef2021_ids() -> None:
    labels = ["a", "b"]
    files = ["/x/7019_COR_20190904.ogg", "/x/soundscape_9.ogg", "/x/extra.ogg"]
    predictions = _predictions(files, 4, labels)
    truth = _truth(["soundscape_9", "7019"], 3, labels).iloc[::-1]  # reversed order
    aligned_pred, aligned_truth = metrics.align_predictions(predictions, truth)
    assert len(aligned_pred) == len(aligned_truth) == 6
    assert list(aligned_pred["audio_id"]) == list(aligned_truth["audio_id"])
    assert list(aligned_pred["end_s"]) == list(aligned_truth["end_s"])
    first = aligned_pred.iloc[0]
    source = predictions[
        (predictions["file"] == files[0]) & (predictions["end_s"] == first["end_s"])
    ]
    assert first["a"] == source["a"].iloc[0]


def test_align_names_recordings_missing_from_predictions() -> None:
    predictions = _predictions(["/x/soundscape_1.ogg"], 3, ["a"])
    truth = _truth(["soundscape_1", "soundscape_2", "soundscape_3"], 3, ["a"])
    with pytest.raises(EvaluationError, match="2 recording.*soundscape_2, soundscape_3"):
        metrics.align_predictions(predictions, truth)


def test_align_names_missing_windows() -> None:
    predictions = _predictions(["/x/r1.wav"], 2, ["a"])
    truth = _truth(["r1"], 3, ["a"])
    with pytest.raises(EvaluationError, match="r1 at 15.000 s"):
        metrics.align_predictions(predictions, truth)


def test_evaluate_returns_json_ready_scores_that_match_the_metrics() -> None:
    labels = ["a", "b", "c"]
    predictions = _predictions(["/data/r1.flac", "/data/r2.flac"], 6, labels)
    truth = _truth(["r1", "r2"], 6, ["a", "b", "zzz"])  # no column "c"; "zzz" unknown to the model
    truth.loc[0, "zzz"] = 1
    result = metrics.evaluate(predictions, truth, labels, [0.3, 0.5, 0.7])
    json.dumps(result, allow_nan=False)
    y_true = np.column_stack([truth["a"], truth["b"], np.zeros(len(truth))]).astype(int)
    y_score = predictions[labels].to_numpy(dtype=np.float64)
    assert result["n_windows"] == 12 and result["n_recordings"] == 2
    assert result["cmap_padded"] == pytest.approx(metrics.padded_cmap(y_true, y_score))
    assert result["roc_auc_macro"] == pytest.approx(metrics.macro_roc_auc(y_true, y_score))
    expected = metrics.birdclef2022_score(y_true, (y_score >= [0.3, 0.5, 0.7]).astype(int))
    assert result["f1_macro_2022"] == pytest.approx(expected["f1_macro"])
    assert result["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy_macro"])
    assert [row["label"] for row in result["per_class"]] == labels
    assert result["per_class"][2]["support"] == 0 and result["per_class"][2]["ap"] is None
    assert result["unscored_truth_labels"] == ["zzz"]


def test_evaluate_scores_only_the_scored_labels() -> None:
    labels = ["a", "b", "c"]
    predictions = _predictions(["r1.ogg"], 8, labels)
    truth = _truth(["r1"], 8, labels)
    result = metrics.evaluate(predictions, truth, labels, {"a": 0.5, "b": 0.5, "c": 0.2},
                              scored_labels=["c"])
    assert result["scored_labels"] == ["c"]
    assert [row["threshold"] for row in result["per_class"]] == [0.2]
    with pytest.raises(EvaluationError, match="not among the model labels: d"):
        metrics.evaluate(predictions, truth, labels, 0.5, scored_labels=["d"])


def test_perfect_predictions_evaluate_to_one() -> None:
    labels = ["a", "b"]
    truth = _truth(["r1", "r2"], 5, labels)
    predictions = truth.rename(columns={"audio_id": "file"}).copy()
    predictions["file"] = predictions["file"] + ".wav"
    predictions.insert(1, "start_s", predictions["end_s"] - 5.0)
    predictions[labels] = predictions[labels].astype(np.float32)
    result = metrics.evaluate(predictions, truth, labels, 0.5)
    for key in ("cmap_padded", "roc_auc_macro", "f1_macro_2022", "balanced_accuracy"):
        assert result[key] == 1.0, key


def test_evaluate_accepts_truth_read_from_a_birdclef2021_label_file(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "test_labels.csv",
        "row_id,site,audio_id,seconds,birds\n"
        "7019_COR_5,COR,7019,5,nocall\n"
        "7019_COR_10,COR,7019,10,rucwar\n"
        "7019_COR_15,COR,7019,15,rucwar amerob\n",
    )
    truth = annotations.read_birdclef_labels(csv)
    predictions = pd.DataFrame(
        {
            "file": ["soundscapes/7019_COR_20190904.ogg"] * 4,
            "start_s": [0.0, 5.0, 10.0, 15.0],
            "end_s": [5.0, 10.0, 15.0, 20.0],
            "rucwar": [0.1, 0.8, 0.9, 0.2],
            "amerob": [0.2, 0.1, 0.7, 0.9],
        }
    )
    result = metrics.evaluate(predictions, truth, ["rucwar", "amerob"], 0.5)
    assert result["n_windows"] == 3
    assert result["f1_macro_2022"] == 1.0 and result["roc_auc_macro"] == 1.0


# ------------------------------------------------------------------ full precision and bad probabilities

# Four windows of one recording; class a's scores differ by 1e-8, below float32's resolution at 0.3
# (~3e-8): as float32, 0.3 and 0.30000001 tie and a's ROC-AUC drops from 0.75 to 0.5.
CLOSE_SCORES = {"a": [0.3, 0.30000001, 0.7, 0.70000001], "b": [0.1, 0.2, 0.3, 0.4]}
CLOSE_TRUTH = {"a": [0, 1, 0, 1], "b": [0, 1, 1, 0]}


def _close_case(tmp_path: Path) -> tuple[Path, Path]:
    ends = [5.0, 10.0, 15.0, 20.0]
    predictions = pd.DataFrame({"file": "rec.ogg", "start_s": [e - 5 for e in ends], "end_s": ends,
                                **CLOSE_SCORES})
    predictions.to_csv(tmp_path / "predictions.csv", index=False)  # full precision (repr digits)
    birds = [" ".join(label for label in CLOSE_TRUTH if CLOSE_TRUTH[label][k]) or "nocall"
             for k in range(4)]
    pd.DataFrame({"row_id": [f"rec_{e:g}" for e in ends], "audio_id": "rec", "seconds": ends,
                  "birds": birds}).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "predictions.csv", tmp_path / "labels.csv"


def test_scores_closer_than_float32_resolution_are_ranked_as_sklearn_ranks_them(tmp_path: Path) -> None:
    predictions, labels = _close_case(tmp_path)
    truth = np.column_stack(list(CLOSE_TRUTH.values()))
    scores = np.column_stack(list(CLOSE_SCORES.values()))
    expected = roc_auc_score(truth, scores, average="macro")
    assert expected == pytest.approx(0.625)
    assert roc_auc_score(truth, scores.astype(np.float32), average="macro") == pytest.approx(0.5)

    result = metrics.evaluate_files(predictions, labels)
    assert result["roc_auc_macro"] == pytest.approx(expected, abs=1e-12)
    assert result["cmap_padded"] == pytest.approx(
        average_precision_score(np.vstack([truth, np.ones((5, 2))]),
                                np.vstack([scores, np.ones((5, 2))]), average="macro"), abs=1e-12)
    frame = pd.read_csv(predictions)
    in_memory = metrics.evaluate(frame, annotations.read_birdclef_labels(labels), ["a", "b"], 0.5)
    assert in_memory["roc_auc_macro"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("suffix", "row"), [(".csv", "line 4"), (".parquet", "row 3")])
def test_a_nan_probability_is_named_by_file_column_and_row(tmp_path: Path, suffix: str, row: str) -> None:
    predictions, labels = _close_case(tmp_path)
    table = pd.read_csv(predictions)
    table.loc[2, "b"] = np.nan
    table.loc[3, "a"] = np.inf
    path = tmp_path / f"broken{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)
    expected = (rf"^{path}: {row}: b is NaN for rec.ogg at 10-15 s, a probability must be a number "
                r"\(2 non-finite probabilities in all\)$")
    with pytest.raises(EvaluationError, match=expected):
        metrics.evaluate_files(path, labels)
    truth = annotations.read_birdclef_labels(labels)
    with pytest.raises(EvaluationError, match=r"^predictions: b is NaN for rec.ogg at 10-15 s"):
        metrics.evaluate(table, truth, ["a", "b"], 0.5)
