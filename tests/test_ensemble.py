"""Ensembles (``predict m1.pt m2.pt ... RECORDINGS``) and per-recording max scaling (issue 13 item 3):
an ensemble's table is the (weighted) mean of its members' tables run alone, in every engine, on a
cluster and through the Python API; members must share labels (reordered when only the order
differs) and windows; a run folder never reuses the parts of another ensemble; max scaling on known
arrays and through whole runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import dawnchorus
from dawnchorus.cli.app import app
from dawnchorus.config import PredictSettings, build_config, build_predict_settings
from dawnchorus.embed.base import EmbeddingModel, EmbeddingOutput
from dawnchorus.embed.registry import EmbeddingModelSpec, register_embedding_model
from dawnchorus.errors import ConfigError, ModelError, PredictionError
from dawnchorus.inference import distributed as dist
from dawnchorus.inference.engines import onnx_available
from dawnchorus.inference.ensemble import (
    Ensemble,
    EnsembleBatchFunction,
    ensemble_of,
    load_ensemble,
    predictor_batch_function,
)
from dawnchorus.inference.run import predict_frame, run_prediction, run_tag
from dawnchorus.inference.smoothing import finish_table, scale_by_max, smooth
from dawnchorus.inference.windows import plan_recordings
from dawnchorus.io.audio import write_audio
from dawnchorus.models.embedding_classifier import EmbeddingClassifier
from dawnchorus.models.modelfile import load_model, save_model_file
from tests.conftest import Interrupted, stop_after_segments, synthetic_audio, write_model_file

KEYS = ["file", "start_s", "end_s"]
LABELS = ["aaa", "bbb", "ccc"]
TORCH = PredictSettings(engine="torch", batch_size=4, formats=["parquet"])
runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files: two with the labels aaa, bbb, ccc (weights of seeds 0 and 1), one with the same
    labels in another order, one with another label set."""
    folder = tmp_path_factory.mktemp("ensemble-models")
    return {
        "one": write_model_file(folder / "one" / "model.pt", seed=0),
        "two": write_model_file(folder / "two" / "model.pt", seed=1),
        "reordered": write_model_file(folder / "reordered" / "model.pt", labels=("ccc", "aaa", "bbb"),
                                      seed=2),
        "other": write_model_file(folder / "other" / "model.pt", labels=("aaa", "bbb", "ddd"), seed=3),
    }


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ensemble-recordings")
    write_audio(folder / "long.flac", synthetic_audio(62.0, seed=5), 32000)  # 13 windows of 5 s
    write_audio(folder / "short.wav", synthetic_audio(12.0, seed=6), 32000)  # 3 windows
    return folder


def parquet(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "predictions.parquet").sort_values(KEYS).reset_index(drop=True)


def alone(model_path: Path, recordings: Path, out: Path, settings: PredictSettings = TORCH) -> pd.DataFrame:
    """A member's table run on its own."""
    run_prediction(load_model(model_path, build_network=False), [recordings], out, settings)
    return parquet(out)


def weighted_mean(tables: list[pd.DataFrame], weights: list[float]) -> pd.DataFrame:
    total = sum(weights)
    mean = tables[0].copy()
    values = sum(w / total * t[LABELS].to_numpy(np.float64) for w, t in zip(weights, tables, strict=True))
    mean[LABELS] = values.astype(np.float32)
    return mean


# --- the mean of the members ------------------------------------------------------------------------------


