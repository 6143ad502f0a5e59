"""Prediction engines: which network runs a batch of windows, on what, and how many windows at once.

Owns the batch-function contract (:data:`BatchFunction`, :class:`StagedBatchFunction`), the eager
torch engine (CPU lanes, CUDA with float16 autocast), the onnxruntime engine (:class:`OnnxRunner`
over the graph :mod:`dawnchorus.inference.export` writes and caches), the choice between them
(``auto``, ``torch``, ``onnx``, ``onnx-int8``: :func:`resolve_engine`, :func:`batch_function_for`) and the
batch-size choice (:func:`default_batch_size`, :func:`resolve_batch_size`). It does not decode
audio, batch windows or write files (``pipeline.py``, ``run.py``), nor export graphs (``export.py``).

``onnxruntime`` is the optional extra ``dawnchorus[onnx]``; it is imported only when the ONNX engine
is used. A model on a frozen pretrained backbone (``train --backbone birdnet``) has one engine
whatever is asked: its backbone in the backbone's own runtime and its head in torch
(:mod:`dawnchorus.inference.frozen`, imported only for such a model). The ONNX engine builds the
timm network only when the graph must be exported: with a graph cached for the model file it runs
the log-mel frontend and the graph, and timm is never imported. ``onnx-int8`` is the same engine
over the CNN's int8 graph (:mod:`dawnchorus.inference.quantise`), chosen only when asked for.

Without torch: on CPU both ONNX engines compute the log-mel in numpy
(:class:`~dawnchorus.models.logmel_numpy.NumpyLogMel`: the training frontend's values to float32
rounding, and not slower per window than torch's), and :func:`load_for_prediction` restores a model
file from the record its cached graph keeps, so ``predict --engine onnx`` on a cached graph (and a
Dask worker running it) never imports torch (``import torch`` was ~1.1 s of a ~2.3 s start-up).
torch is imported where it runs: the torch engine, CUDA, exporting a graph, a frozen backbone's head.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dawnchorus.config import ENGINES
from dawnchorus.errors import ExportError, ModelFileError, PredictionError
from dawnchorus.inference.export import (
    CALIBRATION_KEY,
    FRONTEND_KEY,
    LABELS_KEY,
    OUTPUT,
    QUANTISATION_KEY,
    cached_onnx_path,
    cached_record,
    export_onnx,
    require,
)
from dawnchorus.io.files import usable_cores

if TYPE_CHECKING:
    import torch

    from dawnchorus.models.modelfile import LoadedModel

BatchFunction = Callable[[np.ndarray], np.ndarray]

Engine = Literal["auto", "torch", "onnx", "onnx-int8"]

# Windows per batch. On CPU small batches are fastest (activations stay in cache; measured here with
# two lanes: batch 4 gives ~1.4x the throughput of batch 32 with ~1 GB less memory, batches of 1-4
# are alike; `predict` with batch 32 ran at 443x real time, with batch 4 at 532x). A GPU is fed best
# by large batches (64 or more).
DEFAULT_BATCH_SIZE = 4
GPU_BATCH_SIZE = 64

# An onnxruntime execution provider: a name, or (name, options).
Provider = str | tuple[str, dict[str, Any]]

# --- which engine, which batch size ---------------------------------------------------------------


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_engine(
    engine: str, device: str | None = None, *, cuda: bool | None = None
) -> Literal["torch", "onnx", "onnx-int8"]:
    """The engine ``auto`` stands for: onnx on CPU when the extra is installed (measured here ~1.4x
    the throughput of eager torch at parity), else torch; ``torch``, ``onnx`` and ``onnx-int8`` stand
    for themselves (int8 is never chosen for the user: its scores are not fp32's, see
    :mod:`dawnchorus.inference.quantise`).

    ``device`` None means the best one here: a GPU when ``cuda`` (default: whether torch sees one).
    """
    if engine not in ENGINES:
        raise ExportError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine != "auto":
        return engine  # type: ignore[return-value]
    return "onnx" if not wants_gpu(device, cuda=cuda) and onnx_available() else "torch"


def default_batch_size(device: str | None = None, *, cuda: bool | None = None) -> int:
    """Windows per batch when the user gives none: small on CPU (activations stay in cache), large
    on a GPU (see :data:`DEFAULT_BATCH_SIZE`). ``device`` and ``cuda`` as in :func:`resolve_engine`."""
    return GPU_BATCH_SIZE if wants_gpu(device, cuda=cuda) else DEFAULT_BATCH_SIZE


def resolve_batch_size(batch_size: int | str, device: str | None = None, *, cuda: bool | None = None) -> int:
    """``batch_size`` itself, or for ``"auto"`` the :func:`default_batch_size` of ``device``."""
    if batch_size == "auto":
        return default_batch_size(device, cuda=cuda)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PredictionError(f"batch size must be at least 1 or 'auto', got {batch_size!r}")
    return batch_size


def wants_gpu(device: str | None, *, cuda: bool | None = None) -> bool:
    """Whether ``device`` is a GPU; None stands for a GPU when ``cuda`` (default: torch sees one,
    see :func:`cuda_device_count`)."""
    if device is not None:
        return device.startswith("cuda")
    return cuda_device_count() > 0 if cuda is None else cuda


# Device nodes a GPU torch can use shows on Linux: NVIDIA's, ROCm's (torch.cuda on AMD), WSL's.
_GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def cuda_device_count() -> int:
    """How many GPUs torch sees here. On Linux with no GPU device node (``/dev/nvidia*``,
    ``/dev/kfd``, ``/dev/dxg``) that is 0 without importing torch (~1.1 s); elsewhere torch counts."""
    if "torch" not in sys.modules and sys.platform.startswith("linux"):
        if not any(glob.glob(pattern) for pattern in _GPU_DEVICE_NODES):
            return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def load_for_prediction(path: str | Path) -> LoadedModel:
    """A model file loaded for ``predict``: restored from the record its current cached graph keeps
    (:func:`~dawnchorus.inference.export.cached_record`: same SHA-256, see
    :func:`~dawnchorus.models.modelfile.model_from_record`) without reading the torch archive, else
    :func:`~dawnchorus.models.modelfile.load_model` ``(path, build_network=False)`` as before (no
    graph, one of another file, an older graph without a record, a record that is not one). Either
    way the network is built (and torch imported) only when an engine runs it, the weights then read
    from the file."""
    from dawnchorus.models.modelfile import load_model, model_from_record

    record = cached_record(path)
    if record is not None:
        try:
            return model_from_record(path, record)
        except ModelFileError:
            pass  # the file itself says what is wrong, or loads
    return load_model(path, build_network=False)


# --- the batch-function contract and the torch engine --------------------------------------------


@dataclass(frozen=True)
class StagedBatchFunction:
    """A batch function in two stages, so prediction can pipeline them over the cores.

    ``prepare`` turns an audio batch ``(B, T)`` into features (e.g. log-mel spectrograms; ``None``:
    the audio itself) and ``classify`` turns features into probabilities ``(B, C)``. ``lanes`` is how
    many batches prediction may classify at once, each in a thread of its own (``classify`` must then
    be thread safe; engines make it single-threaded per call, which wastes no time in synchronisation).
    With one lane, ``prepare`` runs in the decoding thread, overlapped with ``classify``; with more,
    each lane prepares and classifies its own batch and the decoding thread only decodes. Calling
    the object runs both stages, so it is also a plain :data:`BatchFunction`.
    """

    prepare: Callable[[np.ndarray], Any] | None
    classify: Callable[[Any], np.ndarray]
    lanes: int = 1

    def __post_init__(self) -> None:
        if self.lanes < 1:
            raise PredictionError(f"lanes must be at least 1, got {self.lanes}")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.classify(batch if self.prepare is None else self.prepare(batch))


def torch_batch_function(
    model: LoadedModel,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lanes: int = 1,
) -> BatchFunction:
    """Audio batch (B, T) float32 -> probabilities (B, C) with the eager torch network.

    On CPU the result is a :class:`StagedBatchFunction`: the log-mel frontend is its ``prepare``
    stage, the CNN (in channels-last layout, faster with oneDNN) its ``classify`` stage, run in
    ``lanes`` threads (give each lane one torch thread: ``torch.set_num_threads(1)``). On CUDA the
    audio goes through a pinned buffer of ``batch_size`` windows and the CNN runs under float16
    autocast (the STFT stays float32). A model on a frozen backbone gets its
    :func:`~dawnchorus.inference.frozen.frozen_batch_function`.
    """
    import torch

    if model.backbone is not None:
        from dawnchorus.inference.frozen import frozen_batch_function

        return frozen_batch_function(model, device)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = model.network.to(device).eval()
    if device.type == "cuda":
        return _cuda_batch_function(network, device, batch_size)
    frontend = network.frontend
    classifier = network.classifier.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def spectrogram(batch: np.ndarray) -> torch.Tensor:
        return frontend(torch.from_numpy(batch)).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def classify(spec: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(classifier(spec).float()).numpy()

    return StagedBatchFunction(prepare=spectrogram, classify=classify, lanes=lanes)


def _cuda_batch_function(network: torch.nn.Module, device: torch.device, batch_size: int) -> BatchFunction:
    import torch

    staging: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        rows, samples = batch.shape
        buffer = staging.get(samples)
        if buffer is None or buffer.shape[0] < rows:
            buffer = torch.empty((max(rows, batch_size), samples), dtype=torch.float32).pin_memory()
            staging[samples] = buffer
        buffer[:rows].copy_(torch.from_numpy(batch))
        audio = buffer[:rows].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16):
            logits = network(audio)
        return torch.sigmoid(logits.float()).cpu().numpy()

    return run



@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's intra-op thread count and numpy's BLAS threads on exit (engines set one
    thread per lane: :func:`set_threads`). torch is not imported for this: when it was first imported
    inside, its count is set back to the one it started with."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    blas = _blas_limit()
    kept = blas.info() if blas is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads or _TORCH_THREADS.get("default") or torch.get_num_threads())
        if blas is not None and kept:
            for library in kept:
                blas.select(filepath=library["filepath"]).limit(limits=library["num_threads"])


# torch's thread count before set_threads first changed it (torch imported after a block began).
_TORCH_THREADS: dict[str, int] = {}


def set_threads(threads: int) -> None:
    """One lane's threads: torch's intra-op count (when torch is imported, or when it is, later:
    the torch engine sets it again) and numpy's BLAS (the numpy log-mel's products; OpenBLAS
    spins its own threads otherwise: 5.3 CPU-s for 0.3 s of work measured with two)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        _TORCH_THREADS.setdefault("default", torch.get_num_threads())
        torch.set_num_threads(threads)
    blas = _blas_limit()
    if blas is not None:
        blas.limit(limits=threads, user_api="blas")


