"""Start-up: what ``dawnchorus --help`` and ``predict`` import, and a model file's network built only
when it runs (issue 16).

``predict`` with the ONNX engine on a graph cached beside the model file runs the log-mel frontend
(numpy) and the graph, the model restored from the record the graph keeps: it must not import torch,
timm, torchvision, Lightning, matplotlib, scikit-learn, dask or the pretrained-backbone zoo, which
took seconds to import on a 2-core machine. Each check runs in a fresh interpreter (a subprocess),
since this test process has imported everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.errors import ModelFileError
from dawnchorus.inference.engines import (
    OnnxRunner,
    batch_function_for,
    cuda_device_count,
    load_for_prediction,
)
from dawnchorus.inference.export import (
    RECORD_KEY,
    cached_onnx_path,
    cached_record,
    export_onnx,
    file_sha256,
    onnx_path_beside,
    read_onnx_metadata,
)
from dawnchorus.io.audio import load as load_audio
from dawnchorus.io.audio import write_audio
from dawnchorus.models.modelfile import load_model, read_record
from tests.conftest import MODEL_LABELS, REPO, synthetic_audio, write_model_file

HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime (the onnx extra) are not installed")

# Not run by predict on a cached ONNX graph, and each slow to import (timm pulls in torchvision).
NOT_RUN_BY_ONNX_PREDICT = (
    "timm",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "matplotlib",
    "sklearn",
    "dask",
    "distributed",
    "onnx",  # onnxruntime runs the graph; the onnx package is only needed to export one
    "scipy.signal",  # librosa.filters imported scipy.signal and numba for the mel filterbank
    "numba",
    "librosa",
    "dawnchorus.embed",
    "dawnchorus.inference.frozen",
    "dawnchorus.models.classifier",
)
# Also not run by the ONNX engines on CPU with a graph that keeps its model file's record.
NOT_RUN_WITH_A_RECORD = ("torch", "dawnchorus.models.features", "dawnchorus.models.embedding_classifier")
# Not run by a predict without --config on recordings at the model's sample rate: YAML is read for a
# --config file (and written by training), soxr resamples recordings at another rate.
NOT_RUN_WITHOUT_CONFIG_AT_THE_MODEL_RATE = ("yaml", "soxr")
PARITY = 1e-4  # onnxruntime against eager torch, as tests/test_export.py
# Where a GPU is visible, predict without --device asks torch about it (the torch engine may run
# there); these tests then say --device cpu, as a user who wants the CPU engines would.
ON_CPU = ["--device", "cpu"] if cuda_device_count() else []


def modules_after(code: str, cwd: Path) -> set[str]:
    """The top-level and dawnchorus modules a fresh interpreter holds after running ``code``."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json, sys
        print("MODULES=" + json.dumps(sorted(sys.modules)))
        """
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (packages: any submodule counts) are among ``modules``."""
    return [name for name in names if any(m == name or m.startswith(name + ".") for m in modules)]


@pytest.fixture
def cached_model(model_file: Path, tmp_path: Path) -> Path:
    """A copy of the shared model file with its graph (log-mel kept in torch) cached beside it."""
    model_path = tmp_path / "model" / "model.pt"
    model_path.parent.mkdir()
    shutil.copy2(model_file, model_path)
    assert cached_onnx_path(model_path, include_frontend=False) == model_path.with_suffix(".cnn.onnx")
    return model_path


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    folder = tmp_path / "recordings"
    folder.mkdir()
    for index, seconds in enumerate((12.0, 7.5)):
        write_audio(folder / f"r{index}.wav", synthetic_audio(seconds, seed=index), 32000)
    return folder


def run_cli(*arguments: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in arguments])
    assert result.exit_code == 0, result.output
    return result.output


# --- what is imported ------------------------------------------------------------------------------------


