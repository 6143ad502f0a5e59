"""``dawnchorus pseudo-label``: the teacher's windows cleaned as configured (keep rule, floor, power),
read back; a corrupt recording named and skipped; a re-run resumes (also after SIGKILL) and a re-run
with other clean-up settings predicts nothing again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.config import PseudoLabelSettings
from dawnchorus.errors import InputError
from dawnchorus.io.audio import write_audio
from dawnchorus.training.pseudo import clean_pseudo_labels, read_pseudo_labels
from tests.conftest import MODEL_LABELS, kill_after_parts, synthetic_audio, write_model_file

runner = CliRunner()
LABELS = list(MODEL_LABELS)


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    """Three 20-s recordings of whistles in pink noise (4 windows each)."""
    folder = tmp_path / "unlabelled"
    for index in range(3):
        write_audio(folder / f"site{index}.ogg", synthetic_audio(20.0, seed=index), 32000)
    return folder


def teacher_table(pl: Path) -> pd.DataFrame:
    """The teacher's raw window probabilities, as its prediction run wrote them."""
    return pd.read_parquet(pl / "teacher" / "predictions.parquet")


def test_pseudo_labels_are_the_teachers_windows_cleaned_as_configured(
    model_file: Path, recordings: Path, tmp_path: Path
) -> None:
    pl = tmp_path / "pl"
    raw_run = runner.invoke(app, ["pseudo-label", str(model_file), str(recordings), "--out", str(pl)])
    assert raw_run.exit_code == 0, raw_run.output
    raw = teacher_table(pl)
    assert len(raw) == 12
    probabilities = raw[LABELS].to_numpy()
    # Thresholds in the middle of what this teacher gives, so each rule changes something.
    keep = float(np.quantile(probabilities.max(axis=1), 0.5))
    floor = float(np.quantile(probabilities, 0.3))
    result = runner.invoke(
        app,
        ["pseudo-label", str(model_file), str(recordings), "--out", str(pl), "--keep", str(keep),
         "--floor", str(floor), "--power", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "0 recordings predicted, 3 already complete" in " ".join(result.output.split())

    kept = probabilities.max(axis=1) >= keep
    expected = np.where(probabilities[kept] < floor, 0.0, probabilities[kept] ** 2)
    assert 0 < kept.sum() < len(kept) and (expected == 0).any()
    labels = read_pseudo_labels(pl)
    assert labels.labels == LABELS
    assert list(labels.table.columns) == ["file", "start_s", "end_s", *LABELS]
    np.testing.assert_allclose(labels.table[LABELS].to_numpy(), expected, rtol=1e-6)
    assert list(labels.table["start_s"]) == list(raw.loc[kept, "start_s"])
    assert sorted(labels.recordings) == sorted(str(p.resolve()) for p in recordings.iterdir())
    info = json.loads((pl / "pseudo_labels.json").read_text())
    assert info["settings"]["keep"] == pytest.approx(keep) and info["settings"]["power"] == 2
    assert info["kept"] == int(kept.sum()) and info["windows"] == 12
    assert len(info["teacher_sha256"]) == 64
    for label, column in zip(LABELS, expected.T, strict=True):  # the summary: windows per species
        assert info["per_label"][label]["present"] == int((column >= 0.5).sum())
        assert f"{label}" in result.output


def test_clean_pseudo_labels_applies_keep_then_floor_then_power() -> None:
    probabilities = np.array([[0.9, 0.05, 0.3], [0.2, 0.1, 0.4], [0.6, 0.6, 0.01]], dtype=np.float32)
    targets, keep = clean_pseudo_labels(probabilities, PseudoLabelSettings(keep=0.5, floor=0.1, power=2))
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(targets, [[0.81, 0.0, 0.09], [0.36, 0.36, 0.0]], rtol=1e-6)


def test_a_corrupt_recording_is_named_and_skipped(model_file: Path, recordings: Path, tmp_path: Path) -> None:
    (recordings / "broken.ogg").write_bytes(b"OggS" + os.urandom(2000))
    pl = tmp_path / "pl"
    result = runner.invoke(app, ["pseudo-label", str(model_file), str(recordings), "--out", str(pl)])
    assert result.exit_code == 1, result.output
    assert "broken.ogg" in result.stderr
    assert "Traceback" not in result.output
    labels = read_pseudo_labels(pl)
    assert len(labels.table) == 12 and not labels.table["file"].str.contains("broken").any()
    assert [Path(p).name for p in labels.info["failed"]] == ["broken.ogg"]
    assert "broken.ogg" in (pl / "teacher" / "errors.csv").read_text()


def test_reading_a_folder_without_pseudo_labels_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pseudo_labels.parquet: not found"):
        read_pseudo_labels(tmp_path)


@pytest.mark.slow
def test_a_killed_pseudo_label_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    model_path = write_model_file(tmp_path / "model.pt", backbone="efficientnet_b0")  # slow enough to kill
    folder = tmp_path / "recordings"
    rng = np.random.default_rng(1)
    count = 16
    for index in range(count):
        write_audio(folder / f"rec{index:02d}.ogg", rng.uniform(-0.2, 0.2, 32000 * 30), 32000)
    pl = tmp_path / "pl"
    command = [sys.executable, "-m", "dawnchorus", "pseudo-label", str(model_path), str(folder), "--out",
               str(pl), "--floor", "0.2"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = kill_after_parts(process, pl / "teacher" / "parts")
    assert 0 < done_before < count
    assert not (pl / "pseudo_labels.parquet").exists()

    rerun = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} already complete" in " ".join(rerun.stdout.split())
    labels = read_pseudo_labels(pl)
    assert len(labels.table) == count * 6
    assert not labels.table.duplicated(["file", "start_s"]).any()
    raw = teacher_table(pl)[LABELS].to_numpy()
    np.testing.assert_allclose(labels.table[LABELS].to_numpy(), np.where(raw < 0.2, 0.0, raw), rtol=1e-6)
