"""int8 graphs of a model's CNN: onnxruntime static quantisation calibrated on audio windows, and
their cache beside the model file (the ``onnx-int8`` engine runs them).

What is quantised is the CNN graph the ONNX engine runs (``MODEL.cnn.onnx``, input ``spectrogram``):
the log-mel frontend stays outside the graph, in numpy (the training frontend's values to float32
rounding), as for the fp32 engine. Calibration feeds log-mel spectrograms of real audio windows (the
user's recordings or training clips, :func:`calibration_windows`), computed by that same numpy
frontend (:func:`log_mel_windows`), through the graph to find each activation's range.

Format (measured with one thread on this machine's CPU, ``efficientnet_b0``, batch 4; the CPU has
AVX512-VNNI): QDQ and QOperator give the same kernels and speed (7.5 vs 10.0 CPU ms per window
fp32); uint8 activations with int8 weights are the fast path (int8 activations: 30 ms, slower than
fp32); weights per output channel. QDQ is what onnxruntime recommends on x86-64.

Which nodes are quantised and how activations are calibrated is a :class:`Recipe`;
``bench/quantise.py --recipes all`` scores each against fp32 and ``--speed`` times it (table in
bench/README.md). :data:`DEFAULT_RECIPE` keeps the head (global pooling, classifier, output sigmoid:
under 1 % of the CNN's time) in fp32: quantising it rounded every probability to 256 steps between
the calibration windows' lowest and highest, which tied and capped scores.

:func:`cached_int8_path` keeps ``MODEL.cnn.int8.onnx`` beside the model file. Its metadata holds
the model file's SHA-256 (a retrained model is never run with an old graph), the recipe's name and
version (a graph of another recipe is remade, never reused) and the SHA-256 of the calibration
windows (shown by ``predict``); a graph of the current model file is used whatever it
was calibrated on, so the cache is not rebuilt for every new set of inputs. ``dawnchorus export
MODEL --int8 --calibration AUDIO`` replaces it with a graph calibrated on chosen audio.
``onnxruntime`` (with its quantisation tools) and ``onnx`` are the ``onnx`` extra, imported only here.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dawnchorus.errors import AudioError, DawnchorusError, ExportError
from dawnchorus.inference.export import (
    CALIBRATION_KEY,
    FRONTEND_KEY,
    QUANTISATION_KEY,
    SHA256_KEY,
    SPECTROGRAM_INPUT,
    cached_onnx_path,
    export_onnx,
    file_sha256,
    folder_is_writable,
    read_onnx_metadata,
    require,
    user_cache_dir,
)
from dawnchorus.inference.windows import expand_inputs, windows_in
from dawnchorus.io.audio import iter_windows
from dawnchorus.io.files import atomic_write

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

# Windows the activation ranges are calibrated on unless a recipe says otherwise: 64 windows (5.3 min
# of audio, 16 batches of 4) spread over the recordings; the default recipe takes 256.
CALIBRATION_WINDOWS = 64
CALIBRATION_BATCH = 4
# What the metadata says the graph is (see the module docstring for the measurements).
QUANTISATION = "qdq-u8s8-per-channel"
# Parts of the graph a recipe can keep in fp32 (see :func:`fp32_nodes`).
PARTS = ("head", "stem", "squeeze-excite", "activations")


@dataclass(frozen=True)
class Recipe:
    """How a CNN graph is quantised: the calibration method (``minmax``, ``percentile`` at
    ``percentile``, ``entropy``), the parts of the graph kept in fp32 (:data:`PARTS`), and
    onnxruntime ``extra_options``; ``windows``: how many audio windows it calibrates on;
    ``nodes_fp32``: further nodes kept in fp32, by name (bench/quantise.py's sensitivity scan). Its
    ``name`` and ``version`` go into the graph's metadata: a cached graph made by another recipe is
    not reused (:func:`int8_graph_is_current`)."""

    name: str
    version: int
    calibration: str = "minmax"
    percentile: float = 99.999
    keep_fp32: tuple[str, ...] = ()
    extra_options: dict[str, Any] = field(default_factory=dict)
    windows: int = CALIBRATION_WINDOWS
    nodes_fp32: tuple[str, ...] = ()


# Recipes measured by bench/quantise.py (bench/README.md has the table); DEFAULT_RECIPE, the one
# predict and export use, moved the metrics least. Version 1 quantised every node, the probabilities
# included (rounded to 256 steps); none met issue 16's 0.005 bound on every trained model.
RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe("all-minmax", 1),
        Recipe("head-fp32", 2, keep_fp32=("head",)),
        Recipe("head-fp32-percentile", 2, calibration="percentile", keep_fp32=("head",)),
        Recipe("head-fp32-percentile-99.99", 2, calibration="percentile", percentile=99.99,
               keep_fp32=("head",)),
        Recipe("head-fp32-entropy", 2, calibration="entropy", keep_fp32=("head",)),
        Recipe("head-stem-fp32", 2, keep_fp32=("head", "stem")),
        Recipe("head-se-fp32", 2, keep_fp32=("head", "squeeze-excite")),
        Recipe("head-act-fp32", 2, keep_fp32=("head", "activations")),
        Recipe("head-fp32-moving-average", 2, keep_fp32=("head",),
               extra_options={"CalibMovingAverage": True}),
        Recipe("head-fp32-256", 2, keep_fp32=("head",), windows=256),
    )
}
DEFAULT_RECIPE = RECIPES["head-fp32-256"]


def int8_path_beside(model_path: str | Path) -> Path:
    """Where the cached int8 graph of ``model_path`` lives: ``MODEL.cnn.int8.onnx`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".cnn.int8.onnx")


def calibration_windows(
    inputs: Sequence[str | Path], sample_rate: int, clip_s: float, count: int | None = None
) -> np.ndarray:
    """Up to ``count`` (default: :data:`DEFAULT_RECIPE`'s) audio windows ``(N, clip samples)``
    float32, spread evenly over the recordings ``inputs`` (files, folders, .txt lists, as ``predict``
    takes them): each file gives its share, at evenly spaced window positions. Files that cannot
    be read are skipped; none readable is an :class:`ExportError` naming the inputs."""
    count = count or DEFAULT_RECIPE.windows
    recordings = expand_inputs(list(inputs))
    lengths: list[tuple[Path, int]] = []
    for path in recordings:
        try:
            windows, _ = windows_in(path, sample_rate, clip_s, clip_s)
        except AudioError:
            continue
        if windows > 0:
            lengths.append((path, windows))
    picked: list[np.ndarray] = []
    share = max(1, -(-count // max(1, len(lengths))))  # ceil
    for path, windows in lengths:
        positions = sorted({int(i) for i in np.linspace(0, windows - 1, min(share, windows))})
        for position in positions:
            if len(picked) >= count:
                break
            try:
                window = next(iter_windows(path, sample_rate, clip_s, first_window=position, max_windows=1))
            except (AudioError, StopIteration):
                break  # a file that fails half way gives what it gave
            picked.append(window.samples.astype(np.float32, copy=False))
    if not picked:
        names = ", ".join(str(p) for p in inputs[:3]) + (" ..." if len(inputs) > 3 else "")
        raise ExportError(f"no readable audio to calibrate the int8 graph on (inputs: {names or 'none'})")
    return np.stack(picked)


def windows_sha256(windows: np.ndarray) -> str:
    """SHA-256 of calibration windows (their float32 samples and shape): the calibration set's key."""
    digest = hashlib.sha256(json.dumps(list(windows.shape)).encode())
    digest.update(np.ascontiguousarray(windows, dtype=np.float32).tobytes())
    return digest.hexdigest()


def quantise_model(
    model: LoadedModel,
    out: str | Path,
    windows: np.ndarray,
    model_sha256: str | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> Path:
    """Write the int8 graph of ``model``'s CNN, calibrated on audio ``windows`` ``(N, samples)``
    by ``recipe``, to ``out`` (atomically); returns ``out``.

    The fp32 CNN graph is the cached export of ``model.path`` (exported now if needed) or, for a
    model without a file, a temporary export. Its input is ``spectrogram`` like the fp32 CNN graph's;
    its metadata is the fp32 graph's plus the calibration windows' SHA-256 and the quantisation.
    """
    require("onnx")
    ort = require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if model.backbone is not None:
        raise ExportError(
            f"{model.path or 'model'}: a head on the frozen {model.backbone.get('name')} backbone has no "
            "CNN graph to quantise; predict runs it as it is"
        )
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 2 or len(windows) == 0:
        raise ExportError(f"calibration needs audio windows shaped (N, samples), got {list(windows.shape)}")
    spectrograms = log_mel_windows(model, windows)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {SPECTROGRAM_INPUT: spectrograms[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(spectrograms), CALIBRATION_BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="dawnchorus-int8-") as folder:
        work = Path(folder)
        if model.path is not None and Path(model.path).is_file():
            fp32 = cached_onnx_path(model.path, model, include_frontend=False)
            model_sha256 = model_sha256 or file_sha256(model.path)
        else:
            fp32 = export_onnx(
                model, work / "model.cnn.onnx", include_frontend=False, model_sha256=model_sha256
            )
        metadata = read_onnx_metadata(fp32)
        metadata[CALIBRATION_KEY] = windows_sha256(windows)
        metadata[QUANTISATION_KEY] = json.dumps(
            {"format": QUANTISATION, "recipe": recipe.name, "recipe_version": recipe.version,
             "windows": len(windows), "onnxruntime": ort.__version__}
        )
        if model_sha256 is not None:
            metadata[SHA256_KEY] = model_sha256
        prepared = work / "prepared.onnx"
        quantised = work / "int8.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32), str(prepared))
                method = {
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[recipe.calibration]
                options = dict(recipe.extra_options)
                if recipe.calibration == "percentile":
                    options["CalibPercentile"] = recipe.percentile
                quantize_static(
                    str(prepared),
                    str(quantised),
                    _Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=[
                        *fp32_nodes(require("onnx").load(str(prepared)), recipe.keep_fp32),
                        *recipe.nodes_fp32,
                    ],
                    calibrate_method=method,
                    extra_options=options,
                )
        except DawnchorusError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime's tools raise many kinds
            raise ExportError(f"{out}: int8 quantisation failed ({type(exc).__name__}: {exc})") from exc
        atomic_write(out, lambda temporary: _save_with_metadata(quantised, temporary, metadata))
    return out


def fp32_nodes(graph: Any, parts: Sequence[str]) -> list[str]:
    """Names of the nodes of the ONNX model ``graph`` (a ``ModelProto``) in the ``parts``
    (:data:`PARTS`) that a recipe keeps in fp32:

    - ``head``: the global pooling and everything after it (no convolution downstream): the
      classifier and the output probabilities, which uint8 would round to steps of 1/255;
    - ``stem``: the first convolution (on the log-mel input);
    - ``squeeze-excite``: timm's squeeze-excitation branches (nodes named ``.../se/...``);
    - ``activations``: every Sigmoid and the Mul that makes SiLU of it.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ExportError(f"unknown graph parts {unknown} (known: {', '.join(PARTS)})")
    nodes = list(graph.graph.node)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    # whether a convolution is downstream of each node (nodes are in topological order)
    conv_below = [False] * len(nodes)
    for index in reversed(range(len(nodes))):
        below = [c for name in nodes[index].output for c in consumers.get(name, [])]
        conv_below[index] = any(nodes[c].op_type == "Conv" or conv_below[c] for c in below)
    keep: set[int] = set()
    if "head" in parts:
        pools = {"ReduceMean", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool", "Flatten"}
        frontier = [i for i, node in enumerate(nodes) if node.op_type in pools and not conv_below[i]]
        while frontier:
            index = frontier.pop()
            if index not in keep:
                keep.add(index)
                frontier.extend(c for name in nodes[index].output for c in consumers.get(name, []))
    if "stem" in parts:
        inputs = {value.name for value in graph.graph.input}
        keep.update(i for i, node in enumerate(nodes) if node.op_type == "Conv" and node.input[0] in inputs)
    if "squeeze-excite" in parts:
        keep.update(i for i, node in enumerate(nodes) if "/se/" in node.name)
    if "activations" in parts:
        sigmoids = {name for node in nodes if node.op_type == "Sigmoid" for name in node.output}
        keep.update(
            i for i, node in enumerate(nodes)
            if node.op_type == "Sigmoid" or (node.op_type == "Mul" and sigmoids & set(node.input))
        )
    return [nodes[i].name for i in sorted(keep)]


def int8_graph_is_current(path: Path, model_path: Path) -> bool:
    """Whether ``path`` is an int8 graph of the model file ``model_path`` as it is now, made by
    :data:`DEFAULT_RECIPE` (a graph of an older recipe is remade, never silently reused)."""
    if not path.is_file() or path.stat().st_mtime < model_path.stat().st_mtime:
        return False
    try:
        metadata = read_onnx_metadata(path)
    except ExportError:
        return False
    return (
        metadata.get(SHA256_KEY) == file_sha256(model_path)
        and metadata.get(FRONTEND_KEY) == "0"
        and CALIBRATION_KEY in metadata
        and made_by(metadata) == (DEFAULT_RECIPE.name, DEFAULT_RECIPE.version)
    )


def made_by(metadata: dict[str, str]) -> tuple[str, int] | None:
    """The recipe (name, version) an int8 graph's metadata names; graphs of the first recipe (no
    recipe recorded) read as ``("all-minmax", 1)``, anything unreadable as ``None``."""
    try:
        quantisation = json.loads(metadata[QUANTISATION_KEY])
        return str(quantisation.get("recipe", "all-minmax")), int(quantisation.get("recipe_version", 1))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def cached_int8_path(
    model_path: str | Path,
    model: LoadedModel | None = None,
    calibration: Sequence[str | Path] | None = None,
) -> Path:
    """The int8 graph of a model file: the cached one when current (see the module docstring), else
    calibrated now on the recordings ``calibration`` and cached beside the model file (or in
    ``~/.cache/dawnchorus/onnx`` when its folder is not writable).

    With no current graph and no ``calibration`` the error says how to make one.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ExportError(f"{model_path}: model file not found")
    sha256 = file_sha256(model_path)
    beside = int8_path_beside(model_path)
    fallback = user_cache_dir() / f"{sha256[:32]}.cnn.int8.onnx"
    for candidate in (beside, fallback):
        if int8_graph_is_current(candidate, model_path):
            return candidate
    if not calibration:
        older = [
            f"{candidate} was made by recipe {recipe[0]} v{recipe[1]}"
            for candidate in (beside, fallback)
            if candidate.is_file() and (recipe := _recipe_of(candidate)) is not None
            and recipe != (DEFAULT_RECIPE.name, DEFAULT_RECIPE.version)
        ]
        if older:
            raise ExportError(
                f"{model_path}: its int8 graph is out of date ({older[0]}; this version quantises by "
                f"{DEFAULT_RECIPE.name} v{DEFAULT_RECIPE.version}); remake it with 'dawnchorus export "
                f"{model_path} --int8 --calibration AUDIO', or give predict the recordings to calibrate on"
            )
        raise ExportError(
            f"{model_path}: no int8 graph calibrated for this model file yet; make one with "
            f"'dawnchorus export {model_path} --int8 --calibration AUDIO' (a few recordings like those "
            "you will predict), or give predict the recordings to calibrate on"
        )
    if model is None:
        from dawnchorus.models.modelfile import load_model

        model = load_model(model_path, build_network=False)
    audio = model.config.audio
    windows = calibration_windows(calibration, audio.sample_rate, audio.clip_s, DEFAULT_RECIPE.windows)
    target = beside if folder_is_writable(beside.parent) else fallback
    return quantise_model(model, target, windows, model_sha256=sha256)


def prepare_int8(models: Sequence[LoadedModel], calibration: Sequence[str | Path]) -> None:
    """Make sure each model with a file (and a CNN) has its int8 graph, calibrating it on the
    recordings ``calibration`` where none is cached: ``predict --engine onnx-int8`` does this
    before it runs (once, also for a cluster, whose workers then load the graph)."""
    for model in models:
        if model.backbone is None and model.path is not None and Path(model.path).is_file():
            cached_int8_path(model.path, model, calibration)


def _recipe_of(path: Path) -> tuple[str, int] | None:
    try:
        return made_by(read_onnx_metadata(path))
    except ExportError:
        return None


def log_mel_windows(model: LoadedModel, windows: np.ndarray) -> np.ndarray:
    """The CNN input of audio ``windows`` ``(N, samples)``, float32: the model's log-mel as the ONNX
    engines compute it when they run the graph (:class:`~dawnchorus.models.logmel_numpy.NumpyLogMel`,
    in batches of :data:`CALIBRATION_BATCH`), so calibration sees exactly what ``predict`` feeds."""
    from dawnchorus.models.logmel_numpy import NumpyLogMel

    frontend = NumpyLogMel.from_settings(model.config.audio, model.config.frontend)
    parts = [
        frontend(windows[i : i + CALIBRATION_BATCH]) for i in range(0, len(windows), CALIBRATION_BATCH)
    ]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _save_with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> None:
    onnx = require("onnx")
    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