def test_help_imports_no_torch(tmp_path: Path) -> None:
    modules = modules_after(
        """
        from dawnchorus.cli.app import app
        for arguments in (["--help"], ["predict", "--help"], ["train", "--help"]):
            try:
                app(arguments)
            except SystemExit as exit:
                assert exit.code == 0, exit.code
        """,
        tmp_path,
    )
    assert loaded(modules, ("torch", "numpy", "pandas", *NOT_RUN_BY_ONNX_PREDICT)) == []


@needs_onnx
def test_onnx_predict_on_a_cached_graph_imports_nothing_it_does_not_run(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    modules = modules_after(
        f"""
        from dawnchorus.cli.app import app
        try:
            app(["predict", {str(cached_model)!r}, {str(recordings)!r}, "--out", {str(out)!r},
                 "--engine", "onnx", *{ON_CPU!r}])
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        """,
        tmp_path,
    )
    assert (out / "predictions.csv").is_file()
    assert "onnxruntime" in modules and "dawnchorus.models.logmel_numpy" in modules
    assert loaded(modules, (*NOT_RUN_BY_ONNX_PREDICT, *NOT_RUN_WITH_A_RECORD)) == []


@needs_onnx
def test_csv_predict_without_config_at_the_model_rate_imports_no_yaml_or_resampler(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    """The recordings are at the model's 32 kHz and no --config is given: neither the YAML parser nor
    soxr runs, so neither is imported (as the Python API's predict); a recording at 44.1 kHz and a
    --config file still load them, and the run's predictions are those of the same run in-process."""
    out = tmp_path / "out"
    modules = onnx_predict_modules(cached_model, recordings, out, "--engine", "onnx")
    assert loaded(modules, NOT_RUN_WITHOUT_CONFIG_AT_THE_MODEL_RATE) == []
    api = modules_after(
        f"""
        import dawnchorus
        dawnchorus.predict({str(cached_model)!r}, {str(recordings)!r}, engine="onnx",
                           device={"cpu" if ON_CPU else None!r})
        """,
        tmp_path,
    )
    assert loaded(api, NOT_RUN_WITHOUT_CONFIG_AT_THE_MODEL_RATE) == []
    reference = tmp_path / "reference"
    run_cli("predict", cached_model, recordings, "--out", reference, "--engine", "onnx", "--format", "csv",
            *ON_CPU)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "predictions.csv"), pd.read_csv(reference / "predictions.csv")
    )

    write_audio(recordings / "r44k.wav", synthetic_audio(6.0, seed=5, sample_rate=44100), 44100)
    config = tmp_path / "settings.yaml"
    config.write_text("hop_s: 2.5\n")
    modules = onnx_predict_modules(cached_model, recordings, tmp_path / "resampled", "--engine", "onnx",
                                   "--config", str(config))
    assert loaded(modules, NOT_RUN_WITHOUT_CONFIG_AT_THE_MODEL_RATE) == ["yaml", "soxr"]
    table = pd.read_csv(tmp_path / "resampled" / "predictions.csv")
    assert set(table["file"].map(lambda name: Path(name).name)) == {"r0.wav", "r1.wav", "r44k.wav"}
    assert (table["start_s"] % 2.5 == 0).all() and 2.5 in set(table["start_s"])


@needs_onnx
@pytest.mark.parametrize("members", [1, 2], ids=["one-model", "ensemble"])
def test_python_predict_of_a_model_file_on_a_cached_graph_imports_no_torch_and_equals_the_torch_engine(
    cached_model: Path, recordings: Path, tmp_path: Path, members: int
) -> None:
    """``dawnchorus.predict(path, engine="onnx")`` restores the model from its cached graph's record as
    ``dawnchorus predict`` does (load_for_prediction): no torch, and the torch engine's probabilities."""
    models = [str(cached_model)] * members
    model = models[0] if members == 1 else models
    device = "cpu" if ON_CPU else None
    table = tmp_path / "onnx.pkl"
    modules = modules_after(
        f"""
        import dawnchorus
        frame = dawnchorus.predict({model!r}, {str(recordings)!r}, engine="onnx", device={device!r})
        assert len(frame) > 0 and list(frame.columns) == ["aaa", "bbb", "ccc"], frame
        frame.to_pickle({str(table)!r})
        """,
        tmp_path,
    )
    assert "onnxruntime" in modules
    assert loaded(modules, (*NOT_RUN_BY_ONNX_PREDICT, *NOT_RUN_WITH_A_RECORD)) == []
    import dawnchorus

    reference = dawnchorus.predict(model, recordings, engine="torch", device="cpu")
    onnx = pd.read_pickle(table)
    pd.testing.assert_index_equal(onnx.index, reference.index)
    np.testing.assert_allclose(onnx.to_numpy(), reference.to_numpy(), atol=PARITY)


