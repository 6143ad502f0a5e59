"""tune-thresholds on labelled soundscapes: an unreadable soundscape is named, left out with its labelled
windows, and counted; a set where none can be read fails with one line and changes no model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.inference.run import tune_model_thresholds
from dawnchorus.io.audio import write_audio
from dawnchorus.models.modelfile import load_model
from tests.conftest import MODEL_LABELS, synthetic_audio

runner = CliRunner()
SOUNDSCAPE_S = 15
NAMES = ("site_a", "site_b", "site_c")


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Three 15-s soundscapes and their 5-s window labels (test_soundscapes/, test_labels.csv)."""
    root = tmp_path / "labelled"
    rng = np.random.default_rng(4)
    rows = []
    for seed, name in enumerate(NAMES):
        write_audio(root / "test_soundscapes" / f"{name}.ogg", synthetic_audio(SOUNDSCAPE_S, seed), 32000)
        for end in range(5, SOUNDSCAPE_S + 1, 5):
            birds = [label for label in MODEL_LABELS if rng.random() < 0.5]
            rows.append({"row_id": f"{name}_{end}", "audio_id": name, "seconds": end,
                         "birds": " ".join(birds) or "nocall"})
    pd.DataFrame(rows).to_csv(root / "test_labels.csv", index=False)
    return root


def spoil(path: Path) -> None:
    path.write_text("field notes, not audio\n" * 40)


def test_an_unreadable_soundscape_is_named_skipped_and_counted(
    model_file: Path, labelled: Path, tmp_path: Path
) -> None:
    broken = labelled / "test_soundscapes" / "site_b.ogg"
    readable_only = tmp_path / "readable_only"
    shutil.copytree(labelled, readable_only)
    (readable_only / "test_soundscapes" / "site_b.ogg").unlink()
    labels = pd.read_csv(labelled / "test_labels.csv")
    labels[labels["audio_id"] != "site_b"].to_csv(readable_only / "test_labels.csv", index=False)
    spoil(broken)

    tuned = tmp_path / "tuned.pt"
    result = runner.invoke(app, ["tune-thresholds", str(model_file), str(labelled), "--out", str(tuned)])

    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped:")]
    assert skipped == [f"skipped: {broken}: not decodable audio (Format not recognised.)"]
    assert "on 6 windows; 1 unreadable soundscape(s) skipped" in " ".join(result.output.split())
    # Tuned on the two readable soundscapes and their windows only: as if site_b had never been there.
    model = load_model(model_file)
    alone = tune_model_thresholds(model, readable_only)
    assert alone["skipped"] == [] and alone["n_windows"] == 6
    assert load_model(tuned).thresholds == model.thresholds


def test_a_labelled_set_with_no_readable_soundscape_is_one_line_and_no_model_written(
    model_file: Path, labelled: Path, tmp_path: Path
) -> None:
    for name in NAMES:
        spoil(labelled / "test_soundscapes" / f"{name}.ogg")
    tuned = tmp_path / "tuned.pt"
    result = runner.invoke(app, ["tune-thresholds", str(model_file), str(labelled), "--out", str(tuned)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {labelled}: none of the 3 soundscape(s) could be read")
    assert "site_a.ogg: not decodable audio" in lines[0]
    assert not tuned.exists()
