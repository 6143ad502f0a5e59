"""Bad inputs to the data side, through the command line: each row builds one bad input among good ones.

Every row asserts what a user relies on: the exit code, one output line that names the file, row or
column and says what is wrong, no traceback, and (for ``predict``) that the good recordings' windows
are all in ``predictions.csv`` while the bad one is listed in ``errors.csv``. The run-time cases
(model files, output folders, training) are in ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner, Result

from dawnchorus.cli.app import app
from dawnchorus.cli.console import PARTIAL_FAILURE_EXIT  # some recordings failed (listed), the rest done
from dawnchorus.io.audio import write_audio

runner = CliRunner()
RATE = 32000
GOOD_SECONDS = 12.0  # windows at 0, 5 and 10 s
GOOD_WINDOWS = 3

# data check: the set has problems, listed
PROBLEMS_EXIT = 1
# evaluate: inputs that cannot be scored (an InputError)
BAD_INPUT_EXIT = 2


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32)


def one_line(result: Result, *needles: str, reason: str) -> str:
    """The output line holding every needle and matching ``reason``; fails listing the output."""
    for line in result.output.splitlines():
        if all(needle in line for needle in needles) and re.search(reason, line):
            return line
    raise AssertionError(f"no single line holds {needles} and /{reason}/ in:\n{result.output}")


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


# --------------------------------------------------------------------------------------------
# predict: a bad recording among good ones


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


Deny = Callable[[Path], None]  # the deny_reading fixture of conftest.py


def _cut_ogg(folder: Path, deny: Deny) -> str:
    path = folder / "cut.ogg"
    write_audio(path, noise(60.0, 7), RATE)
    cut_in_half(path)
    return path.name


def _cut_flac(folder: Path, deny: Deny) -> str:
    path = folder / "cut.flac"
    write_audio(path, noise(60.0, 7), RATE)
    cut_in_half(path)
    return path.name


def _nan_at_7_s(folder: Path, deny: Deny) -> str:
    samples = noise(GOOD_SECONDS, 8)
    samples[int(7.0 * RATE)] = np.nan
    sf.write(folder / "nan.wav", samples, RATE, subtype="FLOAT")
    return "nan.wav"


def _permission_denied(folder: Path, deny: Deny) -> str:
    path = folder / "locked.ogg"
    write_audio(path, noise(GOOD_SECONDS, 9), RATE)
    deny(path)
    return path.name


def _empty_file(folder: Path, deny: Deny) -> str:
    (folder / "empty.ogg").write_bytes(b"")
    return "empty.ogg"


def _text_named_ogg(folder: Path, deny: Deny) -> str:
    (folder / "notes.ogg").write_text("field notes, not audio\n" * 40)
    return "notes.ogg"


def _cut_wav(folder: Path, deny: Deny) -> str:
    path = folder / "cut.wav"
    sf.write(path, noise(GOOD_SECONDS, 10), RATE, subtype="PCM_16")
    cut_in_half(path)
    return path.name


def _flac_header_destroyed(folder: Path, deny: Deny) -> str:
    path = folder / "headless.flac"
    write_audio(path, noise(GOOD_SECONDS, 11), RATE)
    path.write_bytes(bytes(64) + path.read_bytes()[64:])
    return path.name


@dataclass(frozen=True)
class RecordingCase:
    """A bad recording: ``make`` writes it into a folder and returns its name."""

    make: Callable[[Path, Deny], str]
    reason: str  # regex the errors.csv line and the printed line must match


RECORDING_CASES = {
    "ogg-cut-in-half": RecordingCase(_cut_ogg, r"truncated: the file ends inside an Ogg page"),
    "flac-cut-in-half": RecordingCase(
        _cut_flac, r"truncated: the header declares 60\.000 s but the end of the file does not decode"),
    "permission-denied": RecordingCase(_permission_denied, r"permission denied"),
    "empty-file": RecordingCase(_empty_file, r"empty file \(0 bytes\)"),
    "text-named-ogg": RecordingCase(_text_named_ogg, r"not decodable audio"),
    "wav-cut-in-half": RecordingCase(_cut_wav, r"truncated: the header declares \d+ bytes of samples"),
    "flac-header-destroyed": RecordingCase(_flac_header_destroyed, r"not decodable audio"),
    "nan-at-7-s": RecordingCase(_nan_at_7_s, r"non-finite samples \(NaN or inf\), the first at 7\.000 s"),
}


@pytest.mark.parametrize("case", list(RECORDING_CASES.values()), ids=list(RECORDING_CASES))
def test_predict_lists_the_bad_recording_and_predicts_the_others(
    case: RecordingCase, model_file: Path, tmp_path: Path, deny_reading: Deny
) -> None:
    folder = tmp_path / "recordings"
    good = ["good_a.ogg", "good_b.flac", "good_c.wav"]
    for seed, name in enumerate(good):
        write_audio(folder / name, noise(GOOD_SECONDS, seed), RATE)
    bad = case.make(folder, deny_reading)
    out = tmp_path / "out"

    result = runner.invoke(app, ["predict", str(model_file), str(folder), "--out", str(out)])

    assert_no_traceback(result)
    assert result.exit_code == PARTIAL_FAILURE_EXIT, result.output
    one_line(result, bad, reason=case.reason)
    errors = pd.read_csv(out / "errors.csv")
    assert [Path(file).name for file in errors["file"]] == [bad]
    assert re.search(case.reason, errors["error"].iloc[0]), errors["error"].iloc[0]
    table = pd.read_csv(out / "predictions.csv")
    windows = table.groupby(table["file"].map(lambda file: Path(file).name)).size()
    assert windows.to_dict() == dict.fromkeys(good, GOOD_WINDOWS)
    assert np.isfinite(table.drop(columns=["file"]).to_numpy(dtype=np.float64)).all()


# --------------------------------------------------------------------------------------------
# data check: a training set with one problem


def birdclef_set(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A BirdCLEF-layout set: ``(primary_label, filename, secondary_labels)`` rows, 3 s clips."""
    for seed, (_, filename, _) in enumerate(rows):
        path = root / "train_audio" / filename
        if ".." not in filename and not Path(filename).is_absolute() and not path.exists():
            write_audio(path, noise(3.0, seed), RATE)
    pd.DataFrame(
        {"primary_label": [r[0] for r in rows], "filename": [r[1] for r in rows],
         "secondary_labels": [r[2] for r in rows], "rating": 4.0}
    ).to_csv(root / "train_metadata.csv", index=False)
    return root