@needs_onnx
def test_python_predict_on_int8_calibrates_on_its_recordings_like_the_cli(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    """``dawnchorus.predict(path, engine="onnx-int8")`` with no int8 graph yet calibrates one on the
    recordings it is given (as ``predict --engine onnx-int8``), and the next call runs it without torch."""
    import dawnchorus

    device = "cpu" if ON_CPU else None
    first = dawnchorus.predict(cached_model, recordings, engine="onnx-int8", device=device)
    assert cached_model.with_suffix(".cnn.int8.onnx").is_file()
    table = tmp_path / "int8.pkl"
    modules = modules_after(
        f"""
        import dawnchorus
        dawnchorus.predict({str(cached_model)!r}, {str(recordings)!r}, engine="onnx-int8",
                           device={device!r}).to_pickle({str(table)!r})
        """,
        tmp_path,
    )
    assert loaded(modules, (*NOT_RUN_BY_ONNX_PREDICT, *NOT_RUN_WITH_A_RECORD)) == []
    pd.testing.assert_frame_equal(pd.read_pickle(table), first)


@needs_onnx
def test_dask_worker_on_a_cached_graph_imports_nothing_it_does_not_run(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    """A worker's start-up: the model and its batch function, as ``worker_model`` loads them for the
    first task (dask itself is the worker's own; here the task functions run without it)."""
    modules = modules_after(
        f"""
        from pathlib import Path
        import numpy as np
        from dawnchorus.inference.distributed import TaskOptions, model_stamp, worker_model
        path = Path({str(cached_model)!r})
        options = TaskOptions(
            model_path=str(path), model_stamp=model_stamp(path), hop_s=5.0, batch_size=4,
            thresholds=(0.5, 0.5, 0.5), out_dir={str(tmp_path / "out")!r},
            parts_dir={str(tmp_path / "out" / "parts" / "tag")!r}, formats=("csv",),
            merge=False, device="cpu", torch_threads=1, engine="auto",
        )
        model, run = worker_model(options)
        assert run(np.zeros((2, 160000), np.float32)).shape == (2, 3)
        """,
        tmp_path,
    )
    not_run = tuple(name for name in NOT_RUN_BY_ONNX_PREDICT if name not in ("dask", "distributed"))
    assert loaded(modules, (*not_run, *NOT_RUN_WITH_A_RECORD)) == []


# --- same outputs ----------------------------------------------------------------------------------------


@needs_onnx
def test_onnx_predict_without_the_network_equals_the_torch_engine(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    tables = {}
    for engine in ("onnx", "torch"):
        output = run_cli("predict", cached_model, recordings, "--out", tmp_path / engine, "--engine", engine,
                         "--format", "csv")
        assert f"engine: {engine}" in output
        tables[engine] = pd.read_csv(tmp_path / engine / "predictions.csv")
    keys = ["file", "start_s", "end_s"]
    pd.testing.assert_frame_equal(tables["onnx"][keys], tables["torch"][keys])
    labels = list(MODEL_LABELS)
    np.testing.assert_allclose(tables["onnx"][labels], tables["torch"][labels], atol=PARITY)


def test_lazy_model_builds_the_same_network_on_first_use(model_file: Path) -> None:
    eager = load_model(model_file)
    lazy = load_model(model_file, build_network=False)
    assert not lazy.network_is_built
    audio = torch.from_numpy(synthetic_audio(5.0, seed=3)[None])
    with torch.inference_mode():
        spectrogram = lazy.frontend(audio)  # the frontend alone builds no network
        assert not lazy.network_is_built
        torch.testing.assert_close(spectrogram, eager.network.frontend(audio), rtol=0, atol=0)
        torch.testing.assert_close(lazy.network(audio), eager.network(audio), rtol=0, atol=0)
    assert lazy.network_is_built and lazy.network.frontend is lazy.frontend
    assert (lazy.labels, lazy.config, lazy.thresholds) == (eager.labels, eager.config, eager.thresholds)


# --- a model file whose network cannot be built -----------------------------------------------------------


def with_backbone_renamed(model_file: Path, target: Path, backbone: str) -> Path:
    """A copy of ``model_file`` whose settings name ``backbone`` (one the installed timm lacks)."""
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    settings = json.loads(payload["config"])
    settings["model"]["backbone"] = backbone
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**payload, "config": json.dumps(settings)}, target)
    return target


def test_unknown_backbone_is_raised_when_the_network_is_first_used(model_file: Path, tmp_path: Path) -> None:
    path = with_backbone_renamed(model_file, tmp_path / "model.pt", "birdnet_v9_from_2031")
    unknown = r"model\.pt: the model's backbone 'birdnet_v9_from_2031' is not in the installed timm"
    with pytest.raises(ModelFileError, match=unknown):
        load_model(path)
    lazy = load_model(path, build_network=False)  # settings, labels and weights read; no network yet
    assert lazy.labels == list(MODEL_LABELS)
    with pytest.raises(ModelFileError, match=unknown):
        lazy.network  # noqa: B018


@needs_onnx
def test_graph_cached_for_the_very_file_runs_when_timm_lacks_its_backbone(
    model_file: Path, recordings: Path, tmp_path: Path
) -> None:
    """The documented choice: a graph whose SHA-256 is the model file's was exported from that file,
    so ``--engine onnx`` runs it though timm here lacks the backbone; ``--engine torch`` cannot and
    says why in one line (exit 2), and so does onnx once the graph is stale."""
    path = with_backbone_renamed(model_file, tmp_path / "model" / "model.pt", "birdnet_v9_from_2031")
    export_onnx(  # what an installation with that backbone exported from this very file
        load_model(model_file), onnx_path_beside(path, False), include_frontend=False,
        model_sha256=file_sha256(path),
    )
    output = run_cli(
        "predict", path, recordings, "--out", tmp_path / "onnx", "--engine", "onnx", "--format", "csv"
    )
    assert "engine: onnx (model.cnn.onnx" in output
    reference = tmp_path / "reference"
    shutil.copy2(model_file, tmp_path / "reference.pt")
    run_cli("predict", tmp_path / "reference.pt", recordings, "--out", reference, "--engine", "onnx",
            "--format", "csv")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "onnx" / "predictions.csv"), pd.read_csv(reference / "predictions.csv")
    )

    for engine, stale in (("torch", False), ("onnx", True)):
        if stale:
            onnx_path_beside(path, False).unlink()
        out = tmp_path / f"{engine}-refused"
        result = CliRunner().invoke(app, ["predict", str(path), str(recordings), "--out", str(out),
                                          "--engine", engine])
        assert result.exit_code == 2, result.output
        assert "the model's backbone 'birdnet_v9_from_2031' is not in the installed timm" in result.output
        assert "Traceback" not in result.output and not out.exists()


