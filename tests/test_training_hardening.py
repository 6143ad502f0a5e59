"""Training on tiny or awkward sets: a validation set that cannot define ROC-AUC monitors the
validation loss instead (said in one line) on both training paths, an epoch whose score is undefined
neither wins nor stops the run, a clip metric with nothing held out is refused before a frozen
backbone embeds anything, and a noisy-student run takes its frozen teacher's backbone weights file
(``--teacher-weights``, SHA-256 checked) and says a student's pretrained start once."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import dawnchorus
import dawnchorus.training.module
from dawnchorus.cli.app import app
from dawnchorus.config import build_config
from dawnchorus.embed.registry import EmbeddingModelSpec, register_embedding_model
from dawnchorus.errors import EvaluationError, TrainingError
from dawnchorus.io.audio import write_audio
from dawnchorus.models.modelfile import load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.frozen import train_frozen
from dawnchorus.training.result import Monitor, choose_monitor
from dawnchorus.training.run import train
from tests.conftest import synthetic_audio
from tests.test_frozen_backbone import FAKE, RATE, SpectrumBackbone, tone

runner = CliRunner()
UNDEFINED = "train.monitor: val/roc_auc is undefined on this validation set"
QUIET_AUGMENT = {"mixup_p": 0.0, "specaugment_p": 0.0, "colored_noise_p": 0.0, "gain_p": 0.0, "shift_p": 0.0}
# Fold 0 of 2 on a class of two clips and a class of one: a single validation clip. Measured with
# these settings: val/loss 0.198 at epoch 0, 5e-11 at epoch 1, then slowly up (the best is epoch 1).
ONE_VALIDATION_CLIP = (
    "model: {backbone: test_efficientnet, pretrained: false, drop_rate: 0.0}\n"
    "augment: {mixup_p: 0.0, specaugment_p: 0.0, colored_noise_p: 0.0, gain_p: 0.0, shift_p: 0.0}\n"
    "train: {epochs: 5, batch_size: 8, num_workers: 0, lr: 0.01, warmup_epochs: 0.5, fold: 0, folds: 2,\n"
    "        min_steps_per_epoch: 6}\n"
    "audio: {clip_s: 2.0}\n"
)


@pytest.fixture(scope="module")
def two_species(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folder-per-class sets of 2 synthetic species: ``pairs`` (2 clips each: fold 0 validates on one
    clip of each class) and ``single`` (the second class keeps one clip: one validation clip)."""
    root = tmp_path_factory.mktemp("two_species")
    make_dataset(root / "made", species=2, soundscapes=0, seed=0, clips_per_species=(2, 2), workers=1)
    pairs = root / "made" / "train_audio"
    single = root / "single"
    shutil.copytree(pairs, single)
    second = sorted(path for path in single.iterdir())[1]
    sorted(second.iterdir())[1].unlink()
    return {"pairs": pairs, "single": single}


def best_epoch(run: Path) -> int:
    return int(torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"])


def test_an_undefined_roc_auc_picks_the_epoch_of_lowest_validation_loss_and_says_so_once(
    two_species: dict[str, Path], tmp_path: Path
) -> None:
    """One validation clip: ROC-AUC is NaN every epoch (was: "best val/roc_auc = -inf" and model.pt
    from epoch 0 whatever the later epochs did)."""
    config = tmp_path / "config.yaml"
    config.write_text(ONE_VALIDATION_CLIP)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(two_species["single"]), "--out", str(run), "--config",
                                 str(config)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "is undefined on" in line]
    assert len(lines) == 1 and lines[0].startswith(UNDEFINED), result.output
    assert "lowest val/loss instead" in lines[0]
    assert "best val/loss = " in result.output and "-inf" not in result.output
    log = pd.read_csv(run / "logs" / "metrics.csv").dropna(subset=["val/loss"]).sort_values("epoch")
    lowest = int(log["epoch"].iloc[int(np.argmin(log["val/loss"].to_numpy()))])
    assert lowest > 0  # the set is made so: a later epoch is better than the first
    assert best_epoch(run) == lowest
    metadata = load_model(run / "model.pt").metadata
    assert metadata["monitor"] == "val/loss"
    assert metadata["best_score"] == pytest.approx(log["val/loss"].min(), rel=1e-5)