GOOD_ROWS = [("aaa", "aaa/a1.ogg", "[]"), ("aaa", "aaa/a2.ogg", "[]"),
             ("bbb", "bbb/b1.ogg", "['aaa']"), ("bbb", "bbb/b2.ogg", "[]")]


def _unreadable_clip(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, GOOD_ROWS)
    deny(root / "train_audio" / "bbb" / "b2.ogg")
    return ("train_metadata.csv row 5", "bbb/b2.ogg")


def _ragged_metadata_row(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, GOOD_ROWS)
    metadata = root / "train_metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[2] += ",extra,more"
    metadata.write_text("\n".join(lines) + "\n")
    return ("train_metadata.csv row 3",)


def _only_clip_of_a_class_dropped(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, [*GOOD_ROWS, ("ccc", "ccc/c1.ogg", "['aaa'")])
    return ("train_metadata.csv", "class ccc")


def _empty_class_folder(root: Path, deny: Deny) -> tuple[str, ...]:
    for seed, name in enumerate(("aaa/a1.ogg", "aaa/a2.ogg", "bbb/b1.ogg")):
        write_audio(root / name, noise(3.0, seed), RATE)
    (root / "ccc").mkdir()
    return (str(root / "ccc"),)


def _filename_out_of_the_set(root: Path, deny: Deny) -> tuple[str, ...]:
    write_audio(root.parent / "outside.ogg", noise(3.0, 5), RATE)
    birdclef_set(root, [*GOOD_ROWS, ("bbb", "../../outside.ogg", "[]")])
    return ("train_metadata.csv row 6", "../../outside.ogg")


