"""ONNX export of a model file, and the onnxruntime engine for prediction.

:func:`export_onnx` writes the network as an ONNX graph with a dynamic batch axis whose output is
the per-class probability. The log-mel frontend is either part of the graph (input ``audio``,
``(batch, samples)``) or kept in torch (input ``spectrogram``, ``(batch, 1, n_mels, frames)``).
:func:`cached_onnx_path` exports a model file once and keeps ``<model>.onnx`` beside it, refreshed
when the model file changes (its sha256 is stored in the ONNX metadata). :func:`batch_function_for`
returns the batch function ``dawnchorus predict --engine torch|onnx`` runs.

``onnx`` and ``onnxruntime`` are the optional extra ``dawnchorus[onnx]``; they are imported only
when an ONNX function is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from dawnchorus.errors import ExportError
from dawnchorus.inference.run import (
    DEFAULT_BATCH_SIZE,
    BatchFunction,
    StagedBatchFunction,
    torch_batch_function,
)
from dawnchorus.io.files import atomic_write, usable_cores
from dawnchorus.version import __version__

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

Engine = Literal["auto", "torch", "onnx"]
ENGINES: tuple[str, ...] = ("auto", "torch", "onnx")
DEFAULT_OPSET = 17

# Keys of the ONNX metadata_props written by export_onnx.
SHA256_KEY = "dawnchorus.model_sha256"
FRONTEND_KEY = "dawnchorus.include_frontend"
LABELS_KEY = "dawnchorus.labels"
VERSION_KEY = "dawnchorus.version"
INPUT_KEY = "dawnchorus.input_shape"

# An onnxruntime execution provider: a name, or (name, options).
Provider = str | tuple[str, dict[str, Any]]

AUDIO_INPUT = "audio"
SPECTROGRAM_INPUT = "spectrogram"
OUTPUT = "probabilities"


# --- optional dependencies -----------------------------------------------------------------------


def _require(module: str) -> ModuleType:
    """Import ``onnx`` or ``onnxruntime``, or fail telling the user how to install them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"the ONNX engine needs the '{module}' package, which is not installed: "
            f'pip install "dawnchorus[onnx]"'
        ) from exc


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_engine(engine: str, device: str | None = None) -> Literal["torch", "onnx"]:
    """The engine ``auto`` stands for: onnx on CPU when the extra is installed (measured here ~1.4x
    the throughput of eager torch at parity), else torch; ``torch`` and ``onnx`` stand for themselves."""
    if engine not in ENGINES:
        raise ExportError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine != "auto":
        return engine  # type: ignore[return-value]
    return "onnx" if not _wants_gpu(device) and onnx_available() else "torch"


GPU_BATCH_SIZE = 64  # a GPU is fed best by large batches (the CPU default is infer.DEFAULT_BATCH_SIZE)


def default_batch_size(device: str | None = None) -> int:
    """Windows per batch when the user gives none: small on CPU (activations stay in cache), large
    on a GPU."""
    return GPU_BATCH_SIZE if _wants_gpu(device) else DEFAULT_BATCH_SIZE


def _wants_gpu(device: str | None) -> bool:
    return (device is not None and device.startswith("cuda")) or (device is None and _cuda_available())


# --- export ----------------------------------------------------------------------------------------


class _ProbabilityGraph(nn.Module):
    """What is exported: (audio or spectrogram) -> sigmoid probabilities."""

    def __init__(self, model: LoadedModel, include_frontend: bool) -> None:
        super().__init__()
        self.network = model.network
        self.include_frontend = include_frontend

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.include_frontend:
            inputs = self.network.frontend(inputs)
        return torch.sigmoid(self.network.classifier(inputs).float())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _example_input(model: LoadedModel, include_frontend: bool) -> torch.Tensor:
    samples = model.config.audio.clip_samples
    generator = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, samples, generator=generator)
    if include_frontend:
        return audio
    with torch.inference_mode():
        return model.network.frontend(audio).clone()