def _blas_limit() -> Any:
    """threadpoolctl's controller of numpy's BLAS, or None without threadpoolctl (scikit-learn's
    dependency, so normally here)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    if "controller" not in _BLAS:
        _BLAS["controller"] = ThreadpoolController()
    return _BLAS["controller"]


_BLAS: dict[str, Any] = {}


# --- the onnxruntime engine ----------------------------------------------------------------------


def _provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxRunner:
    """An onnxruntime session over an exported graph: ``(batch, ...) float32 -> probabilities``.

    ``threads`` sets the intra-op thread count (default: the usable cores). Spinning of idle
    worker threads is off: the decoding thread needs the cores between batches.
    """

    def __init__(
        self, onnx_path: str | Path, threads: int | None = None, providers: list[Provider] | None = None
    ) -> None:
        ort = require("onnxruntime")
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
        # An int8 graph (dawnchorus.inference.quantise) says how it was quantised and calibrated.
        self.quantisation: dict[str, Any] | None = (
            json.loads(metadata[QUANTISATION_KEY]) if QUANTISATION_KEY in metadata else None
        )
        self.calibration_sha256 = metadata.get(CALIBRATION_KEY)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(batch, classes)`` of an input batch shaped like the graph's input."""
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        if inputs.shape[1:] != self.input_shape[1:]:
            raise ExportError(
                f"{self.path}: input '{self.input_name}' expects shape {list(self.input_shape)}, "
                f"got {list(inputs.shape)}"
            )
        return self.session.run([OUTPUT], {self.input_name: inputs})[0]