def _missing_clip(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, GOOD_ROWS)
    (root / "train_audio" / "aaa" / "a2.ogg").unlink()
    return ("train_metadata.csv row 3", "aaa/a2.ogg")


def _cut_ogg_clip(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, GOOD_ROWS)
    cut_in_half(root / "train_audio" / "bbb" / "b1.ogg")
    return ("train_metadata.csv row 4", "bbb/b1.ogg")


def _cut_flac_clip(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, [*GOOD_ROWS[:3], ("bbb", "bbb/b2.flac", "[]")])
    cut_in_half(root / "train_audio" / "bbb" / "b2.flac")
    return ("train_metadata.csv row 5", "bbb/b2.flac")


def _bad_rating(root: Path, deny: Deny) -> tuple[str, ...]:
    birdclef_set(root, GOOD_ROWS)
    metadata = pd.read_csv(root / "train_metadata.csv")
    metadata["rating"] = metadata["rating"].astype(object)
    metadata.loc[1, "rating"] = "great"
    metadata.to_csv(root / "train_metadata.csv", index=False)
    return ("train_metadata.csv row 3", "rating 'great'")


@dataclass(frozen=True)
class SetCase:
    """A training set with a problem: ``make`` builds it and returns what the problem line must name."""

    make: Callable[[Path, Deny], tuple[str, ...]]
    reason: str  # regex the problem line must match


SET_CASES = {
    "permission-denied": SetCase(_unreadable_clip, r"permission denied"),
    "missing-clip": SetCase(_missing_clip, r"file not found"),
    "ogg-clip-cut-in-half": SetCase(_cut_ogg_clip, r"truncated: the file ends inside an Ogg page"),
    "flac-clip-cut-in-half": SetCase(_cut_flac_clip, r"truncated: the header declares 3\.000 s"),
    "bad-rating": SetCase(_bad_rating, r"is not a number"),
    "metadata-row-with-six-fields": SetCase(_ragged_metadata_row, r"the row has 6 fields, expected 4"),
    "only-clip-of-a-class-dropped": SetCase(_only_clip_of_a_class_dropped,
                                            r"has no usable clip .*leaves ccc out"),
    "filename-out-of-the-set": SetCase(_filename_out_of_the_set, r"leads outside train_audio/"),
    "empty-class-folder": SetCase(_empty_class_folder, r"holds no audio files.*class ccc has no clips"),
}


@pytest.mark.parametrize("case", list(SET_CASES.values()), ids=list(SET_CASES))
def test_data_check_names_the_problem_on_one_line(case: SetCase, tmp_path: Path, deny_reading: Deny) -> None:
    root = tmp_path / "set"
    root.mkdir()
    needles = case.make(root, deny_reading)

    result = runner.invoke(app, ["data", "check", str(root)])

    assert_no_traceback(result)
    assert result.exit_code == PROBLEMS_EXIT, result.output
    one_line(result, *needles, reason=case.reason)
    assert "No problems found" not in result.output


# --------------------------------------------------------------------------------------------
# evaluate: predictions or labels that cannot be scored

WINDOW_ENDS = (5.0, 10.0, 15.0, 20.0)


def write_predictions(path: Path, scores: dict[str, list[float]]) -> Path:
    """A prediction table of one recording ``rec.ogg``, 4 windows, full-precision CSV."""
    table = pd.DataFrame({"file": "rec.ogg", "start_s": [end - 5.0 for end in WINDOW_ENDS],
                          "end_s": list(WINDOW_ENDS), **scores})
    table.to_csv(path, index=False)
    return path


def write_labels(path: Path, birds: list[str]) -> Path:
    """BirdCLEF 2021-style labels (``row_id, audio_id, seconds, birds``) of ``rec``'s windows."""
    pd.DataFrame({"row_id": [f"rec_{end:g}" for end in WINDOW_ENDS], "audio_id": "rec",
                  "seconds": list(WINDOW_ENDS), "birds": birds}).to_csv(path, index=False)
    return path


