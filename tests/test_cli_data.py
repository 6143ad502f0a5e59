"""`dawnchorus synth` then `dawnchorus data check`: a clean set passes, damage is named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from dawnchorus.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "d"
    result = runner.invoke(app, ["synth", str(out), "--species", "12", "--soundscapes", "4", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


def test_synth_then_check_succeeds(synthetic_set: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(synthetic_set)])
    assert result.exit_code == 0, result.output
    assert "12" in result.output  # classes
    metadata = pd.read_csv(synthetic_set / "train_metadata.csv")
    assert str(len(metadata)) in result.output


def test_damaged_audio_and_csv_row_are_both_named(synthetic_set: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    # Copy only what check reads (metadata + audio); soundscapes are not needed.
    import shutil

    shutil.copytree(synthetic_set / "train_audio", damaged / "train_audio")
    shutil.copy(synthetic_set / "train_metadata.csv", damaged / "train_metadata.csv")
    metadata = pd.read_csv(damaged / "train_metadata.csv")
    broken_audio = damaged / "train_audio" / metadata.loc[0, "filename"]
    broken_audio.write_bytes(b"not audio at all" * 100)
    metadata.loc[3, "secondary_labels"] = "['nosuchbird'"  # malformed list string
    metadata.to_csv(damaged / "train_metadata.csv", index=False)

    result = runner.invoke(app, ["data", "check", str(damaged)])
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert metadata.loc[0, "filename"].split("/")[-1] in output
    assert "row 5" in output  # header is row 1, so data row index 3 is spreadsheet row 5


def test_check_of_missing_folder_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nowhere")])
    assert result.exit_code != 0
    assert "nowhere" in result.output