def numpy_frontend(model: LoadedModel) -> Callable[[np.ndarray], np.ndarray]:
    """The model's log-mel frontend in numpy (no torch; the training frontend's values to float32
    rounding): the ``prepare`` stage of both ONNX engines on CPU."""
    from dawnchorus.models.logmel_numpy import NumpyLogMel

    if model.backbone is not None:
        raise ExportError(f"{model.path or 'model'}: a head on a frozen backbone has no log-mel frontend")
    return NumpyLogMel.from_settings(model.config.audio, model.config.frontend)


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
    export when the model has no file). With the frontend kept out of the graph, the numpy log-mel
    (:mod:`dawnchorus.models.logmel_numpy`) computes it and only the CNN runs in onnxruntime. The result is a
    :class:`StagedBatchFunction` with ``lanes`` lanes, each session call using
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
    prepare = None if include_frontend else numpy_frontend(model)
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


def int8_batch_function(
    model: LoadedModel,
    calibration: Sequence[str | Path] | None = None,
    threads: int | None = None,
    lanes: int = 1,
) -> BatchFunction:
    """Audio batch ``(B, T)`` -> probabilities ``(B, C)``: log-mel in numpy, the CNN's int8 graph in
    onnxruntime on CPU (:class:`StagedBatchFunction` with ``lanes`` lanes of ``threads`` threads).

    The graph is the one cached beside ``model.path`` or, when there is none yet, calibrated on the
    recordings ``calibration``; a model without a file is quantised into a temporary graph
    (``calibration`` needed).
    """
    from dawnchorus.inference.quantise import (
        cached_int8_path,
        calibration_windows,
        quantise_model,
    )

    if model.path is not None and Path(model.path).is_file():
        runner = OnnxRunner(cached_int8_path(model.path, model, calibration), threads)
    else:
        if not calibration:
            raise ExportError(
                "the onnx-int8 engine needs recordings to calibrate on for a model without a file"
            )
        audio = model.config.audio
        windows = calibration_windows(calibration, audio.sample_rate, audio.clip_s)
        with tempfile.TemporaryDirectory(prefix="dawnchorus-int8-") as folder:
            runner = OnnxRunner(quantise_model(model, Path(folder) / "model.cnn.int8.onnx", windows), threads)
    _check_labels(model, runner)
    return StagedBatchFunction(prepare=numpy_frontend(model), classify=runner, lanes=lanes)


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
    calibration: Sequence[str | Path] | None = None,
) -> BatchFunction:
    """The batch function ``predict`` runs for ``engine`` (``auto``, ``torch``, ``onnx`` or
    ``onnx-int8``; see :func:`resolve_engine`) on ``device``.

    On CPU, ``threads`` (default: :func:`dawnchorus.io.files.usable_cores`) are split into ``lanes``
    (default: one per thread) that each classify a batch with ``threads // lanes`` intra-op threads:
    independent single-threaded batches use the cores better than one batch spread over them. On
    CUDA there is one lane, and ``batch_size`` sizes the pinned transfer buffer. The ONNX engine uses
    the graph cached beside the model file (exported on first use); by default the log-mel runs in
    numpy (:func:`numpy_frontend`; onnxruntime's STFT is slower), ``include_frontend=True`` runs it
    in the graph too.
    The graph comes from ``model.path`` as saved: weights changed in memory and not saved are not
    in it (a model without a file is exported afresh). A model on a frozen backbone runs its
    backbone (``threads`` threads) and torch head whatever ``engine`` says: there is no ONNX graph of
    a backbone that is not in the model file. ``onnx-int8`` (CPU only) runs the int8 graph cached
    beside the model file, or calibrates one first on the recordings ``calibration`` (see
    :func:`dawnchorus.inference.quantise.cached_int8_path`); the log-mel runs in numpy.
    """
    engine = resolve_engine(engine, device)
    if batch_size < 1:
        raise ExportError(f"batch size must be at least 1, got {batch_size}")
    for name, value in (("threads", threads), ("lanes", lanes)):
        if value is not None and value < 1:
            raise ExportError(f"{name} must be at least 1, got {value}")
    on_gpu = wants_gpu(device)
    if engine == "onnx-int8" and device is not None and on_gpu:
        raise ExportError("the onnx-int8 engine runs on CPU only; use --device cpu or another engine")
    on_gpu = on_gpu and engine != "onnx-int8"
    if on_gpu and not cuda_device_count():
        raise ExportError(f"device {device!r} requested, but torch sees no CUDA device; use --device cpu")
    if device is not None and not on_gpu and device != "cpu":
        raise ExportError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    threads = threads or usable_cores()
    lanes = 1 if on_gpu else min(lanes or threads, threads)
    per_lane = max(1, threads // lanes)
    set_threads(per_lane)
    if model.backbone is not None:
        from dawnchorus.inference.frozen import frozen_batch_function

        return frozen_batch_function(model, device if on_gpu else "cpu", threads=threads)
    if engine == "torch":
        import torch  # noqa: F401 - imported first, so that set_threads sets (and remembers) its threads

        set_threads(per_lane)
        return torch_batch_function(model, device, batch_size=batch_size, lanes=lanes)
    if engine == "onnx-int8":
        return int8_batch_function(model, calibration, threads=per_lane, lanes=lanes)
    return onnx_batch_function(
        model,
        include_frontend=include_frontend,
        threads=per_lane,
        providers=_onnx_providers(device if on_gpu else "cpu"),
        lanes=lanes,
    )


def describe_engine(batch_function: BatchFunction) -> dict[str, Any]:
    """What a batch function runs on, for logs and benchmark tables."""
    frozen = sys.modules.get("dawnchorus.inference.frozen")  # imported by whoever built such a function
    if frozen is not None and isinstance(batch_function, frozen.FrozenBackboneFunction):
        return batch_function.describe()
    staged = isinstance(batch_function, StagedBatchFunction)
    target = batch_function.classify if staged else batch_function
    lanes = batch_function.lanes if staged else 1
    if isinstance(target, OnnxRunner):
        return {
            "engine": "onnx" if target.quantisation is None else "onnx-int8",
            "graph": str(target.path),
            "frontend": "onnx" if target.includes_frontend else "numpy",
            "providers": target.session.get_providers(),
            "lanes": lanes,
            "threads_per_lane": target.threads,
            **({} if target.quantisation is None else {
                "quantisation": target.quantisation, "calibration_sha256": target.calibration_sha256,
            }),
        }
    import torch

    return {"engine": "torch", "lanes": lanes, "threads_per_lane": torch.get_num_threads()}