def test_the_monitor_falls_back_only_where_the_labels_cannot_define_it() -> None:
    one_clip = np.array([[1.0, 0.0]])
    both = np.array([[1.0, 0.0], [0.0, 1.0]])
    no_birds = np.zeros((4, 2))
    assert choose_monitor("val/roc_auc", "max", both) == Monitor("val/roc_auc", "max")
    assert choose_monitor("val/cmap", "max", one_clip) == Monitor("val/cmap", "max")  # padded: defined
    fallback = choose_monitor("val/roc_auc", "max", one_clip)
    assert (fallback.name, fallback.mode) == ("val/loss", "min")
    assert "among its 1 validation clip, no class has both positives and negatives" in fallback.note
    soundscapes = choose_monitor("val_soundscape/roc_auc", "max", None, no_birds)
    assert (soundscapes.name, soundscapes.mode) == ("train/loss_epoch", "min")  # no clip held out
    assert "among its 4 validation soundscape windows" in soundscapes.note
    assert choose_monitor("val_soundscape/roc_auc", "max", both, no_birds).name == "val/loss"
    assert choose_monitor("val_soundscape/roc_auc", "max", one_clip, both).name == "val_soundscape/roc_auc"


def test_an_epoch_with_an_undefined_score_neither_wins_nor_stops_the_run(
    two_species: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ROC-AUC undefined in the first and last epochs only (e.g. non-finite outputs): the run goes on
    past the first with patience 1 (Lightning stopped it there) and keeps the best defined epoch."""
    scores = iter([None, 0.6, 0.8, None])

    def scripted(y_true: np.ndarray, y_score: np.ndarray) -> float:
        score = next(scores)
        if score is None:
            raise EvaluationError("ROC-AUC is undefined")
        return score

    monkeypatch.setattr(dawnchorus.training.module, "macro_roc_auc", scripted)
    config = build_config({
        "model": {"backbone": "test_efficientnet", "pretrained": False},
        "augment": dict(QUIET_AUGMENT),
        "audio": {"clip_s": 2.0},
        "train": {"epochs": 4, "batch_size": 8, "num_workers": 0, "fold": 0, "folds": 2,
                  "min_steps_per_epoch": 0, "patience": 1},
    })
    lines: list[str] = []
    result = train(two_species["pairs"], tmp_path / "run", config, progress_bar=False, log=lines.append)
    assert lines == []  # the validation labels define ROC-AUC: nothing to say
    assert result.monitor == "val/roc_auc"
    assert result.epochs_run == 4
    assert best_epoch(tmp_path / "run") == 2 and result.best_score == pytest.approx(0.8)


# --- a head on a frozen backbone ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def spectrum_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake backbone's default weights file (registered under its name for this module)."""
    path = tmp_path_factory.mktemp("spectrum") / "default-weights.bin"
    path.write_bytes(b"the spectral test backbone's default weights")
    register_embedding_model(
        EmbeddingModelSpec(FAKE, "test backbone", RATE, 3.0, 24, "test", "test",
                           lambda weights=None, **options: SpectrumBackbone(weights or path, **options)),
        replace=True,
    )
    return path


def tone_folder(root: Path, clips: dict[str, int]) -> Path:
    """Folder per class of warbling tones at 8 kHz, ``clips[label]`` clips each."""
    for index, (label, count) in enumerate(clips.items()):
        (root / label).mkdir(parents=True)
        for clip in range(count):
            samples = tone(600.0 * (index + 1), 5.0, 10 * index + clip)
            sf.write(root / label / f"{label}{clip}.wav", samples, RATE)
    return root


def frozen_settings(tmp_path: Path, **overrides: object):
    settings = {"embedding.backbone": FAKE, "embedding.draws": 2, "embedding.steps_per_epoch": 5,
                "train.epochs": 3, "train.batch_size": 4, "train.cache_dir": str(tmp_path / "cache")}
    return build_config(overrides={**settings, **overrides})


def test_a_clip_monitor_with_one_clip_per_class_is_refused_before_a_frozen_backbone_embeds(
    spectrum_weights: Path, tmp_path: Path
) -> None:
    data = tone_folder(tmp_path / "data", {"low": 1, "high": 1})
    backbone = SpectrumBackbone(spectrum_weights)
    with pytest.raises(TrainingError, match=r"train.monitor: 'val/roc_auc': no clip is held out") as caught:
        train_frozen(data, tmp_path / "run", frozen_settings(tmp_path), backbone=backbone)
    assert "\n" not in str(caught.value)
    assert backbone.windows == 0 and not (tmp_path / "run").exists()  # nothing embedded or written


def test_a_head_on_a_frozen_backbone_with_one_validation_clip_monitors_the_validation_loss(
    spectrum_weights: Path, tmp_path: Path
) -> None:
    data = tone_folder(tmp_path / "data", {"low": 2, "high": 1})
    lines: list[str] = []
    config = frozen_settings(tmp_path, **{"train.fold": 0, "train.folds": 2})
    result = train_frozen(data, tmp_path / "run", config, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith(UNDEFINED), lines
    assert result.monitor == "val/loss" and result.best_score is not None
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert result.best_score == pytest.approx(log["val/loss"].min())
    assert load_model(result.model_path).metadata["monitor"] == "val/loss"


# --- a noisy-student run from a teacher on a frozen backbone ------------------------------------------


@pytest.fixture(scope="module")
def frozen_teacher(spectrum_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A head on the fake backbone trained with a weights file that was then moved (``weights``: where
    it is now), its 32-kHz training set, and an unlabelled pool of two 10-s recordings."""
    root = tmp_path_factory.mktemp("frozen_teacher")
    make_dataset(root / "made", species=2, soundscapes=0, seed=1, clips_per_species=(3, 3), workers=1)
    data = root / "made" / "train_audio"
    trained_with = root / "trained-with.bin"
    trained_with.write_bytes(b"weights the teacher was trained with")
    config = frozen_settings(root, **{"embedding.weights": str(trained_with)})
    teacher = train_frozen(data, root / "teacher", config, log=lambda line: None).model_path
    moved = root / "elsewhere" / "weights.bin"
    moved.parent.mkdir()
    trained_with.rename(moved)
    pool = root / "pool"
    pool.mkdir()
    for seed in range(2):
        write_audio(pool / f"field{seed}.wav", synthetic_audio(10.0, seed=20 + seed), 32000)
    settings = root / "students.yaml"
    settings.write_text(
        "model: {backbone: test_efficientnet, pretrained: false, drop_rate: 0.0}\n"
        "augment: {mixup_p: 0.0, specaugment_p: 0.0, colored_noise_p: 0.0, gain_p: 0.0, shift_p: 0.0}\n"
        "train: {epochs: 1, batch_size: 8, num_workers: 0, min_steps_per_epoch: 0}\n"
        "selftrain: {student_augment: {}, pseudo: {keep: 0.0}}\n"
    )
    return {"data": data, "teacher": teacher, "weights": moved, "pool": pool, "settings": settings}


def self_train_command(setup: dict[str, Path], out: Path, *extra: str | Path) -> list[str]:
    return ["train", str(setup["data"]), "--out", str(out), "--unlabelled", str(setup["pool"]),
            "--config", str(setup["settings"]), *map(str, extra)]


@pytest.mark.slow
def test_a_frozen_teacher_runs_on_its_teacher_weights_file_and_the_pretrained_start_is_said_once(
    frozen_teacher: dict[str, Path], tmp_path: Path
) -> None:
    """Its weights file moved since training: --teacher-weights names it (was: no way to; the run fell
    back on the backbone's default file and stopped at pseudo-labelling, its SHA-256 not the recorded
    one); two distilled rounds say the student's pretrained start once."""
    run = tmp_path / "run"
    result = runner.invoke(app, self_train_command(
        frozen_teacher, run, "--teacher", frozen_teacher["teacher"], "--teacher-weights",
        frozen_teacher["weights"], "--rounds", "2",
    ))
    assert result.exit_code == 0, result.output
    assert pd.read_csv(run / "rounds.csv")["round"].tolist() == [0, 1, 2]
    starts = [line for line in result.output.splitlines() if "pretrained weights" in line]
    assert len(starts) == 1 and starts[0].startswith("round 1: the student starts"), result.output


def test_a_wrong_or_missing_teacher_weights_file_is_one_line_before_any_work(
    frozen_teacher: dict[str, Path], tmp_path: Path, model_file: Path
) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the weights of this teacher")
    teacher = ["--teacher", frozen_teacher["teacher"], "--teacher-weights"]
    cases = {
        "wrong": ([*teacher, other], "not the backbone weights the model was trained on"),
        "missing": ([*teacher, tmp_path / "absent.bin"], "backbone weights file not found"),
        "cnn": (["--teacher", model_file, "--teacher-weights", other], "a fine-tuned CNN carries its"),
        "no teacher": (["--teacher-weights", other], "give that teacher with --teacher"),
    }
    for name, (extra, expected) in cases.items():
        run = tmp_path / name
        result = runner.invoke(app, self_train_command(frozen_teacher, run, *extra))
        assert result.exit_code == 2, (name, result.output)
        message = result.output.strip()
        assert expected in message and "\n" not in message and "Traceback" not in message, (name, message)
        assert not (run / "round0").exists() and not (run / "round1").exists()


def test_lightning_is_quieted_by_one_function() -> None:
    """demo.py had a copy of training/run.py's quiet_lightning that hid every Lightning warning,
    those about the run too, which train shows: the demo now uses the one."""
    package = Path(dawnchorus.__file__).parent
    defined = [
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if re.search(r"^def \w*quiet_lightning\b", path.read_text(), flags=re.MULTILINE)
    ]
    assert defined == ["training/run.py"]