# --- the model file's record in its cached graph (no torch on the ONNX engines) ---------------------------


def onnx_predict_modules(model: Path, recordings: Path, out: Path, *extra: str) -> set[str]:
    """The modules of a fresh ``dawnchorus predict MODEL RECORDINGS --engine onnx`` (exit 0)."""
    arguments = ["predict", str(model), str(recordings), "--out", str(out), "--format", "csv", *extra]
    arguments += ON_CPU
    return modules_after(
        f"""
        from dawnchorus.cli.app import app
        try:
            app({arguments!r})
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        """,
        model.parent,
    )


def set_record(graph: Path, value: str | None) -> None:
    """Replace the record a cached graph keeps (None: none; its other metadata, and so its SHA-256,
    kept)."""
    import onnx

    proto = onnx.load(str(graph))
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key != RECORD_KEY]
    del proto.metadata_props[:]
    for key, text in [*kept, *([] if value is None else [(RECORD_KEY, value)])]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(proto, str(graph))


@needs_onnx
def test_graph_keeps_the_model_files_record_and_predict_restores_the_model_from_it(
    cached_model: Path,
) -> None:
    record = json.loads(read_onnx_metadata(cached_model.with_suffix(".cnn.onnx"))[RECORD_KEY])
    assert record == read_record(cached_model) and "state_dict" not in record
    restored = load_for_prediction(cached_model)
    eager = load_model(cached_model)
    assert (restored.labels, restored.config, restored.thresholds, restored.metadata) == (
        eager.labels, eager.config, eager.thresholds, eager.metadata
    )
    assert not restored.network_is_built and restored.stored_state is None  # weights not read
    audio = torch.from_numpy(synthetic_audio(5.0, seed=3)[None])
    with torch.inference_mode():  # the torch engine still works: weights read from the file on first use
        torch.testing.assert_close(restored.network(audio), eager.network(audio), rtol=0, atol=0)


