"""ONNX export and the onnxruntime engine: probabilities match eager torch within 1e-4 (frontend in
the graph or kept in torch; small, efficientnet_b0 and the default mobilenetv4_conv_small backbones;
real and synthetic audio); the cached graph beside the model file is reused and refreshed; the staged
prediction pipeline."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dawnchorus.config import PredictSettings
from dawnchorus.errors import ExportError, PredictionError
from dawnchorus.inference import engines, export
from dawnchorus.inference.engines import (
    OnnxRunner,
    StagedBatchFunction,
    batch_function_for,
    describe_engine,
    onnx_batch_function,
    torch_batch_function,
)
from dawnchorus.inference.export import (
    cached_onnx_path,
    export_onnx,
    onnx_path_beside,
    read_onnx_metadata,
)
from dawnchorus.inference.pipeline import iter_predictions
from dawnchorus.inference.run import predict_frame, run_prediction
from dawnchorus.io.audio import iter_windows, load, write_audio
from dawnchorus.models.modelfile import LoadedModel, load_model
from tests.conftest import real_data_dir, synthetic_audio, write_model_file


def importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HAS_ONNX = importable("onnx") and importable("onnxruntime")
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime (the onnx extra) are not installed")

SR = 32000
CLIP = 5 * SR
LABELS = ["alpha", "bravo", "charlie", "delta", "echo"]
PARITY = 1e-4
CALIBRATION_BACKGROUNDS = (
    "redeclipse_forest2.ogg",
    "redeclipse_river.ogg",
    "redeclipse_rain.ogg",
    "redeclipse_creek.ogg",
    "redeclipse_blowwind.ogg",
    "redeclipse_nightcrickets.ogg",
)


def windows_of(path: Path, count: int) -> np.ndarray:
    """Up to ``count`` whole 5-s windows of a recording, resampled to 32 kHz."""
    samples = load(path, SR)
    usable = min(len(samples) // CLIP, count)
    return samples[: usable * CLIP].reshape(usable, CLIP)


@functools.cache
def calibration_audio() -> np.ndarray:
    """Audio like the test inputs (synthetic, plus real field backgrounds when present), so batch-norm
    statistics fit the data as a trained model's do. The windows tested on are not among them."""
    pieces = [synthetic_audio(30.0, seed=11).reshape(-1, CLIP)]
    real = real_data_dir()
    if real is not None:
        pieces += [windows_of(real / "background" / name, 1) for name in CALIBRATION_BACKGROUNDS]
    return np.concatenate(pieces)


def make_model_file(path: Path, backbone: str, seed: int = 0, **model_settings: object) -> Path:
    """The shared model file's recipe with this module's labels, calibrated on audio like the inputs."""
    return write_model_file(path, LABELS, backbone, seed, calibration_audio(), **model_settings)