def export_onnx(
    model: LoadedModel,
    out: str | Path,
    include_frontend: bool = True,
    opset: int = DEFAULT_OPSET,
    model_sha256: str | None = None,
) -> Path:
    """Write ``model`` as an ONNX graph giving probabilities ``(batch, classes)``; returns ``out``.

    With ``include_frontend`` the input is ``audio`` ``(batch, clip_samples)``; without it the input
    is ``spectrogram`` ``(batch, 1, n_mels, frames)`` and the caller computes the log-mel in torch.
    The batch axis is dynamic. ``model_sha256`` (default: the hash of ``model.path`` when set) is
    stored in the metadata so a cache can tell which model file the graph came from. The file is
    written atomically.
    """
    onnx = _require("onnx")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if model_sha256 is None and model.path is not None and Path(model.path).is_file():
        model_sha256 = file_sha256(model.path)
    graph = _ProbabilityGraph(model, include_frontend).cpu().eval()
    example = _example_input(model, include_frontend)
    input_name = AUDIO_INPUT if include_frontend else SPECTROGRAM_INPUT

    def write(temporary: Path) -> None:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                graph,
                (example,),
                str(temporary),
                dynamo=False,
                opset_version=opset,
                input_names=[input_name],
                output_names=[OUTPUT],
                dynamic_axes={input_name: {0: "batch"}, OUTPUT: {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(str(temporary))
        metadata = {
            SHA256_KEY: model_sha256 or "",
            FRONTEND_KEY: "1" if include_frontend else "0",
            LABELS_KEY: json.dumps(list(model.labels)),
            VERSION_KEY: __version__,
            INPUT_KEY: json.dumps(["batch", *example.shape[1:]]),
        }
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(temporary))

    try:
        atomic_write(out, write)
    except Exception as exc:
        if isinstance(exc, ExportError):
            raise
        raise ExportError(f"{out}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file (without loading its weights into a session)."""
    onnx = _require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types on a damaged file
        raise ExportError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return {entry.key: entry.value for entry in proto.metadata_props}


# --- the cache beside the model file ----------------------------------------------------------------


def onnx_path_beside(model_path: str | Path, include_frontend: bool = True) -> Path:
    """Where the cached graph of ``model_path`` lives: ``model.onnx`` (``model.cnn.onnx`` without
    the frontend) in the same folder."""
    model_path = Path(model_path)
    suffix = ".onnx" if include_frontend else ".cnn.onnx"
    return model_path.with_name(model_path.stem + suffix)


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dawnchorus" / "onnx"


def _cache_is_current(onnx_path: Path, model_path: Path, sha256: str, include_frontend: bool) -> bool:
    if not onnx_path.is_file() or onnx_path.stat().st_mtime < model_path.stat().st_mtime:
        return False
    try:
        metadata = read_onnx_metadata(onnx_path)
    except ExportError:
        return False
    return metadata.get(SHA256_KEY) == sha256 and metadata.get(FRONTEND_KEY) == (
        "1" if include_frontend else "0"
    )


def cached_onnx_path(
    model_path: str | Path,
    model: LoadedModel | None = None,
    include_frontend: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """The ONNX graph of a model file, exported on first use and reused afterwards.

    The graph is kept beside the model file (see :func:`onnx_path_beside`) and exported again when
    the model file is newer than it or the model file's sha256 differs from the one in its metadata.
    When the model's folder is not writable, the graph goes to ``~/.cache/dawnchorus/onnx``.
    ``model`` (the loaded model file) saves loading it again when an export is needed.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    sha256 = file_sha256(model_path)
    beside = onnx_path_beside(model_path, include_frontend)
    fallback = _user_cache_dir() / f"{sha256[:32]}{'' if include_frontend else '.cnn'}.onnx"
    for candidate in (beside, fallback):
        if _cache_is_current(candidate, model_path, sha256, include_frontend):
            return candidate
    if model is None:
        from dawnchorus.models.modelfile import load_model

        model = load_model(model_path)
    if folder_is_writable(beside.parent):
        try:
            return export_onnx(model, beside, include_frontend, opset, model_sha256=sha256)
        except ExportError as exc:
            if not isinstance(exc.__cause__, OSError):
                raise
    return export_onnx(model, fallback, include_frontend, opset, model_sha256=sha256)


def folder_is_writable(folder: Path) -> bool:
    """Whether new files can be created in ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)


# --- the onnxruntime engine --------------------------------------------------------------------------


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRunner:
    """An onnxruntime session over an exported graph: ``(batch, ...) float32 -> probabilities``.

    ``threads`` sets the intra-op thread count (default: the usable cores,
    :func:`dawnchorus.io.files.usable_cores`). Spinning of idle worker threads is off: the decoding
    thread needs the cores between batches.
    """

    def __init__(
        self, onnx_path: str | Path, threads: int | None = None, providers: list[Provider] | None = None
    ) -> None:
        ort = _require("onnxruntime")
        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: ONNX file not found")
        options = ort.SessionOptions()
        self.threads = threads or usable_cores()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The arena keeps CPU cost low; the memory pattern would pre-plan (and keep) a second
        # large block per batch shape for no measured speed gain.
        options.enable_mem_pattern = False
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        requested = providers or ["CPUExecutionProvider"]
        missing = [
            name
            for name in map(_provider_name, requested)
            if name not in ort.get_available_providers()
        ]
        if missing:
            raise ExportError(
                f"onnxruntime {ort.__version__} here has no {', '.join(missing)} (it has "
                f"{', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu, "
                f"or use --engine torch"
            )
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=requested)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"{self.path}: onnxruntime cannot load it ({exc})") from exc
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(model_input.shape)
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.includes_frontend = metadata.get(FRONTEND_KEY, "1") == "1"
        self.labels: list[str] = json.loads(metadata.get(LABELS_KEY, "[]"))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(batch, classes)`` of an input batch shaped like the graph's input."""
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        if inputs.shape[1:] != self.input_shape[1:]:
            raise ExportError(
                f"{self.path}: input '{self.input_name}' expects shape {list(self.input_shape)}, "
                f"got {list(inputs.shape)}"
            )
        return self.session.run([OUTPUT], {self.input_name: inputs})[0]


