"""A real predict output folder for the review tests: three synthetic recordings predicted by the
shared small model (labels aaa, bbb, ccc), 6 windows of 5 s each; :class:`Server` runs
``dawnchorus review`` on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dawnchorus.io.audio import write_audio
from tests.conftest import REPO, synthetic_audio

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


class Server:
    """``dawnchorus review RESULTS --port 0`` in a subprocess; ``url`` is the one it printed."""

    def __init__(self, results: Path, *options: str) -> None:
        env = {**os.environ, "COLUMNS": "300", "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "dawnchorus", "review", str(results), "--port", "0", *options]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=env, cwd=REPO)
        self.lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            found = re.search(r"open (http://\S+)", line)
            if found:
                self.url = found.group(1)
                return
        raise AssertionError("server printed no URL:\n" + "".join(self.lines))

    def rest(self) -> str:
        assert self.process.stdout is not None
        return "".join(self.lines) + self.process.stdout.read()