@pytest.fixture(scope="module", params=["test_efficientnet", "efficientnet_b0", "mobilenetv4_conv_small"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = tmp_path_factory.mktemp(request.param)
    return load_model(make_model_file(folder / "model.pt", request.param))


@pytest.fixture(scope="module")
def small_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_file(tmp_path_factory.mktemp("small") / "model.pt", "test_efficientnet")


@pytest.fixture()
def small_model(small_model_file: Path, tmp_path: Path) -> LoadedModel:
    """A fresh copy per test (tests change its labels or path, and its cached graph)."""
    copy = tmp_path / "model.pt"
    shutil.copy2(small_model_file, copy)
    return load_model(copy)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two synthetic 32 kHz OGG files: 23 s (a padded last window) and 12 s."""
    folder = tmp_path_factory.mktemp("recordings")
    paths = [folder / "synthetic_a.ogg", folder / "synthetic_b.ogg"]
    write_audio(paths[0], synthetic_audio(23.0, seed=1), SR)
    write_audio(paths[1], synthetic_audio(12.0, seed=2), SR)
    return paths


def real_windows(real_data: Path) -> np.ndarray:
    """Windows of real recordings: forest birds (48 kHz OGG) and storm-petrel song (44.1 kHz stereo
    FLAC), resampled to 32 kHz."""
    return np.concatenate(
        [
            windows_of(real_data / "background" / "redeclipse_forest1.ogg", 3),
            windows_of(real_data / "focal" / "eurstp1" / "XC663885.flac", 2),
        ]
    )


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    """batch_function_for sets torch's thread count; give the next test the usual one back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def eager_probabilities(model: LoadedModel, audio: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(model.network(torch.from_numpy(audio))).numpy()


# --- export and parity ------------------------------------------------------------------------------


@needs_onnx
@pytest.mark.parametrize("include_frontend", [True, False], ids=["frontend-in-onnx", "frontend-in-torch"])
def test_onnx_matches_eager_torch_on_real_and_synthetic_audio(
    model: LoadedModel, include_frontend: bool, real_data: Path, tmp_path: Path
) -> None:
    graph = export_onnx(model, tmp_path / "model.onnx", include_frontend=include_frontend)
    run = onnx_batch_function(model, graph, include_frontend=include_frontend)
    assert isinstance(run, StagedBatchFunction) and (run.prepare is None) == include_frontend
    audio = np.concatenate([real_windows(real_data), synthetic_audio(15.0, seed=7).reshape(3, CLIP)])
    expected = eager_probabilities(model, audio)
    assert expected.std() > 1e-3, "calibrated model should give varied probabilities"
    got = run(audio)
    assert got.shape == (len(audio), len(LABELS)) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=PARITY, rtol=0)
    # The batch axis is dynamic: one window alone gives the same answer as in a batch.
    np.testing.assert_allclose(run(audio[2:3]), expected[2:3], atol=PARITY, rtol=0)


@needs_onnx
@pytest.mark.parametrize("include_frontend", [True, False], ids=["frontend-in-onnx", "frontend-in-torch"])
def test_sed_head_with_three_input_channels_exports_with_parity(
    tmp_path: Path, include_frontend: bool
) -> None:
    model_path = make_model_file(tmp_path / "sed.pt", "test_efficientnet", head="sed", in_chans=3)
    model = load_model(model_path)
    run = onnx_batch_function(model, include_frontend=include_frontend)
    audio = synthetic_audio(15.0, seed=8).reshape(3, CLIP)
    np.testing.assert_allclose(run(audio), eager_probabilities(model, audio), atol=PARITY, rtol=0)


@needs_onnx
def test_export_writes_metadata_and_checks_inputs(small_model: LoadedModel, tmp_path: Path) -> None:
    full = export_onnx(small_model, tmp_path / "full.onnx")
    cnn = export_onnx(small_model, tmp_path / "cnn.onnx", include_frontend=False)
    metadata = read_onnx_metadata(full)
    assert metadata["dawnchorus.include_frontend"] == "1"
    assert read_onnx_metadata(cnn)["dawnchorus.include_frontend"] == "0"
    assert metadata["dawnchorus.labels"] == '["alpha", "bravo", "charlie", "delta", "echo"]'
    assert len(metadata["dawnchorus.model_sha256"]) == 64
    assert not list(tmp_path.glob(".*.tmp")), "the temporary export file is renamed into place"

    runner = OnnxRunner(full, threads=1)
    assert runner.input_name == "audio" and runner.labels == LABELS
    with pytest.raises(ExportError, match=r"input 'audio' expects shape \['batch', 160000\]"):
        runner(np.zeros((2, 1000), np.float32))
    with pytest.raises(ExportError, match="does not include the log-mel frontend"):
        onnx_batch_function(small_model, cnn, include_frontend=True)
    with pytest.raises(ExportError, match="not found"):
        OnnxRunner(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_text("not a graph")
    with pytest.raises(ExportError, match="junk.onnx"):
        read_onnx_metadata(tmp_path / "junk.onnx")


@needs_onnx
def test_metadata_read_without_onnx_is_what_onnx_reads(small_model: LoadedModel, tmp_path: Path) -> None:
    """The cache check reads a graph's metadata without importing onnx (~0.6 s); it must agree with
    onnx's own parser, and a graph cut short (an interrupted copy) is refused, not half read."""
    import onnx

    graph = export_onnx(small_model, tmp_path / "cnn.onnx", include_frontend=False)
    proto = onnx.load(str(graph), load_external_data=False)
    proto.metadata_props.add(key="ünïcode key", value="")  # non-ASCII and empty values survive
    onnx.save(proto, str(graph))
    expected = {entry.key: entry.value for entry in onnx.load(str(graph)).metadata_props}
    assert read_onnx_metadata(graph) == expected
    assert expected["ünïcode key"] == "" and expected["dawnchorus.include_frontend"] == "0"
    data = graph.read_bytes()
    for cut in (len(data) - 3, len(data) // 2, 5):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        with pytest.raises(ExportError, match=r"cut\.onnx: not a readable ONNX file"):
            read_onnx_metadata(tmp_path / "cut.onnx")


@needs_onnx
def test_graph_of_another_model_is_refused(small_model: LoadedModel, tmp_path: Path) -> None:
    graph = export_onnx(small_model, tmp_path / "model.onnx")
    small_model.labels = [*LABELS[:-1], "foxtrot"]
    with pytest.raises(ExportError, match="other labels"):
        onnx_batch_function(small_model, graph)


def test_missing_onnxruntime_names_the_extra(
    small_model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    expected = r"needs the 'onnxruntime' package.*pip install \"dawnchorus\[onnx\]\""
    with pytest.raises(ExportError, match=expected):
        OnnxRunner(tmp_path / "model.onnx")
    with pytest.raises(ExportError, match=r"needs the 'onnx' package"):
        export_onnx(small_model, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match=r"dawnchorus\[onnx\]"):
        batch_function_for(small_model, "onnx")


def test_auto_engine_is_onnx_on_cpu_when_installed_else_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engines.resolve_engine("torch", "cpu") == "torch"
    assert engines.resolve_engine("onnx", "cuda") == "onnx"
    assert engines.resolve_engine("auto", "cuda:0") == "torch"  # the GPU runs eager torch with AMP
    assert engines.resolve_engine("auto", "cpu") == ("onnx" if HAS_ONNX else "torch")
    assert engines.resolve_engine("auto", cuda=False) == ("onnx" if HAS_ONNX else "torch")
    assert engines.resolve_engine("auto", cuda=True) == "torch"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not engines.onnx_available()
    assert engines.resolve_engine("auto", "cpu") == "torch"
    with pytest.raises(ExportError, match="unknown engine 'tensorrt'"):
        engines.resolve_engine("tensorrt")


def test_default_batch_is_small_on_cpu_and_large_on_a_gpu() -> None:
    assert engines.default_batch_size("cpu") == engines.DEFAULT_BATCH_SIZE == 4
    assert engines.default_batch_size("cuda:0") == engines.GPU_BATCH_SIZE == 64
    assert engines.default_batch_size(cuda=True) == 64  # no device named: a GPU when there is one
    assert engines.default_batch_size(cuda=False) == 4
    assert engines.resolve_batch_size("auto", "cuda:1") == 64
    assert engines.resolve_batch_size(7, "cuda:1") == 7
    with pytest.raises(PredictionError, match="batch size must be at least 1"):
        engines.resolve_batch_size(0)


# --- the cache beside the model file ------------------------------------------------------------------


@needs_onnx
def test_cached_export_is_reused_and_refreshed_when_the_model_changes(tmp_path: Path) -> None:
    model_path = make_model_file(tmp_path / "model.pt", "test_efficientnet", seed=0)
    first = cached_onnx_path(model_path)
    assert first == onnx_path_beside(model_path) == tmp_path / "model.onnx"
    stamp = first.stat().st_mtime_ns
    assert cached_onnx_path(model_path) == first
    assert first.stat().st_mtime_ns == stamp, "an up-to-date cache must not be exported again"

    # A newer model file (other weights) replaces the graph.
    make_model_file(model_path, "test_efficientnet", seed=1)
    os.utime(model_path, ns=(stamp + 10**9, stamp + 10**9))
    refreshed = cached_onnx_path(model_path)
    assert refreshed.stat().st_mtime_ns != stamp
    sha = read_onnx_metadata(refreshed)["dawnchorus.model_sha256"]
    model = load_model(model_path)
    audio = synthetic_audio(10.0, seed=3).reshape(2, CLIP)
    np.testing.assert_allclose(OnnxRunner(refreshed)(audio), eager_probabilities(model, audio), atol=PARITY)

    # A different model file that looks older than the graph is still caught by its hash.
    make_model_file(model_path, "test_efficientnet", seed=2)
    older = refreshed.stat().st_mtime_ns - 10**9
    os.utime(model_path, ns=(older, older))
    again = cached_onnx_path(model_path)
    assert read_onnx_metadata(again)["dawnchorus.model_sha256"] != sha

    # The frontend-in-torch graph is cached separately.
    cnn = cached_onnx_path(model_path, include_frontend=False)
    assert cnn == tmp_path / "model.cnn.onnx"
    assert read_onnx_metadata(cnn)["dawnchorus.include_frontend"] == "0"


@needs_onnx
def test_cache_falls_back_to_user_cache_when_the_model_folder_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "readonly"
    model_path = make_model_file(folder / "model.pt", "test_efficientnet")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if os.geteuid() == 0:  # root may write anywhere: only the permission check can say no
        monkeypatch.setattr(export, "folder_is_writable", lambda folder: False)
    folder.chmod(0o555)
    try:
        graph = cached_onnx_path(model_path)
    finally:
        folder.chmod(0o755)
    assert graph.parent == tmp_path / "cache" / "dawnchorus" / "onnx"
    assert not (folder / "model.onnx").exists()
    assert cached_onnx_path(model_path) == graph


def test_cached_onnx_path_of_a_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt: model file not found"):
        cached_onnx_path(tmp_path / "nope.pt")


# --- the engines in prediction ----------------------------------------------------------------------


@needs_onnx
@pytest.mark.parametrize("include_frontend", [True, False])
def test_predict_frame_with_onnx_matches_torch(
    small_model: LoadedModel, recordings: list[Path], real_data: Path, include_frontend: bool
) -> None:
    inputs = [*recordings, real_data / "background" / "redeclipse_river.ogg"]
    with_torch = predict_frame(small_model, inputs, PredictSettings(engine="torch", batch_size=4))
    run = onnx_batch_function(small_model, include_frontend=include_frontend, threads=1)
    with_onnx = predict_frame(small_model, inputs, PredictSettings(batch_size=4), batch_function=run)
    assert with_onnx.index.equals(with_torch.index)
    assert list(with_onnx.columns) == LABELS
    assert len(with_onnx) == 5 + 3 + len(with_onnx.loc[str(inputs[2])])
    np.testing.assert_allclose(with_onnx.to_numpy(), with_torch.to_numpy(), atol=PARITY, rtol=0)


@needs_onnx
def test_batch_function_for_each_engine(small_model: LoadedModel, recordings: list[Path]) -> None:
    torch_run = batch_function_for(small_model, "torch", device="cpu")
    assert isinstance(torch_run, StagedBatchFunction)
    assert describe_engine(torch_run)["engine"] == "torch"
    onnx_run = batch_function_for(small_model, "onnx", threads=2)
    assert describe_engine(onnx_run) == {
        "engine": "onnx",
        "graph": str(small_model.path.with_suffix(".cnn.onnx")),
        "frontend": "numpy",
        "providers": ["CPUExecutionProvider"],
        "lanes": 2,
        "threads_per_lane": 1,
    }
    graph_run = batch_function_for(small_model, "onnx", threads=2, lanes=1, include_frontend=True)
    assert describe_engine(graph_run)["frontend"] == "onnx"
    assert describe_engine(graph_run)["threads_per_lane"] == 2
    audio = synthetic_audio(10.0, seed=5).reshape(2, CLIP)
    np.testing.assert_allclose(onnx_run(audio), torch_run(audio), atol=PARITY, rtol=0)
    np.testing.assert_allclose(graph_run(audio), torch_run(audio), atol=PARITY, rtol=0)
    with pytest.raises(ExportError, match="unknown engine 'tflite'; choose from auto, torch, onnx"):
        batch_function_for(small_model, "tflite")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="threads must be at least 1"):
        batch_function_for(small_model, "onnx", threads=0)
    with pytest.raises(ExportError, match="unknown device 'tpu'"):
        batch_function_for(small_model, "torch", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ExportError, match="'cuda:1' requested, but torch sees no CUDA device"):
            batch_function_for(small_model, "onnx", device="cuda:1")


@needs_onnx
def test_onnx_runner_names_a_missing_execution_provider(small_model: LoadedModel, tmp_path: Path) -> None:
    graph = export_onnx(small_model, tmp_path / "model.onnx")
    with pytest.raises(ExportError, match="has no NoSuchExecutionProvider .*use --engine torch"):
        OnnxRunner(graph, providers=["NoSuchExecutionProvider", "CPUExecutionProvider"])


@needs_onnx
def test_model_without_a_file_exports_to_a_temporary_graph(small_model: LoadedModel) -> None:
    small_model.path = None
    run = onnx_batch_function(small_model)
    audio = synthetic_audio(5.0, seed=9).reshape(1, CLIP)
    np.testing.assert_allclose(run(audio), eager_probabilities(small_model, audio), atol=PARITY)


@needs_onnx
def test_run_prediction_with_onnx_writes_the_same_tables(
    small_model: LoadedModel, recordings: list[Path], tmp_path: Path
) -> None:
    csv_only = PredictSettings(engine="torch", formats="csv")
    by_torch = run_prediction(small_model, recordings, tmp_path / "torch", csv_only)
    run = batch_function_for(small_model, "onnx")
    by_onnx = run_prediction(small_model, recordings, tmp_path / "onnx", csv_only, batch_function=run)
    assert by_torch.windows == by_onnx.windows == 8
    torch_table = pd.read_csv(by_torch.outputs["csv"])
    onnx_table = pd.read_csv(by_onnx.outputs["csv"])
    keys = ["file", "start_s", "end_s"]
    pd.testing.assert_frame_equal(torch_table[keys], onnx_table[keys])
    np.testing.assert_allclose(onnx_table[LABELS].to_numpy(), torch_table[LABELS].to_numpy(), atol=PARITY)


# --- the staged pipeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("lanes", [1, 2])
def test_staged_function_runs_its_stages_where_its_lanes_say(
    small_model: LoadedModel, recordings: list[Path], lanes: int
) -> None:
    prepared_in: set[str] = set()
    plain = torch_batch_function(small_model, "cpu")

    def prepare(audio: np.ndarray) -> np.ndarray:
        prepared_in.add(threading.current_thread().name)
        return audio * 1.0

    staged = StagedBatchFunction(prepare=prepare, classify=plain, lanes=lanes)
    results = list(iter_predictions(recordings, staged, LABELS, SR, 5.0, batch_size=3))
    if lanes == 1:
        assert prepared_in == {"dawnchorus-decoder"}
    else:
        assert prepared_in and all(name.startswith("dawnchorus-lane") for name in prepared_in)
    reference = list(iter_predictions(recordings, lambda a: plain(a), LABELS, SR, 5.0, batch_size=3))
    for got, expected in zip(results, reference, strict=True):
        np.testing.assert_allclose(got.frame[LABELS].to_numpy(), expected.frame[LABELS].to_numpy(), atol=1e-6)
        assert got.frame["start_s"].tolist() == expected.frame["start_s"].tolist()


def test_lanes_finishing_out_of_order_keep_every_window_in_place(recordings: list[Path]) -> None:
    """A fake engine whose 'probabilities' are the window's first samples, with random delays so
    batches finish out of order: every row must still hold its own window."""
    rng = np.random.default_rng(0)
    delays = iter(rng.uniform(0, 0.02, size=1000))

    def first_samples(audio: np.ndarray) -> np.ndarray:
        time.sleep(next(delays))
        return audio[:, 1000 : 1000 + len(LABELS)].copy()

    staged = StagedBatchFunction(prepare=None, classify=first_samples, lanes=3)
    results = list(iter_predictions(recordings, staged, LABELS, SR, 2.0, hop_s=1.0, batch_size=2))
    assert [r.path for r in results] == recordings
    for result in results:
        windows = iter_windows(result.path, SR, 2.0, 1.0)
        expected = np.stack([w.samples[1000 : 1000 + len(LABELS)] for w in windows])
        np.testing.assert_array_equal(result.frame[LABELS].to_numpy(), expected)
        np.testing.assert_allclose(result.frame["start_s"], np.arange(len(expected)) * 1.0)
    with pytest.raises(PredictionError, match="lanes must be at least 1"):
        StagedBatchFunction(prepare=None, classify=first_samples, lanes=0)


def test_an_engine_failure_ends_the_run_instead_of_failing_each_file(
    small_model: LoadedModel, recordings: list[Path]
) -> None:
    def broken(audio: np.ndarray) -> np.ndarray:
        raise RuntimeError("frontend exploded")

    staged = StagedBatchFunction(prepare=broken, classify=lambda features: features)
    with pytest.raises(RuntimeError, match="frontend exploded"):
        list(iter_predictions(recordings, staged, LABELS, SR, 5.0))
    with pytest.raises(PredictionError, match="batch size must be at least 1"):
        list(iter_predictions(recordings, staged, LABELS, SR, 5.0, batch_size=0))


@needs_onnx
def test_cli_export_and_predict_with_the_onnx_engine(model_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dawnchorus.cli.app import app

    model_path = tmp_path / "model.pt"
    shutil.copy2(model_file, model_path)
    runner = CliRunner()
    exported = runner.invoke(
        app, ["export", str(model_path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    )
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "m.onnx").stat().st_size > 0
    recording = tmp_path / "rec.ogg"
    write_audio(recording, np.random.default_rng(0).uniform(-0.2, 0.2, 32000 * 10), 32000)
    tables = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        result = runner.invoke(
            app,
            [
                "predict",
                str(model_path),
                str(recording),
                "--out",
                str(out),
                "--engine",
                engine,
                "--format",
                "csv",
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"engine: {engine}" in result.output  # the user is told what ran
        tables[engine] = pd.read_csv(out / "predictions.csv")
    assert len(tables["onnx"]) == len(tables["torch"]) == 2
    np.testing.assert_allclose(
        tables["onnx"][["aaa", "bbb", "ccc"]].to_numpy(),
        tables["torch"][["aaa", "bbb", "ccc"]].to_numpy(),
        atol=1e-4,
    )