def _torch_frontend(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    frontend = model.network.frontend.cpu().eval()

    @torch.inference_mode()
    def spectrogram(audio: np.ndarray) -> np.ndarray:
        return frontend(torch.from_numpy(audio)).numpy()

    return spectrogram


def _check_labels(model: LoadedModel, runner: OnnxRunner) -> None:
    if runner.labels and runner.labels != list(model.labels):
        raise ExportError(
            f"{runner.path}: the ONNX graph was exported from a model with other labels "
            f"({len(runner.labels)} vs {len(model.labels)}); re-export it"
        )


def onnx_batch_function(
    model: LoadedModel,
    onnx_path: str | Path | None = None,
    include_frontend: bool = True,
    threads: int | None = None,
    providers: list[Provider] | None = None,
    lanes: int = 1,
) -> BatchFunction:
    """Audio batch ``(B, T)`` -> probabilities ``(B, C)`` through onnxruntime.

    ``onnx_path`` is an exported graph (default: the cached export of ``model.path``, or a temporary
    export when the model has no file). With the frontend kept in torch, the model's torch frontend
    computes the log-mel and only the CNN runs in onnxruntime. The result is a
    :class:`~dawnchorus.inference.run.StagedBatchFunction` with ``lanes`` lanes, each session call using
    ``threads`` intra-op threads, so prediction overlaps decoding, log-mel and CNN.
    """
    if onnx_path is None:
        runner = _runner_for_model(model, include_frontend, threads, providers)
    else:
        runner = OnnxRunner(onnx_path, threads, providers)
        if runner.includes_frontend != include_frontend:
            kind = "includes" if runner.includes_frontend else "does not include"
            raise ExportError(
                f"{onnx_path}: this graph {kind} the log-mel frontend; "
                f"pass include_frontend={runner.includes_frontend}"
            )
    _check_labels(model, runner)
    prepare = None if include_frontend else _torch_frontend(model)
    return StagedBatchFunction(prepare=prepare, classify=runner, lanes=lanes)


def _runner_for_model(
    model: LoadedModel, include_frontend: bool, threads: int | None, providers: list[Provider] | None
) -> OnnxRunner:
    if model.path is not None and Path(model.path).is_file():
        path = cached_onnx_path(model.path, model, include_frontend)
        return OnnxRunner(path, threads, providers)
    # A model with no file (built in Python): export to a temporary file, which onnxruntime reads
    # into memory when the session is created.
    with tempfile.TemporaryDirectory(prefix="dawnchorus-onnx-") as folder:
        path = export_onnx(model, Path(folder) / "model.onnx", include_frontend)
        return OnnxRunner(path, threads, providers)


def _onnx_providers(device: str | None) -> list[Provider]:
    """CUDA (on the chosen GPU) then CPU for ``cuda[:N]``; CPU otherwise."""
    if device is not None and device.startswith("cuda"):
        index = device.split(":", 1)[1] if ":" in device else "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def batch_function_for(
    model: LoadedModel,
    engine: Engine = "torch",
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    lanes: int | None = None,
    include_frontend: bool = False,
) -> BatchFunction:
    """The batch function ``predict`` runs for ``engine`` (``auto``, ``torch`` or ``onnx``; see
    :func:`resolve_engine`) on ``device``.

    On CPU, ``threads`` (default: :func:`dawnchorus.io.files.usable_cores`) are split into ``lanes``
    (default: one per thread) that each classify a batch with ``threads // lanes`` intra-op threads:
    independent single-threaded batches use the cores better than one batch spread over them. On
    CUDA there is one lane, and ``batch_size`` sizes the pinned transfer buffer. The ONNX engine uses
    the graph cached beside the model file (exported on first use); by default the log-mel stays
    in torch (onnxruntime's STFT is slower), ``include_frontend=True`` runs it in the graph too.
    The graph comes from ``model.path`` as saved: weights changed in memory and not saved are not
    in it (a model without a file is exported afresh).
    """
    engine = resolve_engine(engine, device)
    if batch_size < 1:
        raise ExportError(f"batch size must be at least 1, got {batch_size}")
    for name, value in (("threads", threads), ("lanes", lanes)):
        if value is not None and value < 1:
            raise ExportError(f"{name} must be at least 1, got {value}")
    on_gpu = _wants_gpu(device)
    if on_gpu and not _cuda_available():
        raise ExportError(f"device {device!r} requested, but torch sees no CUDA device; use --device cpu")
    if device is not None and not on_gpu and device != "cpu":
        raise ExportError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    threads = threads or usable_cores()
    lanes = 1 if on_gpu else min(lanes or threads, threads)
    per_lane = max(1, threads // lanes)
    torch.set_num_threads(per_lane)
    if engine == "torch":
        return torch_batch_function(model, device, batch_size=batch_size, lanes=lanes)
    return onnx_batch_function(
        model,
        include_frontend=include_frontend,
        threads=per_lane,
        providers=_onnx_providers(device if on_gpu else "cpu"),
        lanes=lanes,
    )


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def describe_engine(batch_function: BatchFunction) -> dict[str, Any]:
    """What a batch function runs on, for logs and benchmark tables."""
    staged = isinstance(batch_function, StagedBatchFunction)
    target = batch_function.classify if staged else batch_function
    lanes = batch_function.lanes if staged else 1
    if isinstance(target, OnnxRunner):
        return {
            "engine": "onnx",
            "graph": str(target.path),
            "frontend": "onnx" if target.includes_frontend else "torch",
            "providers": target.session.get_providers(),
            "lanes": lanes,
            "threads_per_lane": target.threads,
        }
    return {"engine": "torch", "lanes": lanes, "threads_per_lane": torch.get_num_threads()}