def test_ensemble_table_is_the_mean_of_its_members_run_alone_torch(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    one = alone(models["one"], recordings, tmp_path / "one")
    two = alone(models["two"], recordings, tmp_path / "two")
    assert np.abs(one[LABELS].to_numpy() - two[LABELS].to_numpy()).max() > 1e-3  # members differ
    ensemble = load_ensemble([models["one"], models["two"]])
    summary = run_prediction(ensemble, [recordings], tmp_path / "ensemble", TORCH)
    assert summary.predicted == 2 and summary.windows == 16
    found = parquet(tmp_path / "ensemble")
    pd.testing.assert_frame_equal(found, weighted_mean([one, two], [1, 1]), atol=1e-6)


@pytest.mark.skipif(not onnx_available(), reason="needs the 'onnx' extra")
def test_weighted_onnx_ensemble_is_the_weighted_mean_of_its_members(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    settings = PredictSettings(engine="onnx", batch_size=4, formats=["parquet"], ensemble_weights=[0.7, 0.3])
    one = alone(models["one"], recordings, tmp_path / "one", settings)
    two = alone(models["two"], recordings, tmp_path / "two", settings)
    ensemble = load_ensemble([models["one"], models["two"]], settings.ensemble_weights)
    run = predictor_batch_function(ensemble, "onnx", device="cpu")
    assert isinstance(run, EnsembleBatchFunction) and run.weights == pytest.approx((0.7, 0.3))
    run_prediction(ensemble, [recordings], tmp_path / "ensemble", settings)
    found = parquet(tmp_path / "ensemble")
    pd.testing.assert_frame_equal(found, weighted_mean([one, two], [0.7, 0.3]), atol=1e-6)


def test_members_with_the_labels_in_another_order_are_reordered(
    models: dict[str, Path], recordings: Path
) -> None:
    one = predict_frame(load_model(models["one"]), recordings, TORCH)
    reordered = predict_frame(load_model(models["reordered"]), recordings, TORCH)
    assert list(reordered.columns) == ["ccc", "aaa", "bbb"]
    ensemble = load_ensemble([models["one"], models["reordered"]], [1, 3])
    assert ensemble.labels == LABELS
    found = predict_frame(ensemble, recordings, TORCH)
    assert list(found.columns) == LABELS
    expected = 0.25 * one[LABELS].to_numpy(np.float64) + 0.75 * reordered[LABELS].to_numpy(np.float64)
    np.testing.assert_allclose(found[LABELS].to_numpy(), expected, atol=1e-6)


def test_python_predict_takes_a_list_of_models_and_weights(models: dict[str, Path], recordings: Path) -> None:
    one = dawnchorus.predict(models["one"], recordings, engine="torch")
    two = dawnchorus.predict(load_model(models["two"]), recordings, engine="torch")
    found = dawnchorus.predict(
        [models["one"], load_model(models["two"])], recordings, engine="torch", ensemble_weights=[1, 4]
    )
    expected = 0.2 * one.to_numpy(np.float64) + 0.8 * two.to_numpy(np.float64)
    pd.testing.assert_index_equal(found.index, one.index)
    np.testing.assert_allclose(found.to_numpy(), expected, atol=1e-6)
    single = dawnchorus.predict([models["one"]], recordings, engine="torch")  # a list of one: that model
    pd.testing.assert_frame_equal(single, one)


def test_thresholds_of_an_ensemble_are_the_members_weighted_per_class_mean(models: dict[str, Path]) -> None:
    one, reordered = load_model(models["one"]), load_model(models["reordered"])
    one.thresholds = {"global": 0.5, "per_class": [0.2, 0.4, 0.6]}  # aaa, bbb, ccc
    reordered.thresholds = {"global": 0.3, "per_class": None}  # 0.3 for every class
    ensemble = ensemble_of([one, reordered], [3, 1])
    np.testing.assert_allclose(ensemble.class_thresholds, [0.225, 0.375, 0.525], rtol=1e-6)
    reordered.thresholds = {"global": 0.5, "per_class": [0.9, 0.1, 0.3]}  # ccc, aaa, bbb
    np.testing.assert_allclose(ensemble.class_thresholds, [0.75 * 0.2 + 0.25 * 0.1, 0.375, 0.675])


# --- members on a frozen backbone -----------------------------------------------------------------------


class BandEnergies(EmbeddingModel):
    """A stand-in backbone: a fixed random projection of each window's log band energies."""

    version = "1"
    embedding_size = 16

    def __init__(self, name: str, sample_rate: int, weights: Path, **_: object) -> None:
        self.name, self.sample_rate, self.window_s, self.weights_path = name, sample_rate, 5.0, weights
        self.projection = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)

    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        power = np.abs(np.fft.rfft(self.check_batch(batch), axis=1)) ** 2
        bands = np.stack([band.sum(axis=1) for band in np.array_split(power, 32, axis=1)], axis=1)
        return EmbeddingOutput((np.log10(bands + 1e-6) @ self.projection / 10).astype(np.float32))


def frozen_model_file(path: Path, sample_rate: int, seed: int) -> Path:
    """A head (random weights drawn with ``seed``) on a :class:`BandEnergies` backbone at ``sample_rate``
    with 5-s windows, labels aaa, bbb, ccc."""
    import torch

    name = f"test-bands-{sample_rate}"
    weights = path.parent / "bands.bin"
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"band energies")
    register_embedding_model(
        EmbeddingModelSpec(
            name=name, summary="test", sample_rate=sample_rate, window_s=5.0, embedding_size=16,
            licence="test", extra="test",
            factory=lambda **options: BandEnergies(name, sample_rate, weights, **options),
        ),
        replace=True,
    )
    config = build_config(overrides={"embedding.backbone": name, "audio.sample_rate": sample_rate,
                                     "frontend.fmax": min(14000.0, sample_rate / 2)})
    torch.manual_seed(seed)
    head = EmbeddingClassifier(16, len(LABELS))
    record = BandEnergies(name, sample_rate, weights).info().as_dict()
    return save_model_file(path, head, LABELS, config, backbone=record)


