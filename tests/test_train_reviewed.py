"""``train --reviewed RESULTS_DIR``: verified windows of a reviewed run as training items.

The case: clean training clips of three tone species (tests/test_self_training.py's set), field
recordings of them in loud coloured noise with a distractor (a steady 7 kHz tone, like 'hi' without
its 40 Hz modulation) in half the windows without 'hi'. A model trained on the clips alone is near
chance in the field; the verdicts on eight reviewed field recordings (every label of every window,
from the truth) fix that on eight held-out ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from dawnchorus.augment.noise import coloured_noise
from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings
from dawnchorus.errors import TrainingError
from dawnchorus.inference.run import run_prediction
from dawnchorus.io.audio import write_audio
from dawnchorus.io.verdicts import REVIEWS_FILE, VerdictStore, score_bin
from dawnchorus.models.modelfile import load_model
from dawnchorus.training.reviewed import reviewed_window_items
from tests.test_self_training import (
    RATE,
    TONE_SPECIES,
    WINDOW_S,
    tone_call,
    tone_config,
    write_settings,
    write_tone_set,
)

runner = CliRunner()
Truth = dict[tuple[str, float, str], bool]


def write_field(folder: Path, count: int, seed: int) -> Truth:
    """``count`` 20-s field recordings (2-s windows): tone calls in loud coloured noise, and the
    distractor in half the windows without 'hi'; returns (recording, start, label) -> present, with
    label 'distractor' for the windows holding it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth: Truth = {}
    tone = np.sin(2 * np.pi * 7000 * np.arange(int(1.2 * RATE)) / RATE) * np.hanning(int(1.2 * RATE))
    for index in range(count):
        name = f"field{seed}_{index:02d}"
        noise = coloured_noise(int(10 * WINDOW_S * RATE), RATE, rng.uniform(0.5, 2.0), rng)
        samples = noise / np.sqrt(np.mean(noise**2)) * 0.1
        for window in range(10):
            present = [species for species in TONE_SPECIES if rng.random() < 0.3]
            sounds = [tone_call(species, rng) for species in present]
            if "hi" not in present and rng.random() < 0.5:
                sounds.append(tone)
                truth[(name, window * WINDOW_S, "distractor")] = True
            for sound in sounds:
                start = int((window * WINDOW_S + rng.uniform(0, WINDOW_S - len(sound) / RATE - 0.05)) * RATE)
                samples[start : start + len(sound)] += 0.1 * 10 ** (rng.uniform(0, 10) / 20) * sound
            for species in TONE_SPECIES:
                truth[(name, window * WINDOW_S, species)] = species in present
        write_audio(folder / f"{name}.ogg", (samples * 0.5).astype(np.float32), RATE)
    return truth


def predict(model: Path, folder: Path, out: Path) -> pd.DataFrame:
    settings = PredictSettings(formats=["parquet"], engine="torch")
    run_prediction(load_model(model, build_network=False), sorted(folder.glob("*.ogg")), out, settings)
    return pd.read_parquet(out / "predictions.parquet")


def review_from_truth(run: Path, table: pd.DataFrame, truth: Truth) -> None:
    """A reviewer judging every label of every window (the truth), one 'unsure' per ten."""
    store = VerdictStore(run / REVIEWS_FILE)
    judged = ((row, species) for row in table.itertuples(index=False) for species in TONE_SPECIES)
    for count, (row, species) in enumerate(judged):
        key = (Path(row.file).stem, float(row.start_s), species)
        score = float(getattr(row, species))
        store.add(
            item_id=f"{key[0]}:{int(row.start_s * 1000)}:{species}", file=row.file, start_s=row.start_s,
            end_s=row.end_s, label=species, score=score, queue="random", score_bin=score_bin(score),
            verdict="unsure" if count % 10 == 9 else "present" if truth[key] else "absent",
        )


def field_scores(table: pd.DataFrame, truth: Truth) -> dict[str, float]:
    """Per species ROC-AUC on the field windows, and 'hi' on the distractor windows (mean score)."""
    keys = [(Path(f).stem, float(s)) for f, s in zip(table["file"], table["start_s"], strict=True)]
    scores = {
        species: roc_auc_score([truth[(*k, species)] for k in keys], table[species])
        for species in TONE_SPECIES
    }
    distractor = np.array([truth.get((*k, "distractor"), False) for k in keys])
    scores["hi on distractor"] = float(table["hi"].to_numpy()[distractor].mean())
    return scores


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("train-reviewed")
    data = write_tone_set(root, clips=3, val=2, pool=0)["data"]
    settings = write_settings(root, tone_config())
    base = runner.invoke(app, ["train", str(data), "--out", str(root / "base"), "--config", str(settings)])
    assert base.exit_code == 0, base.output
    reviewed_truth = write_field(root / "review", 8, seed=1)
    table = predict(root / "base" / "model.pt", root / "review", root / "run")
    review_from_truth(root / "run", table, reviewed_truth)
    return {"root": root, "data": data, "settings": settings, "held": write_field(root / "held", 8, seed=2)}


@pytest.mark.slow
def test_training_on_reviewed_windows_fixes_the_models_field_errors(
    case: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    root: Path = case["root"]  # type: ignore[assignment]
    result = runner.invoke(
        app,
        ["train", str(case["data"]), "--out", str(root / "after"), "--config", str(case["settings"]),
         "--reviewed", str(root / "run")],
    )
    assert result.exit_code == 0, result.output
    assert "reviewed: 80 windows" in result.output and "unsure verdicts left out" in result.output
    held = root / "held"
    before = field_scores(predict(root / "base" / "model.pt", held, root / "held-base"), case["held"])
    after = field_scores(predict(root / "after" / "model.pt", held, root / "held-after"), case["held"])
    with capsys.disabled():
        print("\nheld-out field recordings, before -> after train --reviewed:")
        for name in before:
            print(f"  {name}: {before[name]:.3f} -> {after[name]:.3f}")
    macro_before = np.mean([before[s] for s in TONE_SPECIES])
    macro_after = np.mean([after[s] for s in TONE_SPECIES])
    assert macro_after > macro_before + 0.1
    assert all(after[s] >= before[s] - 0.02 for s in TONE_SPECIES)
    assert after["hi on distractor"] < before["hi on distractor"] - 0.1  # the distractor is rejected


def test_reviewed_windows_of_another_length_are_refused(case: dict[str, object]) -> None:
    config = tone_config().model_copy(deep=True)
    config.audio.clip_s = 5.0
    with pytest.raises(TrainingError, match="reviewed windows are 2 s long, the model's clips 5 s"):
        reviewed_window_items([case["root"] / "run"], case["data"], config)  # type: ignore[operator]


def test_reviewed_is_refused_with_self_training_or_a_folder_without_verdicts(
    case: dict[str, object], tmp_path: Path
) -> None:
    data = str(case["data"])
    combined = runner.invoke(app, ["train", data, "--reviewed", str(tmp_path), "--unlabelled", str(tmp_path)])
    assert combined.exit_code == 2 and "does not combine" in combined.output
    empty = runner.invoke(app, ["train", data, "--out", str(tmp_path / "r"), "--reviewed", str(tmp_path)])
    assert empty.exit_code == 2
    assert "no verdicts" in empty.output and "Traceback" not in empty.output
    assert not (tmp_path / "r").exists()
