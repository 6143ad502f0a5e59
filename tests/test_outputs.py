"""Output writers: round trips of every format, submissions, detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dawnchorus.errors import OutputError
from dawnchorus.io import annotations, outputs

LABELS = ["gretit1", "eurstp1", "benfin1"]


def _table(files: tuple[str, ...] = ("/data/site A/rec_01.flac", "/data/soundscape_42.ogg"),
           windows: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {"file": file, "start_s": 5.0 * k, "end_s": 5.0 * (k + 1)}
        for file in files
        for k in range(windows)
    ]
    table = pd.DataFrame(rows)
    for label in LABELS:
        table[label] = rng.random(len(table)).astype(np.float32)
    return table


# ------------------------------------------------------------------ probability tables


def test_csv_round_trip(tmp_path: Path) -> None:
    table = _table()
    table.loc[1, "start_s"], table.loc[1, "end_s"] = 36000.125, 36005.125  # long-recording times
    path = outputs.write_probabilities_csv(table, tmp_path / "predictions.csv")
    back = outputs.read_probabilities(path)
    assert list(back.columns) == ["file", "start_s", "end_s", *LABELS]
    assert len(back) == len(table)
    assert list(back["file"]) == list(table["file"])
    np.testing.assert_array_equal(back[["start_s", "end_s"]], table[["start_s", "end_s"]])
    assert (back[LABELS].dtypes == np.float32).all()
    np.testing.assert_allclose(back[LABELS], table[LABELS], atol=1e-6)


def test_parquet_round_trip_is_exact(tmp_path: Path) -> None:
    table = _table()
    path = outputs.write_probabilities_parquet(table, tmp_path / "predictions.parquet")
    back = outputs.read_probabilities(path)
    pd.testing.assert_frame_equal(back, outputs.validate_predictions(table), check_dtype=True)


def test_empty_table_round_trips(tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=["file", "start_s", "end_s", *LABELS])
    written = outputs.write_probabilities_parquet(empty, tmp_path / "e.parquet")
    back = outputs.read_probabilities(written)
    assert len(back) == 0 and list(back.columns) == ["file", "start_s", "end_s", *LABELS]


def test_bad_prediction_tables_are_named(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"missing column\(s\) start_s"):
        outputs.write_probabilities_csv(_table().drop(columns="start_s"), tmp_path / "a.csv")
    text = tmp_path / "text.csv"
    text.write_text("file,start_s,end_s,gretit1\nx.wav,0,5,high\n")
    with pytest.raises(OutputError, match=r"text\.csv: label column\(s\) gretit1 are not numeric"):
        outputs.read_probabilities(text)
    with pytest.raises(OutputError, match="unknown table format '.xlsx'"):
        outputs.read_probabilities(_touch(tmp_path / "t.xlsx"))
    with pytest.raises(OutputError, match="not found"):
        outputs.read_probabilities(tmp_path / "absent.parquet")
    with pytest.raises(OutputError, match=r"broken\.parquet: cannot read"):
        outputs.read_probabilities(_touch(tmp_path / "broken.parquet", "not parquet"))


def _touch(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------ BirdCLEF submissions


def test_birdclef2022_submission_rows_and_targets() -> None:
    table = _table(files=("/x/soundscape_1000170626.ogg",), windows=2)
    table[LABELS] = np.array([[0.9, 0.2, 0.5], [0.1, 0.7, 0.3]], dtype=np.float32)
    submission = outputs.birdclef2022_submission(table, ["gretit1", "benfin1"], [0.5, 0.4])
    assert list(submission.columns) == ["row_id", "target"]
    assert list(submission["row_id"]) == [
        "soundscape_1000170626_gretit1_5",
        "soundscape_1000170626_benfin1_5",
        "soundscape_1000170626_gretit1_10",
        "soundscape_1000170626_benfin1_10",
    ]
    assert submission["target"].dtype == bool
    assert list(submission["target"]) == [True, True, False, False]
    by_mapping = outputs.birdclef2022_submission(table, ["benfin1"], {"benfin1": 0.3})
    assert list(by_mapping["target"]) == [True, True]


def test_birdclef2022_submission_errors() -> None:
    with pytest.raises(OutputError, match="no column for amecro"):
        outputs.birdclef2022_submission(_table(), ["amecro"], 0.5)
    with pytest.raises(OutputError, match="2 values for 1 labels"):
        outputs.birdclef2022_submission(_table(), ["gretit1"], [0.5, 0.5])


def test_birdclef2023_submission() -> None:
    table = _table(windows=3)
    submission = outputs.birdclef2023_submission(table, LABELS)
    assert list(submission.columns) == ["row_id", *LABELS]
    assert list(submission["row_id"][:3]) == ["rec_01_5", "rec_01_10", "rec_01_15"]
    assert list(submission["row_id"][3:]) == [
        "soundscape_42_5", "soundscape_42_10", "soundscape_42_15",
    ]
    np.testing.assert_array_equal(submission[LABELS], table[LABELS])


# ------------------------------------------------------------------ detections


def _single_label_table(probabilities: list[float], hop_s: float = 5.0) -> pd.DataFrame:
    starts = np.arange(len(probabilities)) * hop_s
    return pd.DataFrame(
        {
            "file": "r.wav",
            "start_s": starts,
            "end_s": starts + 5.0,
            "gretit1": np.array(probabilities, dtype=np.float32),
        }
    )


def test_detections_apply_per_label_thresholds() -> None:
    table = _table(files=("a.wav",), windows=2)
    table[LABELS] = np.array([[0.9, 0.3, 0.6], [0.2, 0.5, 0.1]], dtype=np.float32)
    found = outputs.detections(table, LABELS, [0.5, 0.5, 0.7])
    assert list(found.columns) == ["file", "start_s", "end_s", "label", "confidence"]
    assert found[["start_s", "label"]].values.tolist() == [[0.0, "gretit1"], [5.0, "eurstp1"]]
    assert found["confidence"].tolist() == pytest.approx([0.9, 0.5])
    assert len(outputs.detections(table, LABELS, 0.95)) == 0


def test_detections_merge_consecutive_windows_keeping_the_highest_confidence() -> None:
    table = _single_label_table([0.6, 0.9, 0.7, 0.1, 0.8])
    single = outputs.detections(table, ["gretit1"], 0.5)
    assert len(single) == 4
    merged = outputs.detections(table, ["gretit1"], 0.5, merge=True)
    assert merged[["start_s", "end_s"]].values.tolist() == [[0.0, 15.0], [20.0, 25.0]]
    assert merged["confidence"].tolist() == pytest.approx([0.9, 0.8])


def test_detections_merge_overlapping_windows_but_not_across_files_or_labels() -> None:
    overlapping = _single_label_table([0.6, 0.7, 0.2, 0.2, 0.9], hop_s=2.5)
    merged = outputs.detections(overlapping, ["gretit1"], 0.5, merge=True)
    assert merged[["start_s", "end_s"]].values.tolist() == [[0.0, 7.5], [10.0, 15.0]]
    table = _table(files=("a.wav", "b.wav"), windows=2)
    table[LABELS] = np.float32(0.9)
    merged = outputs.detections(table, LABELS, 0.5, merge=True)
    assert len(merged) == 6  # one span per file and label
    assert set(zip(merged["file"], merged["label"], strict=True)) == {
        (f, label) for f in ("a.wav", "b.wav") for label in LABELS
    }
    assert (merged["end_s"] == 10.0).all()


# ------------------------------------------------------------------ Raven and Audacity


def _detections_of_one_file() -> pd.DataFrame:
    table = _single_label_table([0.61234, 0.9, 0.1, 0.75])
    table["eurstp1"] = np.array([0.1, 0.55, 0.1, 0.1], dtype=np.float32)
    return outputs.detections(table, ["gretit1", "eurstp1"], 0.5)


def test_raven_table_round_trip(tmp_path: Path) -> None:
    found = _detections_of_one_file()
    path = outputs.write_raven_table(
        found, tmp_path / "r.selections.txt", high_freq=12000, common_names={"gretit1": "Great Tit"}
    )
    header = path.read_text().splitlines()[0].split("\t")
    assert header == list(outputs.RAVEN_COLUMNS)
    back = annotations.read_raven_table(path)
    assert len(back) == len(found) == 4
    assert back["Selection"].tolist() == [1, 2, 3, 4]
    assert set(back["View"]) == {"Spectrogram 1"} and set(back["Channel"]) == {1}
    np.testing.assert_array_equal(back["Begin Time (s)"], found["start_s"])
    np.testing.assert_array_equal(back["End Time (s)"], found["end_s"])
    assert back["Species Code"].tolist() == found["label"].tolist()
    assert back["Common Name"].tolist() == ["Great Tit", "eurstp1", "Great Tit", "Great Tit"]
    np.testing.assert_allclose(back["Confidence"], found["confidence"], atol=5e-5)
    assert set(back["Low Freq (Hz)"]) == {0.0} and set(back["High Freq (Hz)"]) == {12000.0}
    assert set(back["Begin Path"]) == {"r.wav"}
    np.testing.assert_array_equal(back["File Offset (s)"], found["start_s"])


def test_raven_table_feeds_back_into_window_labels(tmp_path: Path) -> None:
    path = outputs.write_raven_table(_detections_of_one_file(), tmp_path / "r.selections.txt")
    frame = annotations.raven_to_window_labels(path, ["gretit1", "eurstp1"], duration_s=20.0)
    assert set(frame.index.get_level_values("audio_id")) == {"r"}
    np.testing.assert_array_equal(frame.to_numpy(), [[1, 0], [1, 1], [0, 0], [1, 0]])


def test_empty_raven_table_has_a_header_only(tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=list(outputs.DETECTION_COLUMNS))
    back = annotations.read_raven_table(outputs.write_raven_table(empty, tmp_path / "e.txt"))
    assert list(back.columns) == list(outputs.RAVEN_COLUMNS) and len(back) == 0


def test_raven_seconds_and_fields_keep_a_tab_separated_row_whole() -> None:
    assert [outputs.seconds_text(v) for v in (5, 2.25, 1 / 3, 36005.125, 0.0)] == [
        "5.0", "2.25", "0.333333", "36005.125", "0.0"]
    assert outputs.clean_field("Great\ttit\r\nsong") == "Great tit song"
    assert outputs.clean_field(3.5) == "3.5"


def test_raven_writer_refuses_several_files_and_bad_bands(tmp_path: Path) -> None:
    table = _table(files=("a.wav", "b.wav"), windows=1)
    found = outputs.detections(table, LABELS, 0.0)
    with pytest.raises(OutputError, match="one file expected"):
        outputs.write_raven_table(found, tmp_path / "x.txt")
    with pytest.raises(OutputError, match="low_freq < high_freq"):
        outputs.write_raven_table(found[found["file"] == "a.wav"], tmp_path / "x.txt", 9000, 8000)
    assert not (tmp_path / "x.txt").exists()


def test_audacity_labels_round_trip(tmp_path: Path) -> None:
    found = _detections_of_one_file()
    path = outputs.write_audacity_labels(found, tmp_path / "r.txt")
    first = path.read_text().splitlines()[0]
    assert first == "0.000000\t5.000000\tgretit1;0.6123"
    back = annotations.read_audacity_labels(path)
    assert len(back) == len(found)
    np.testing.assert_array_equal(back["start_s"], found["start_s"])
    np.testing.assert_array_equal(back["end_s"], found["end_s"])
    assert back["label"].tolist() == found["label"].tolist()
    np.testing.assert_allclose(back["confidence"], found["confidence"], atol=5e-5)