def test_a_frozen_backbone_member_on_the_same_window_grid_is_averaged_in(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    frozen = load_model(frozen_model_file(tmp_path / "frozen" / "model.pt", 32000, seed=4))
    cnn = load_model(models["one"])
    alone_frozen = predict_frame(frozen, recordings, TORCH)
    alone_cnn = predict_frame(cnn, recordings, TORCH)
    assert alone_frozen[LABELS].to_numpy().std() > 1e-3
    found = predict_frame(ensemble_of([cnn, frozen]), recordings, TORCH)
    expected = (alone_cnn[LABELS].to_numpy(np.float64) + alone_frozen[LABELS].to_numpy(np.float64)) / 2
    np.testing.assert_allclose(found[LABELS].to_numpy(), expected, atol=1e-6)


def test_a_frozen_backbone_member_at_another_rate_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    frozen = load_model(frozen_model_file(tmp_path / "frozen16k" / "model.pt", 16000, seed=4))
    with pytest.raises(ModelError, match=r"frozen16k/model.pt: windows of 5 s at 16000 Hz, but .*32000 Hz"):
        ensemble_of([load_model(models["one"]), frozen])


# --- what members must share ------------------------------------------------------------------------------


def test_members_with_other_labels_are_refused_naming_the_file(models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"other/model.pt: its labels differ .*lacks: ccc; extra: ddd"):
        load_ensemble([models["one"], models["other"]])


def test_members_on_another_window_grid_are_refused(models: dict[str, Path]) -> None:
    one, two = load_model(models["one"]), load_model(models["two"])
    two.config = two.config.model_copy(update={"audio": two.config.audio.model_copy(update={"clip_s": 3.0})})
    with pytest.raises(ModelError, match=r"two/model.pt: windows of 3 s at 32000 Hz, but .* 5 s at 32000 Hz"):
        ensemble_of([one, two])


def test_weights_must_match_the_members(models: dict[str, Path]) -> None:
    with pytest.raises(PredictionError, match="3 weight\\(s\\) given for 2 model\\(s\\)"):
        load_ensemble([models["one"], models["two"]], [1, 2, 3])
    with pytest.raises(ConfigError, match="ensemble_weights: weights must not all be 0"):
        build_predict_settings({"ensemble_weights": "0,0"})
    assert build_predict_settings({"ensemble_weights": "0.6, 0.4"}).ensemble_weights == [0.6, 0.4]


# --- resuming: the run tag covers every member and weight ---------------------------------------------------


def test_run_tag_names_every_member_and_weight(models: dict[str, Path]) -> None:
    one, two = load_model(models["one"]), load_model(models["two"])
    plain = run_tag(one, PredictSettings())
    assert plain.startswith("m")  # a single model's tag is as it always was
    tags = {
        "equal": run_tag(ensemble_of([one, two]), PredictSettings()),
        "weighted": run_tag(ensemble_of([one, two], [0.6, 0.4]), PredictSettings()),
        "order": run_tag(ensemble_of([two, one]), PredictSettings()),
        "three": run_tag(ensemble_of([one, two, one]), PredictSettings()),
    }
    assert len(set(tags.values())) == 4 and all(tag.startswith("e") for tag in tags.values())
    assert run_tag(ensemble_of([one, two], [2, 2]), PredictSettings()) == tags["equal"]  # same weights


def test_resume_never_reuses_the_parts_of_another_ensemble(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = run_prediction(load_ensemble([models["one"], models["two"]]), [recordings], out, TORCH)
    assert first.predicted == 2
    reweighted = load_ensemble([models["one"], models["two"]], [0.9, 0.1])
    again = run_prediction(reweighted, [recordings], out, TORCH)
    assert again.predicted == 2 and again.skipped == 0  # every recording computed afresh
    fresh = tmp_path / "fresh"
    run_prediction(load_ensemble([models["one"], models["two"]], [0.9, 0.1]), [recordings], fresh, TORCH)
    pd.testing.assert_frame_equal(parquet(out), parquet(fresh))
    back = run_prediction(load_ensemble([models["one"], models["two"]]), [recordings], out, TORCH)
    assert back.predicted == 0 and back.skipped == 2  # returning to the first ensemble resumes it
    assert len(list((out / "parts").iterdir())) == 2


def test_an_interrupted_segmented_ensemble_run_resumes_to_the_uninterrupted_table(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    paths = [models["one"], models["reordered"]]
    settings = TORCH.model_copy(update={"checkpoint_s": 20.0, "ensemble_weights": [0.3, 0.7]})  # 4 windows
    whole = tmp_path / "whole"
    run_prediction(load_ensemble(paths, [0.3, 0.7]), [recordings], whole, TORCH)
    out = tmp_path / "segmented"
    with pytest.raises(Interrupted):
        run_prediction(load_ensemble(paths, [0.3, 0.7]), [recordings / "long.flac"], out, settings,
                       progress=stop_after_segments(2))
    assert len(list((out / "parts").glob("*/*.windows-*"))) == 2
    resumed = run_prediction(load_ensemble(paths, [0.3, 0.7]), [recordings], out, settings)
    assert resumed.windows == (13 - 8) + 3  # the two saved segments are not computed again
    pd.testing.assert_frame_equal(parquet(out), parquet(whole), atol=1e-6)


# --- on a cluster ------------------------------------------------------------------------------------------


def test_worker_tasks_of_an_ensemble_give_the_in_process_table(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    recording = recordings / "long.flac"
    ensemble = load_ensemble([models["one"], models["two"]], [0.6, 0.4])
    expected = predict_frame(ensemble, recording, TORCH).reset_index()
    (plan,), _ = plan_recordings([recording], 32000, 5.0, 5.0, segment_s=20.0, batch_size=4, absolute=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    options = dist.TaskOptions(
        model_path=str(models["one"]), model_stamp=dist.model_stamp(models["one"]), hop_s=5.0, batch_size=4,
        thresholds=(0.5,) * 3, out_dir=str(tmp_path), parts_dir=str(parts), formats=("parquet",),
        merge=False, device="cpu", torch_threads=1, engine="torch",
        ensemble=tuple((str(p), dist.model_stamp(p)) for p in (models["one"], models["two"])),
        ensemble_weights=ensemble.weights,
    )
    chunks = [dist.predict_chunk(plan, segment, options) for segment in plan.segments]
    assert len(chunks) == 4 and all(chunk.error is None for chunk in chunks)
    done = dist.finish_recording(plan, options, *chunks)
    assert done.error is None and done.windows == 13
    model, _ = dist.worker_model(options)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    found = pd.read_parquet(parts / f"{plan.key}.parquet")
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    # a chunk's resampler restart moves probabilities by ~2e-6 (see tests/test_distributed.py)
    np.testing.assert_allclose(found[LABELS], expected[LABELS], atol=1e-5)


@pytest.mark.slow
def test_a_local_cluster_ensemble_equals_the_in_process_run(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed", reason="needs the 'distributed' extra (dask.distributed)")
    settings = PredictSettings(
        engine="torch", batch_size=4, formats=["parquet"], chunk_s=20.0, ensemble_weights=[0.6, 0.4],
        smoothing=[1, 2, 1], max_scaling=0.5,
    )
    paths = [models["one"], models["reordered"]]
    single = tmp_path / "single"
    run_prediction(load_ensemble(paths, settings.ensemble_weights), [recordings], single, settings)
    cluster = tmp_path / "cluster"
    summary = dist.run_distributed_prediction(paths, [recordings], cluster, settings, cluster="local:2")
    assert summary.predicted == 2 and summary.tasks > 2  # the long recording ran in chunks
    assert [p.name for p in (cluster / "parts").iterdir()] == [p.name for p in (single / "parts").iterdir()]
    expected, found = parquet(single), parquet(cluster)
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    np.testing.assert_allclose(found[LABELS], expected[LABELS], atol=1e-5)


# --- the command line --------------------------------------------------------------------------------------


def test_predict_command_with_two_model_files_averages_them(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    common = ["--engine", "torch", "--format", "parquet"]
    tables = []
    for name in ("one", "two"):
        result = runner.invoke(app, ["predict", str(models[name]), str(recordings), "--out",
                                     str(tmp_path / name), *common])
        assert result.exit_code == 0, result.output
        tables.append(parquet(tmp_path / name))
    arguments = [str(models["one"]), str(models["two"]), str(recordings / "long.flac"),
                 str(recordings / "short.wav")]
    result = runner.invoke(app, ["predict", *arguments, "--out", str(tmp_path / "both"), *common,
                                 "--weights", "0.6,0.4"])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 (weights 0.6, 0.4)" in result.output
    pd.testing.assert_frame_equal(parquet(tmp_path / "both"), weighted_mean(tables, [0.6, 0.4]), atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "1,2,3"], "ensemble weights: 3 weight(s) given for 2 model(s)"),
        (["--ensemble-weights", "1,x"], "ensemble_weights: must be comma-separated numbers"),
    ],
)
def test_predict_command_names_bad_weights_in_one_line(
    models: dict[str, Path], recordings: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    arguments = [str(models["one"]), str(models["two"]), str(recordings / "short.wav")]
    result = runner.invoke(app, ["predict", *arguments, "--out", str(out), "--engine", "torch", *extra])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.exists()


def test_predict_command_refuses_a_member_with_other_labels_or_an_onnx_graph(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    mixed = runner.invoke(app, ["predict", str(models["one"]), str(models["other"]), str(recordings),
                                "--out", str(out), "--engine", "torch"])
    assert mixed.exit_code == 2 and "other/model.pt: its labels differ" in mixed.output, mixed.output
    graph = tmp_path / "model.onnx"
    graph.write_bytes(b"not a model file")
    onnx = runner.invoke(app, ["predict", str(models["one"]), str(graph), str(recordings), "--out", str(out)])
    assert onnx.exit_code == 2 and "model.onnx: an exported ONNX graph, not a model file" in onnx.output
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\0" * 100)
    broken = runner.invoke(app, ["predict", str(models["one"]), str(damaged), str(recordings),
                                 "--out", str(out)])
    assert broken.exit_code == 2 and "damaged.pt" in broken.output, broken.output
    only_models = runner.invoke(app, ["predict", str(models["one"]), str(models["two"]), "--out", str(out)])
    assert only_models.exit_code == 2 and "no recordings given after the model file(s)" in only_models.output
    outputs = mixed.output + onnx.output + broken.output + only_models.output
    assert "Traceback" not in outputs and not out.exists()


# --- per-recording max scaling ------------------------------------------------------------------------------


def test_max_scaling_on_known_windows() -> None:
    p = np.array([[0.1, 0.2], [0.8, 0.1], [0.4, 0.0]])  # species maxima 0.8 and 0.2
    found = scale_by_max(p, 0.5)
    # p * (1 - a) + p * max * a = p * (0.5 + 0.5 * max): 0.9 p for the first, 0.6 p for the second
    np.testing.assert_allclose(found, [[0.09, 0.12], [0.72, 0.06], [0.36, 0.0]])
    np.testing.assert_allclose(scale_by_max(p, 1.0), p * p.max(axis=0))
    np.testing.assert_allclose(scale_by_max(np.ones((4, 3)), 0.7), 1.0)  # a species sure everywhere stays
    with pytest.raises(ValueError, match="max scaling must be in"):
        scale_by_max(p, 1.5)


def test_max_scaling_comes_after_smoothing_in_finish_table() -> None:
    frame = pd.DataFrame({"file": "r.wav", "start_s": [0.0, 5.0, 10.0], "end_s": [5.0, 10.0, 15.0],
                          "aaa": np.float32([1.0, 0.0, 0.0]), "bbb": np.float32([0.2, 0.2, 0.4])})
    found = finish_table(frame, ["aaa", "bbb"], 5.0, 5.0, smoothing=[1, 2, 1], max_scaling=0.5)
    smoothed = smooth(frame[["aaa", "bbb"]].to_numpy(np.float64), [1, 2, 1])
    np.testing.assert_allclose(found[["aaa", "bbb"]], scale_by_max(smoothed, 0.5), rtol=1e-6)
    assert (found[["aaa", "bbb"]].dtypes == np.float32).all()
    assert finish_table(frame, ["aaa", "bbb"], 5.0, 5.0) is frame  # everything off: the table itself


def test_max_scaling_setting_is_off_by_default_validated_and_in_the_run_tag(models: dict[str, Path]) -> None:
    assert PredictSettings().max_scaling is None
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="max_scaling"):
            build_predict_settings({"max_scaling": bad})
    model = load_model(models["one"])
    assert run_tag(model, PredictSettings(max_scaling=0.3)) == run_tag(model, PredictSettings()) + "-max0.3"
    assert run_tag(model, PredictSettings(max_scaling=0.4)).endswith("-max0.4")


def test_a_segmented_run_with_max_scaling_scales_each_whole_recording(
    models: dict[str, Path], recordings: Path, tmp_path: Path
) -> None:
    model = load_model(models["one"])
    raw = alone(models["one"], recordings, tmp_path / "raw")
    settings = TORCH.model_copy(update={"max_scaling": 0.8, "checkpoint_s": 20.0})  # segments of 4 windows
    run_prediction(model, [recordings], tmp_path / "scaled", settings)
    expected = []
    for _, rows in raw.groupby("file", sort=True):
        rows = rows.copy()
        rows[LABELS] = scale_by_max(rows[LABELS].to_numpy(np.float64), 0.8).astype(np.float32)
        expected.append(rows)
    found = parquet(tmp_path / "scaled")
    expected_table = pd.concat(expected).sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(found, expected_table, atol=1e-6)
    assert np.abs(found[LABELS].to_numpy() - raw[LABELS].to_numpy()).max() > 1e-3  # it did act


def test_predict_command_max_scaling(models: dict[str, Path], recordings: Path, tmp_path: Path) -> None:
    common = [str(models["one"]), str(recordings / "short.wav"), "--engine", "torch", "--format", "parquet"]
    plain = runner.invoke(app, ["predict", *common, "--out", str(tmp_path / "plain")])
    scaling = ["--max-scaling", "0.5"]
    scaled = runner.invoke(app, ["predict", *common, "--out", str(tmp_path / "scaled"), *scaling])
    assert plain.exit_code == 0 and scaled.exit_code == 0, scaled.output
    raw = parquet(tmp_path / "plain")
    expected = scale_by_max(raw[LABELS].to_numpy(np.float64), 0.5)
    np.testing.assert_allclose(parquet(tmp_path / "scaled")[LABELS], expected, atol=1e-6)
    bad = runner.invoke(app, ["predict", *common, "--out", str(tmp_path / "bad"), "--max-scaling", "2"])
    assert bad.exit_code == 2 and "max_scaling" in bad.output and "Traceback" not in bad.output
