"""Label formats: BirdCLEF 2021 label CSVs, Raven selection tables, Audacity labels, truth windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dawnchorus.errors import EvaluationError, OutputError
from dawnchorus.io import annotations

# ------------------------------------------------------------------ BirdCLEF label CSVs and Raven tables


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_birdclef_labels_multi_hot_with_nocall(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "test_labels.csv",
        "row_id,site,audio_id,seconds,birds\n"
        "7019_COR_5,COR,7019,5,nocall\n"
        "7019_COR_10,COR,7019,10,rucwar\n"
        "7019_COR_15,COR,7019,15,rucwar amerob\n"
        "7019_COR_15,COR,7019,15,grycat\n"
        "2782_SSW_5,SSW,2782,5,\n",
    )
    frame = annotations.read_birdclef_labels(csv)
    assert frame.index.names == ["audio_id", "end_s"]
    assert list(frame.columns) == ["amerob", "grycat", "rucwar"]
    assert list(frame.index) == [("2782", 5.0), ("7019", 5.0), ("7019", 10.0), ("7019", 15.0)]
    assert (frame.dtypes == np.uint8).all()
    np.testing.assert_array_equal(
        frame.to_numpy(), [[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]]
    )


def test_read_birdclef_labels_with_label_list_and_row_id_only(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "labels.csv",
        "row_id,site,seconds,birds\n7019_COR_5,COR,5,nocall\n7019_COR_10,COR,10,rucwar\n",
    )
    frame = annotations.read_birdclef_labels(csv, labels=["rucwar", "amerob"])
    assert list(frame.columns) == ["rucwar", "amerob"]
    assert set(frame.index.get_level_values("audio_id")) == {"7019"}
    assert frame["rucwar"].tolist() == [0, 1] and frame["amerob"].tolist() == [0, 0]
    with pytest.raises(EvaluationError, match="not in the label list: rucwar"):
        annotations.read_birdclef_labels(csv, labels=["amerob"])


def test_read_birdclef_labels_errors_name_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.csv", "audio_id,seconds\n1,5\n")
    with pytest.raises(EvaluationError, match=r"bad\.csv: missing column\(s\) birds"):
        annotations.read_birdclef_labels(bad)
    text = _write(tmp_path / "text.csv", "audio_id,seconds,birds\n1,five,nocall\n")
    with pytest.raises(EvaluationError, match=r"text\.csv: line 2: seconds 'five'"):
        annotations.read_birdclef_labels(text)
    with pytest.raises(EvaluationError, match="not found"):
        annotations.read_birdclef_labels(tmp_path / "absent.csv")


RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"
)


@pytest.mark.parametrize("bad_line", [2, 3])
def test_a_label_row_with_extra_fields_is_named_with_its_field_count(tmp_path: Path, bad_line: int) -> None:
    # pandas shifted a first ragged row's values into the wrong columns ("seconds 'extra' is not a
    # number") and stopped on a later one with a two-line tokenizer message.
    lines = ["rec_5,rec,5,aaa", "rec_10,rec,10,nocall", "rec_15,rec,15,bbb"]
    lines[bad_line - 2] += ",extra,more"
    path = _write(tmp_path / "labels.csv", "row_id,audio_id,seconds,birds\n" + "\n".join(lines) + "\n")
    expected = (rf"^{path}: line {bad_line} has 6 fields, expected 4 "
                r"\(row_id, audio_id, seconds, birds\)$")
    with pytest.raises(EvaluationError, match=expected):
        annotations.read_birdclef_labels(path)


def test_csv_records_number_rows_as_a_spreadsheet_does(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", 'a,b\n1,2\n\n"x\ny",3\n4\n5,6,7\n')
    records = annotations.read_csv_records(path)
    assert records.header == ["a", "b"]
    assert records.rows == [(2, ["1", "2"]), (4, ["x\ny", "3"])]
    assert records.ragged == [(5, 1), (6, 3)]


def test_raven_boxes_become_windows_by_overlap(tmp_path: Path) -> None:
    table = _write(
        tmp_path / "rec42.Table.1.selections.txt",
        f"{RAVEN_HEADER}\tSpecies\n"
        "1\tSpectrogram 1\t1\t1.0\t3.0\t500\t8000\tgretit1\n"  # inside window 0-5
        "2\tSpectrogram 1\t1\t4.8\t7.0\t500\t8000\teurstp1\n"  # 0.2 s in 0-5: too little
        "3\tSpectrogram 1\t1\t9.0\t11.0\t500\t8000\tgretit1\n"  # 1 s in 5-10 and 1 s in 10-15
        "4\tSpectrogram 1\t1\t14.9\t15.1\t500\t8000\tbenfin1\n"  # short box: 0.1 s each side
        "5\tSpectrogram 1\t1\t16.0\t17.0\t500\t8000\tcar_horn\n",  # not a label: ignored
    )
    frame = annotations.raven_to_window_labels(
        table, ["gretit1", "eurstp1", "benfin1"], duration_s=17.0
    )
    assert list(frame.index) == [("rec42", 5.0), ("rec42", 10.0), ("rec42", 15.0), ("rec42", 20.0)]
    np.testing.assert_array_equal(
        frame.to_numpy(),
        [[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]],
    )
    assert frame.attrs["ignored_labels"] == ["car_horn"]


def test_raven_short_box_counts_when_wholly_inside_a_window(tmp_path: Path) -> None:
    table = _write(
        tmp_path / "short.txt",
        f"{RAVEN_HEADER}\tAnnotation\n1\tSpectrogram 1\t1\t6.0\t6.2\t500\t8000\tgretit1\n",
    )
    frame = annotations.raven_to_window_labels(table, ["gretit1"], duration_s=10.0)
    assert frame["gretit1"].tolist() == [0, 1]


def test_raven_label_column_names_are_liberal(tmp_path: Path) -> None:
    table = _write(
        tmp_path / "x.txt",
        f"{RAVEN_HEADER}\tBegin File\tlabel\n"
        "1\tWaveform 1\t1\t0.5\t2.5\t0\t0\tsite3_0600.wav\tgretit1\n"
        "1\tSpectrogram 1\t1\t0.5\t2.5\t0\t0\tsite3_0600.wav\tgretit1\n",
    )
    frame = annotations.raven_to_window_labels(table, ["gretit1"], duration_s=4.0, window_s=2.0)
    assert set(frame.index.get_level_values("audio_id")) == {"site3_0600"}
    assert frame["gretit1"].tolist() == [1, 1]


def test_raven_without_species_column_is_an_error(tmp_path: Path) -> None:
    table = _write(tmp_path / "nolabel.txt", f"{RAVEN_HEADER}\n1\tSpectrogram 1\t1\t0\t1\t0\t0\n")
    with pytest.raises(EvaluationError, match=r"nolabel\.txt: no species column"):
        annotations.raven_to_window_labels(table, ["gretit1"], duration_s=5.0)


def test_match_recordings_prefers_whole_stems_and_rejects_ambiguity() -> None:
    mapping = annotations.match_recordings(
        ["a/7019_COR_20190904.ogg", "b/soundscape_1.ogg", "c/other.wav"], ["7019", "soundscape_1"]
    )
    assert mapping == {"a/7019_COR_20190904.ogg": "7019", "b/soundscape_1.ogg": "soundscape_1"}
    with pytest.raises(EvaluationError, match="both match recording '7019'"):
        annotations.match_recordings(["x/7019_COR_1.ogg", "y/7019_SSW_2.ogg"], ["7019"])


def test_truth_frame_iterates_as_window_keys_and_label_rows(tmp_path: Path) -> None:
    csv = _write(tmp_path / "l.csv", "audio_id,seconds,birds\nr1,5,gretit1\nr1,10,nocall\n")
    rows = list(annotations.read_birdclef_labels(csv).iterrows())
    assert [key for key, _ in rows] == [("r1", 5.0), ("r1", 10.0)]
    assert rows[0][1].reindex(["gretit1", "other"], fill_value=0).tolist() == [1, 0]


# ------------------------------------------------------------------ reading errors and Audacity


def _touch(path: Path, text: str = "") -> Path:
    path.write_text(text)
    return path


def test_read_raven_table_errors(tmp_path: Path) -> None:
    no_times = _touch(tmp_path / "no_times.txt", "Selection\tSpecies\n1\tgretit1\n")
    with pytest.raises(OutputError, match=r"no_times\.txt: selection table has no Begin Time"):
        annotations.read_raven_table(no_times)
    text_time = _touch(
        tmp_path / "bad.txt", "Begin Time (s)\tEnd Time (s)\tSpecies\n1.0\tlate\tgretit1\n"
    )
    with pytest.raises(OutputError, match=r"bad\.txt: line 2: End Time \(s\) is not a number"):
        annotations.read_raven_table(text_time)


def test_read_audacity_labels_accepts_birdnet_and_plain_labels(tmp_path: Path) -> None:
    path = _touch(
        tmp_path / "mixed.txt",
        "0.0\t3.0\tParus major, Great Tit\t0.8123\n"
        "\\\t500.0\t8000.0\n"
        "3.5\t4.0\tsong\n",
    )
    back = annotations.read_audacity_labels(path)
    assert back["label"].tolist() == ["Parus major, Great Tit", "song"]
    assert back["confidence"].iloc[0] == pytest.approx(0.8123)
    assert np.isnan(back["confidence"].iloc[1])
    bad = _touch(tmp_path / "bad.txt", "start\t3.0\tx\n")
    with pytest.raises(OutputError, match=r"bad\.txt: line 1: start/end time is not a number"):
        annotations.read_audacity_labels(bad)
