"""A real predict output folder for the review tests: three synthetic recordings predicted by the
shared small model (labels aaa, bbb, ccc), 6 windows of 5 s each."""

from __future__ import annotations

from pathlib import Path

from dawnchorus.io.audio import write_audio
from tests.conftest import synthetic_audio

RECORDING_S = 30.0


def predicted_run(root: Path, model_file: Path) -> Path:
    """``predict MODEL root/recordings --out root/results --engine torch`` (through the CLI, as a
    user runs it); returns the results folder."""
    from typer.testing import CliRunner

    from dawnchorus.cli.app import app

    recordings = root / "recordings"
    for index in range(3):
        write_audio(recordings / f"site{index}.wav", synthetic_audio(RECORDING_S, seed=20 + index), 32000)
    out = root / "results"
    command = ["predict", str(model_file), str(recordings), "--out", str(out), "--engine", "torch"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    return out
