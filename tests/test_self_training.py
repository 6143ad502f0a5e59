"""Training on pseudo-labelled soundscape windows: window items read lazily and exactly, the label mask
in the loss, clip + window mixing with the label union, and noisy-student rounds (rounds.csv, every
round's model, the student backbone, a round that improves on a separable synthetic task)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.config import ImbalanceSettings, build_config
from dawnchorus.data.datasets import ClipDataset
from dawnchorus.errors import TrainingError
from dawnchorus.io import audio
from dawnchorus.io.audio import write_audio
from dawnchorus.models.modelfile import load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.module import clip_loss
from dawnchorus.training.rounds import self_train
from dawnchorus.training.windows import ClipWindowMix, WindowItems
from tests.conftest import synthetic_audio

runner = CliRunner()
RATE = 32000
QUIET_AUGMENT = {"mixup_p": 0.0, "specaugment_p": 0.0, "colored_noise_p": 0.0, "gain_p": 0.0, "shift_p": 0.0}


# --- window items -----------------------------------------------------------------------------------


@pytest.fixture
def long_recording(tmp_path: Path) -> Path:
    path = tmp_path / "long.flac"  # lossless: the decoded window can be compared sample by sample
    write_audio(path, synthetic_audio(23.0, seed=3), RATE)
    return path


def test_a_window_item_is_exactly_its_seconds_of_the_long_recording(long_recording: Path) -> None:
    whole = audio.load(long_recording, sample_rate=RATE)
    targets = np.array([[0.9, 0.0], [0.2, 0.7]], dtype=np.float32)
    items = WindowItems([str(long_recording)] * 2, [5.0, 20.0], targets, RATE, 5 * RATE, train=False)
    first, last = items[0], items[1]
    np.testing.assert_array_equal(first["audio"].numpy(), whole[5 * RATE : 10 * RATE])
    # The last window runs past the end (20-25 s of 23 s): zero-padded, never wrapped.
    np.testing.assert_array_equal(last["audio"].numpy()[: 3 * RATE], whole[20 * RATE :])
    assert not last["audio"].numpy()[3 * RATE :].any()
    np.testing.assert_array_equal(last["target"].numpy(), targets[1])
    np.testing.assert_array_equal(first["mask"].numpy(), [1.0, 1.0])


def test_labels_the_table_lacks_are_masked_as_unjudged(long_recording: Path) -> None:
    table = pd.DataFrame({"file": [str(long_recording)], "start_s": [0.0], "end_s": [5.0], "bbb": [0.8]})
    items = WindowItems.from_table(table, ["aaa", "bbb"], RATE, 5 * RATE)
    item = items[0]
    np.testing.assert_allclose(item["target"].numpy(), [0.0, 0.8])
    np.testing.assert_array_equal(item["mask"].numpy(), [0.0, 1.0])
    assert items.primary_labels(["aaa", "bbb"]).tolist() == ["bbb"]


def test_the_loss_leaves_unjudged_labels_out() -> None:
    settings = ImbalanceSettings()
    logits = torch.tensor([[3.0, -2.0, 0.5], [-1.0, 1.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    weights = torch.ones(2)
    ones = torch.ones_like(targets)
    assert clip_loss(logits, targets, weights, settings, ones) == pytest.approx(
        float(clip_loss(logits, targets, weights, settings))
    )
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    masked = clip_loss(logits, targets, weights, settings, mask)
    other_target = targets.clone()
    other_target[0, 2] = 1.0  # what an unjudged label says does not matter
    assert clip_loss(logits, other_target, weights, settings, mask) == pytest.approx(float(masked))
    per_label = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (per_label[0, :2].mean() + per_label[1].mean()) / 2
    assert float(masked) == pytest.approx(float(expected))


def test_a_mixed_clip_is_the_sum_of_both_with_the_union_of_their_labels(
    long_recording: Path, tmp_path: Path
) -> None:
    clip_path = tmp_path / "clip.flac"
    write_audio(clip_path, synthetic_audio(5.0, seed=8), RATE)
    clips = ClipDataset([str(clip_path)], np.array([[1.0, 0.0, 0.0]]), RATE, 5 * RATE, train=False)
    windows = WindowItems(
        [str(long_recording)], [10.0], np.array([[0.3, 0.6, 0.0]]), RATE, 5 * RATE,
        mask=np.array([[1.0, 1.0, 0.0]]),
    )
    mixed = ClipWindowMix(clips, windows, p=1.0)[0]
    np.testing.assert_allclose(
        mixed["audio"].numpy(), clips[0]["audio"].numpy() + windows.window(0), atol=1e-6
    )
    np.testing.assert_allclose(mixed["target"].numpy(), [1.0, 0.6, 0.0])
    np.testing.assert_array_equal(mixed["mask"].numpy(), [1.0, 1.0, 1.0])  # the clip's labels are judged
    unmixed = ClipWindowMix(clips, windows, p=0.0)[0]
    np.testing.assert_array_equal(unmixed["audio"].numpy(), clips[0]["audio"].numpy())


# --- rounds -----------------------------------------------------------------------------------------


def split_off_pool(data: Path, pool: Path, keep: int) -> None:
    """Move all but the first ``keep`` labelled soundscapes out of ``data`` into the unlabelled ``pool``
    (their labels dropped): other call individuals, other backgrounds, never scored."""
    labels = pd.read_csv(data / "test_labels.csv")
    ids = list(dict.fromkeys(labels["audio_id"]))
    pool.mkdir(parents=True, exist_ok=True)
    for audio_id in ids[keep:]:
        shutil.move(data / "test_soundscapes" / f"{audio_id}.ogg", pool / f"{audio_id}.ogg")
    labels[labels["audio_id"].isin(ids[:keep])].to_csv(data / "test_labels.csv", index=False)


def small_config(**selftrain: object) -> object:
    return build_config({
        "model": {"backbone": "test_efficientnet", "pretrained": False, "drop_rate": 0.0},
        "augment": dict(QUIET_AUGMENT),
        "train": {"batch_size": 8, "num_workers": 0, "lr": 5e-3, "warmup_epochs": 0.5, "epochs": 1,
                  "min_steps_per_epoch": 0},
        "selftrain": {"student_augment": {}, **selftrain},
    })


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("selftrain")
    make_dataset(root / "data", species=3, soundscapes=3, seed=0, clips_per_species=(3, 4),
                 soundscape_s=10.0, workers=1)
    split_off_pool(root / "data", root / "pool", keep=1)
    return {"data": root / "data", "pool": root / "pool"}


@pytest.mark.slow
def test_rounds_keep_every_model_and_score_each_in_rounds_csv(
    small_set: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", str(small_set["data"]), "--out", str(run), "--unlabelled", str(small_set["pool"]),
         "--rounds", "2", "--config", str(write_settings(tmp_path, small_config()))],
    )
    assert result.exit_code == 0, result.output
    rounds = pd.read_csv(run / "rounds.csv")
    assert list(rounds.columns) == ["round", "model", "roc_auc", "cmap", "f1", "windows_kept"]
    assert rounds["round"].tolist() == [0, 1, 2]
    assert rounds["windows_kept"].tolist() == [0, 4, 4]  # two 10-s soundscapes of 5-s windows, keep 0
    assert rounds[["cmap", "f1"]].notna().all().all()
    for index in range(3):
        assert (run / f"round{index}" / "model.pt").is_file()
        assert f"round {index}: ROC-AUC" in " ".join(result.output.split())
    assert (run / "round1" / "pseudo" / "pseudo_labels.parquet").is_file()
    final = load_model(run / "model.pt")
    assert final.labels == load_model(run / "round2" / "model.pt").labels
    report = runner.invoke(app, ["report", str(run)])
    assert report.exit_code == 0, report.output
    page = (run / "report.html").read_text()
    assert "Self-training rounds" in page and "<td>round 2</td>" in page
    assert f"{rounds['cmap'][2]:.3f}" in page


@pytest.mark.slow
@pytest.mark.parametrize("rounds", [1, 2])
def test_pseudo_labels_given_train_students_from_their_teacher(
    small_set: dict[str, Path], tmp_path: Path, rounds: int
) -> None:
    teacher = tmp_path / "teacher"
    first = self_train(small_set["data"], teacher, small_config(), unlabelled=[small_set["pool"]])
    pl = tmp_path / "pl"
    made = runner.invoke(
        app, ["pseudo-label", str(first.model_path), str(small_set["pool"]), "--out", str(pl), "--keep", "0"]
    )
    assert made.exit_code == 0, made.output
    run = tmp_path / "run"
    result = self_train(
        small_set["data"], run, small_config(student_backbone="resnet10t", rounds=rounds), pseudo=pl,
    )
    assert [row.round for row in result.rounds] == list(range(rounds + 1))
    assert result.rounds[0].model == str(first.model_path.resolve())  # the pseudo-labels' teacher
    assert not (run / "round0").exists()
    assert load_model(run / "model.pt").config.model.backbone == "resnet10t"  # distilled into another net


def test_self_training_without_unlabelled_recordings_or_pseudo_labels_is_refused(
    small_set: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="--unlabelled"):
        self_train(small_set["data"], tmp_path / "run", small_config())
    result = runner.invoke(
        app, ["train", str(small_set["data"]), "--out", str(tmp_path / "r"), "--rounds", "2"]
    )
    assert result.exit_code == 2 and "need --unlabelled" in result.output


def write_settings(folder: Path, config: object) -> Path:
    path = folder / "settings.yaml"
    config.to_yaml(path)
    return path


# --- a round that improves: a separable task with a domain shift ---------------------------------------

TONE_SPECIES = ("hi", "lo", "mid")
WINDOW_S = 2.0


def tone_call(species: str, rng: np.random.Generator) -> np.ndarray:
    """A call of one of three easily told apart species: bursts at 1.2 kHz, a 4.5-3 kHz sweep, or a
    7 kHz tone amplitude-modulated at 40 Hz."""
    if species == "lo":
        burst = np.sin(2 * np.pi * 1200 * np.arange(int(0.15 * RATE)) / RATE) * np.hanning(int(0.15 * RATE))
        gap = np.zeros(int(0.1 * RATE))
        call = np.concatenate([burst, gap, burst, gap, burst])
    elif species == "mid":
        t = np.arange(int(0.4 * RATE)) / RATE
        call = np.sin(2 * np.pi * (4500 * t - 1500 * t**2 / 0.8)) * np.hanning(len(t))
    else:
        t = np.arange(int(0.5 * RATE)) / RATE
        call = np.sin(2 * np.pi * 7000 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 40 * t)) * np.hanning(len(t))
    return call * rng.uniform(0.5, 1.0)


def write_tone_set(
    root: Path, seed: int = 0, clips: int = 4, val: int = 3, pool: int = 12
) -> dict[str, Path]:
    """Clean clips (``clips`` per species, BirdCLEF layout), ``val`` labelled 20-s soundscapes of calls in
    coloured noise of random slope (``test_soundscapes``, 2-s windows, each species in a window with
    probability 0.35) and ``pool`` unlabelled ones like them."""
    from dawnchorus.augment.noise import coloured_noise

    rng = np.random.default_rng(seed)
    data, unlabelled = root / "data", root / "pool"
    rows = []
    for species in TONE_SPECIES:
        for index in range(clips):
            samples = 0.01 * rng.standard_normal(int(WINDOW_S * RATE))
            call = tone_call(species, rng)
            start = int(rng.integers(0, len(samples) - len(call)))
            samples[start : start + len(call)] += 0.5 * call
            name = f"{species}/{species}{index}.wav"
            write_audio(data / "train_audio" / name, samples.astype(np.float32), RATE)
            rows.append({"primary_label": species, "secondary_labels": "[]", "filename": name, "rating": 5})
    pd.DataFrame(rows).to_csv(data / "train_metadata.csv", index=False)
    truth = []
    for kind, count, folder in (("val", val, data / "test_soundscapes"), ("pool", pool, unlabelled)):
        for index in range(count):
            audio_id = f"{kind}{index:02d}"
            windows = 10
            noise = coloured_noise(int(windows * WINDOW_S * RATE), RATE, rng.uniform(0.5, 2.0), rng)
            samples = noise / np.sqrt(np.mean(noise**2)) * 0.1
            for window in range(windows):
                present = [sp for sp in TONE_SPECIES if rng.random() < 0.35]
                for species in present:
                    call = tone_call(species, rng)
                    start = int((window * WINDOW_S + rng.uniform(0, WINDOW_S - 0.7)) * RATE)
                    samples[start : start + len(call)] += 10 ** (rng.uniform(0, 10) / 20) * call
                truth.append({"row_id": f"{audio_id}_{(window + 1) * 2}", "audio_id": audio_id,
                              "seconds": (window + 1) * 2, "birds": " ".join(present) or "nocall"})
            write_audio(folder / f"{audio_id}.ogg", (samples * 0.5).astype(np.float32), RATE)
    labels = pd.DataFrame(truth)
    labels[labels["audio_id"].str.startswith("val")].to_csv(data / "test_labels.csv", index=False)
    return {"data": data, "pool": unlabelled}


def tone_config(**selftrain: object) -> object:
    return build_config({
        "model": {"backbone": "test_efficientnet", "pretrained": False, "drop_rate": 0.0},
        "augment": {**QUIET_AUGMENT, "colored_noise_p": 0.5},
        "audio": {"clip_s": WINDOW_S},
        # one pass of the clips per epoch: the few-step teacher these margins were measured with
        "train": {"batch_size": 4, "num_workers": 0, "lr": 5e-3, "warmup_epochs": 0.5, "epochs": 10,
                  "val_fraction": 0.34, "min_steps_per_epoch": 0},
        "selftrain": {"student_augment": {}, **selftrain},
    })


@pytest.mark.slow
def test_a_round_on_pseudo_labelled_soundscapes_improves_on_the_teacher(tmp_path: Path) -> None:
    # Measured (seed 0): the teacher, on 8 clean clips, scores ROC-AUC 0.451 / cmAP 0.699 on the noisy
    # validation soundscapes; the round-1 student started afresh, with 120 pseudo-labelled windows of the
    # pool, 0.574 / 0.778. A student started from this few-step teacher gained only 0.047 in a CI run:
    # what is tested here is the pool's gain, so the student starts pretrained.
    sets = write_tone_set(tmp_path)
    config = tone_config(rounds=1, student_init="pretrained")
    result = self_train(sets["data"], tmp_path / "run", config, unlabelled=[sets["pool"]])
    teacher, student = result.rounds
    assert student.windows_kept == 120
    assert student.roc_auc > teacher.roc_auc + 0.05, result.rounds
    assert student.cmap > teacher.cmap + 0.03, result.rounds


@pytest.mark.slow
def test_a_round_is_deterministic_for_a_seed_and_skips_a_corrupt_unlabelled_file(
    small_set: dict[str, Path], tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(small_set["pool"], pool)
    (pool / "broken.ogg").write_bytes(b"OggS" + bytes(range(256)) * 8)
    teacher = self_train(small_set["data"], tmp_path / "teacher", small_config(), unlabelled=[pool])
    students = []
    for name in ("first", "second"):
        lines: list[str] = []
        result = self_train(
            small_set["data"], tmp_path / name, small_config(), unlabelled=[pool],
            teacher=teacher.model_path, log=lines.append,
        )
        assert any("skipped" in line and "broken.ogg" in line for line in lines), lines
        students.append(torch.load(result.model_path, weights_only=True)["state_dict"])
    first, second = students
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