@needs_onnx
def test_torch_free_predict_equals_the_torch_frontend_on_the_same_graph(
    cached_model: Path, real_data: Path
) -> None:
    """What the ONNX engine gave before (torch's log-mel into the graph) and gives now (numpy's): the
    same probabilities within 1e-5, on real recordings."""
    model = load_for_prediction(cached_model)
    run = batch_function_for(model, "onnx", threads=1)
    windows = np.stack(
        [
            np.pad(clip, (0, max(0, 160000 - len(clip))))[:160000]
            for clip in (
                load_audio(next((real_data / "focal").rglob("*.flac")), 32000),
                load_audio(sorted((real_data / "background").rglob("*.ogg"))[1], 32000),
            )
        ]
    ).astype(np.float32)
    runner = OnnxRunner(cached_model.with_suffix(".cnn.onnx"), threads=1)
    with torch.inference_mode():
        frontend = load_model(cached_model, build_network=False).frontend
        before = runner(frontend(torch.from_numpy(windows)).numpy())
    np.testing.assert_allclose(run(windows), before, atol=1e-5, rtol=0)


@needs_onnx
def test_a_miss_exports_as_before_and_the_next_run_imports_no_torch(
    model_file: Path, recordings: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model" / "model.pt"
    model.parent.mkdir()
    shutil.copy2(model_file, model)
    first = onnx_predict_modules(model, recordings, tmp_path / "first", "--engine", "onnx")
    assert "torch" in first  # no graph yet: the model file read, the network built and exported
    second = onnx_predict_modules(model, recordings, tmp_path / "second", "--engine", "auto")
    assert loaded(second, NOT_RUN_WITH_A_RECORD) == []
    first_table, second_table = (pd.read_csv(tmp_path / r / "predictions.csv") for r in ("first", "second"))
    pd.testing.assert_frame_equal(first_table, second_table)


@needs_onnx
def test_a_graph_cached_before_records_gets_its_record_once(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    graph = cached_model.with_suffix(".cnn.onnx")
    set_record(graph, None)  # as a graph exported by an earlier version: no record
    assert cached_record(cached_model) is None
    first = onnx_predict_modules(cached_model, recordings, tmp_path / "first", "--engine", "onnx")
    assert "torch" in first  # today's path: the model file read
    assert json.loads(read_onnx_metadata(graph)[RECORD_KEY]) == read_record(cached_model)
    assert loaded(onnx_predict_modules(cached_model, recordings, tmp_path / "second", "--engine", "onnx"),
                  NOT_RUN_WITH_A_RECORD) == []


@needs_onnx
@pytest.mark.parametrize(
    "record", ["{not json", json.dumps({"format": "dawnchorus-model", "labels": "aaa"}), json.dumps([1, 2])]
)
def test_a_damaged_record_is_ignored_and_the_model_file_read(
    cached_model: Path, recordings: Path, tmp_path: Path, record: str
) -> None:
    reference = run_cli("predict", cached_model, recordings, "--out", tmp_path / "ref", "--format", "csv")
    set_record(cached_model.with_suffix(".cnn.onnx"), record)
    restored = load_for_prediction(cached_model)
    assert restored.labels == list(MODEL_LABELS) and restored.stored_state is not None  # read from the file
    output = run_cli("predict", cached_model, recordings, "--out", tmp_path / "out", "--format", "csv")
    assert "engine: onnx (model.cnn.onnx, log-mel in numpy)" in output and "engine: onnx" in reference
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "ref" / "predictions.csv"), pd.read_csv(tmp_path / "out" / "predictions.csv")
    )