GOOD_SCORES = {"aaa": [0.1, 0.8, 0.2, 0.9], "bbb": [0.1, 0.7, 0.6, 0.2]}
GOOD_BIRDS = ["nocall", "aaa bbb", "bbb", "aaa"]


def _labels_row_with_six_fields(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    predictions = write_predictions(folder / "predictions.csv", GOOD_SCORES)
    labels = write_labels(folder / "labels.csv", GOOD_BIRDS)
    lines = labels.read_text().splitlines()
    lines[1] += ",extra,more"
    labels.write_text("\n".join(lines) + "\n")
    return [str(predictions), str(labels)], ("labels.csv", "line 2")


def _nan_probability(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    scores = {"aaa": list(GOOD_SCORES["aaa"]), "bbb": list(GOOD_SCORES["bbb"])}
    scores["bbb"][2] = np.nan
    predictions = write_predictions(folder / "predictions.csv", scores)
    labels = write_labels(folder / "labels.csv", GOOD_BIRDS)
    return [str(predictions), str(labels)], ("predictions.csv", "line 4", "bbb", "rec.ogg at 10-15 s")


def _labels_without_birds_column(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    predictions = write_predictions(folder / "predictions.csv", GOOD_SCORES)
    labels = write_labels(folder / "labels.csv", GOOD_BIRDS)
    pd.read_csv(labels).drop(columns=["birds"]).to_csv(labels, index=False)
    return [str(predictions), str(labels)], ("labels.csv",)


def _window_missing_from_predictions(folder: Path) -> tuple[list[str], tuple[str, ...]]:
    predictions = write_predictions(folder / "predictions.csv", GOOD_SCORES)
    pd.read_csv(predictions).iloc[:3].to_csv(predictions, index=False)
    labels = write_labels(folder / "labels.csv", GOOD_BIRDS)
    return [str(predictions), str(labels)], ("rec at 20.000 s",)


@dataclass(frozen=True)
class EvaluateCase:
    """Inputs ``evaluate`` must refuse: ``make`` writes them and returns (arguments, names to see)."""

    make: Callable[[Path], tuple[list[str], tuple[str, ...]]]
    reason: str


EVALUATE_CASES = {
    "labels-row-with-six-fields": EvaluateCase(
        _labels_row_with_six_fields, r"has 6 fields, expected 4 \(row_id, audio_id, seconds, birds\)"),
    "labels-without-birds-column": EvaluateCase(_labels_without_birds_column, r"missing column\(s\) birds"),
    "window-missing-from-predictions": EvaluateCase(_window_missing_from_predictions,
                                                    r"predictions miss 1 window\(s\) of the truth"),
    "nan-probability": EvaluateCase(_nan_probability, r"bbb is NaN .*a probability must be a number"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES.values()), ids=list(EVALUATE_CASES))
def test_evaluate_refuses_on_one_line(case: EvaluateCase, tmp_path: Path) -> None:
    arguments, needles = case.make(tmp_path)

    result = runner.invoke(app, ["evaluate", *arguments])

    assert_no_traceback(result)
    assert result.exit_code == BAD_INPUT_EXIT, result.output
    line = one_line(result, *needles, reason=case.reason)
    assert line.startswith("error: ")


def test_evaluate_ranks_scores_closer_than_float32_resolution_as_sklearn_does(tmp_path: Path) -> None:
    # Full-precision CSVs from other tools: scores 1e-8 apart were cast to float32 and tied.
    scores = {"aaa": [0.3, 0.30000001, 0.7, 0.70000001], "bbb": [0.1, 0.2, 0.3, 0.4]}
    predictions = write_predictions(tmp_path / "predictions.csv", scores)
    labels = write_labels(tmp_path / "labels.csv", GOOD_BIRDS)

    result = runner.invoke(app, ["evaluate", str(predictions), str(labels), "--json"])

    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    truth = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])
    expected = roc_auc_score(truth, np.column_stack(list(scores.values())), average="macro")
    assert json.loads(result.stdout)["roc_auc_macro"] == pytest.approx(expected, abs=1e-12)
