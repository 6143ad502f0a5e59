"""Bad inputs to the data side, through the command line: each row builds one bad input among good ones.

Every row asserts what a user relies on: the exit code, one output line that names the file, row or
column and says what is wrong, no traceback, and (for ``predict``) that the good recordings' windows
are all in ``predictions.csv`` while the bad one is listed in ``errors.csv``. The run-time cases
(model files, output folders, training) are in ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner, Result

from dawnchorus.cli.app import app
from dawnchorus.io.audio import write_audio

runner = CliRunner()
RATE = 32000
GOOD_SECONDS = 12.0  # windows at 0, 5 and 10 s
GOOD_WINDOWS = 3
# predict: some recordings failed and are listed in errors.csv, the others were predicted
PARTIAL_FAILURE_EXIT = 1
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


def _cut_ogg(folder: Path) -> str:
    path = folder / "cut.ogg"
    write_audio(path, noise(60.0, 7), RATE)
    cut_in_half(path)
    return path.name


def _cut_flac(folder: Path) -> str:
    path = folder / "cut.flac"
    write_audio(path, noise(60.0, 7), RATE)
    cut_in_half(path)
    return path.name


def _nan_at_7_s(folder: Path) -> str:
    samples = noise(GOOD_SECONDS, 8)
    samples[int(7.0 * RATE)] = np.nan
    sf.write(folder / "nan.wav", samples, RATE, subtype="FLOAT")
    return "nan.wav"


@dataclass(frozen=True)
class RecordingCase:
    """A bad recording: ``make`` writes it into a folder and returns its name."""

    make: Callable[[Path], str]
    reason: str  # regex the errors.csv line and the printed line must match


RECORDING_CASES = {
    "ogg-cut-in-half": RecordingCase(_cut_ogg, r"truncated: the file ends inside an Ogg page"),
    "flac-cut-in-half": RecordingCase(_cut_flac, r"truncated: decoding stops at [\d.]+ s of the 60\.000 s"),
    "nan-at-7-s": RecordingCase(_nan_at_7_s, r"non-finite samples \(NaN or inf\), the first at 7\.000 s"),
}


@pytest.mark.parametrize("case", list(RECORDING_CASES.values()), ids=list(RECORDING_CASES))
def test_predict_lists_the_bad_recording_and_predicts_the_others(
    case: RecordingCase, model_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "recordings"
    good = ["good_a.ogg", "good_b.flac", "good_c.wav"]
    for seed, name in enumerate(good):
        write_audio(folder / name, noise(GOOD_SECONDS, seed), RATE)
    bad = case.make(folder)
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