@needs_onnx
def test_the_record_of_another_model_file_is_never_used(cached_model: Path, tmp_path: Path) -> None:
    """A graph is current only for the SHA-256 it names: a model file retrained in place (other
    labels) is read from itself, its graph exported afresh."""
    graph = cached_model.with_suffix(".cnn.onnx")
    write_model_file(cached_model, labels=("xxx", "yyy"), seed=4)
    assert cached_record(cached_model) is None
    assert load_for_prediction(cached_model).labels == ["xxx", "yyy"]
    assert cached_onnx_path(cached_model, include_frontend=False) == graph
    assert json.loads(read_onnx_metadata(graph)[RECORD_KEY])["labels"] == ["xxx", "yyy"]


def test_no_gpu_device_node_means_no_gpu_without_importing_torch(tmp_path: Path) -> None:
    """``--engine auto`` on a machine without a GPU chooses onnx without asking torch (~1.1 s)."""
    modules = modules_after(
        """
        import glob, sys
        glob.glob = lambda pattern: []  # a machine with no /dev/nvidia*, /dev/kfd, /dev/dxg
        from dawnchorus.inference.engines import cuda_device_count, resolve_engine
        assert cuda_device_count() == 0 and resolve_engine("auto") == "onnx"
        """,
        tmp_path,
    )
    assert "torch" not in modules or not sys.platform.startswith("linux")


@needs_onnx
def test_int8_predict_on_cached_graphs_imports_no_torch(
    cached_model: Path, recordings: Path, tmp_path: Path
) -> None:
    """``--engine onnx-int8`` with its int8 graph cached (and the fp32 CNN graph, whose record gives
    the model) runs without torch too; the first run, which calibrates, imports it."""
    first = onnx_predict_modules(cached_model, recordings, tmp_path / "first", "--engine", "onnx-int8")
    assert "torch" in first and cached_model.with_suffix(".cnn.int8.onnx").is_file()
    second = onnx_predict_modules(cached_model, recordings, tmp_path / "second", "--engine", "onnx-int8")
    assert loaded(second, (*NOT_RUN_BY_ONNX_PREDICT, *NOT_RUN_WITH_A_RECORD)) == []
    first_table, second_table = (pd.read_csv(tmp_path / r / "predictions.csv") for r in ("first", "second"))
    pd.testing.assert_frame_equal(first_table, second_table)


def test_threads_set_for_a_run_are_restored_when_torch_was_first_imported_in_it(
    cached_model: Path, tmp_path: Path
) -> None:
    """A run sets one torch thread and one BLAS thread per lane; afterwards the process has the
    counts it started with, also when the run was the first to import torch (the torch engine)."""
    modules_after(
        f"""
        import subprocess, sys
        from threadpoolctl import threadpool_info
        from dawnchorus.inference.engines import batch_function_for, load_for_prediction, torch_threads_kept
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                     capture_output=True, text=True, check=True).stdout)
        model = load_for_prediction({str(cached_model)!r})
        with torch_threads_kept():
            batch_function_for(model, "torch", device="cpu", threads=2, lanes=2)
            import torch
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == default, (torch.get_num_threads(), default)
        assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"][:len(blas)] == blas
        """,
        tmp_path,
    )
