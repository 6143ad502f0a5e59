"""ONNX export of a model file, and the cache of exported graphs beside it.

:func:`export_onnx` writes the network as an ONNX graph with a dynamic batch axis whose output is
the per-class probability. The log-mel frontend is either part of the graph (input ``audio``,
``(batch, samples)``) or kept in torch (input ``spectrogram``, ``(batch, 1, n_mels, frames)``).
:func:`cached_onnx_path` exports a model file once and keeps ``<model>.onnx`` beside it, refreshed
when the model file changes (its sha256 is stored in the ONNX metadata). Running a graph (the
onnxruntime engine) and choosing an engine belong to :mod:`dawnchorus.inference.engines`.

``onnx`` and ``onnxruntime`` are the optional extra ``dawnchorus[onnx]``; they are imported only
when an ONNX function is used, and ``onnx`` only to export: checking a cached graph reads its
metadata without it and needs no network, so a current graph runs without timm being imported.
torch is imported only to export. A graph exported from a model file keeps the file's record (its
labels, settings, thresholds, calibration: :func:`dawnchorus.models.modelfile.read_record`, plain
JSON data, never code) beside its SHA-256, so :func:`cached_record` gives ``predict`` the model
without reading the torch archive (see :func:`dawnchorus.inference.engines.load_for_prediction`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO

from dawnchorus.errors import DawnchorusError, ExportError
from dawnchorus.io.files import atomic_write
from dawnchorus.version import __version__

if TYPE_CHECKING:
    import torch

    from dawnchorus.models.modelfile import LoadedModel

DEFAULT_OPSET = 17

# Keys of the ONNX metadata_props written by export_onnx.
SHA256_KEY = "dawnchorus.model_sha256"
FRONTEND_KEY = "dawnchorus.include_frontend"
LABELS_KEY = "dawnchorus.labels"
VERSION_KEY = "dawnchorus.version"
INPUT_KEY = "dawnchorus.input_shape"
# The model file's record (JSON): written when the graph is exported from the file's own bytes.
RECORD_KEY = "dawnchorus.model_record"
# Written by dawnchorus.inference.quantise on int8 graphs only.
CALIBRATION_KEY = "dawnchorus.calibration_sha256"
QUANTISATION_KEY = "dawnchorus.quantisation"

AUDIO_INPUT = "audio"
SPECTROGRAM_INPUT = "spectrogram"
OUTPUT = "probabilities"


# --- optional dependencies -----------------------------------------------------------------------


def require(module: str) -> ModuleType:
    """Import ``onnx`` or ``onnxruntime``, or fail telling the user how to install them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(
            f"the ONNX engine needs the '{module}' package, which is not installed: "
            f'pip install "dawnchorus[onnx]"'
        ) from exc


# --- export ----------------------------------------------------------------------------------------


def _probability_graph(model: LoadedModel, include_frontend: bool) -> torch.nn.Module:
    """What is exported: (audio or spectrogram) -> sigmoid probabilities."""
    import torch

    class ProbabilityGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = model.network
            self.include_frontend = include_frontend

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            if self.include_frontend:
                inputs = self.network.frontend(inputs)
            return torch.sigmoid(self.network.classifier(inputs).float())

    return ProbabilityGraph()


# sha256 of the files hashed in this process, by (path, inode, size, mtime_ns): a model file is
# read once per run although the ONNX cache and the run folder's tag both need its hash.
_SHA256_SEEN: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks; remembered while the file is unchanged (same
    inode, size and modification time), so a second call for the same file does not read it again."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_SEEN:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_SEEN[key] = digest.hexdigest()
    return _SHA256_SEEN[key]


def _example_input(model: LoadedModel, include_frontend: bool) -> torch.Tensor:
    import torch

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
    stored in the metadata so a cache can tell which model file the graph came from; when it is the
    hash of ``model.path`` as it is now, the file's record (:data:`RECORD_KEY`) is stored too. The
    file is written atomically. A model on a frozen backbone (``train --backbone birdnet``) is refused: its
    backbone is not in the model file, so there is no graph to write.
    """
    if model.backbone is not None:
        raise ExportError(
            f"{model.path or 'model'}: a head on the frozen {model.backbone.get('name')} backbone cannot "
            "be exported to ONNX (the backbone is not in the model file); predict runs it as it is"
        )
    import torch

    onnx = require("onnx")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    has_file = model.path is not None and Path(model.path).is_file()
    if model_sha256 is None and has_file:
        model_sha256 = file_sha256(model.path)
    record = _record_of(model.path) if has_file and model_sha256 == file_sha256(model.path) else None
    graph = _probability_graph(model, include_frontend).cpu().eval()
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
        if record is not None:
            metadata[RECORD_KEY] = record
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(temporary))

    try:
        atomic_write(out, write)
    except Exception as exc:
        if isinstance(exc, DawnchorusError):  # an ExportError, or an output that cannot be written
            raise
        raise ExportError(f"{out}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    return out


def _record_of(model_path: str | Path) -> str | None:
    """The model file's record as JSON, or None when it has none (a frozen backbone's head)."""
    from dawnchorus.models.modelfile import read_record

    try:
        return json.dumps(read_record(model_path), sort_keys=True)
    except (DawnchorusError, TypeError, ValueError):
        return None


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file, read without loading its graph or importing ``onnx``.

    The file is walked field by field as the protobuf wire format lays out an ONNX ``ModelProto``
    (field 14: ``metadata_props``, each a key (1) / value (2) string pair); the graph and its
    weights are skipped over, not read. ``import onnx`` alone took ~0.6 s here (most of it
    ml_dtypes), longer than checking a cached graph should take. A file that is no such message (or
    has no graph) is an :class:`ExportError` naming it.
    """
    try:
        with open(path, "rb") as handle:
            fields = _message_fields(handle, os.fstat(handle.fileno()).st_size, wanted={_METADATA_FIELD})
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the ONNX file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ExportError(f"{path}: not a readable ONNX file ({exc})") from exc
    if _GRAPH_FIELD not in fields.seen:
        raise ExportError(f"{path}: not a readable ONNX file (it holds no graph)")
    metadata: dict[str, str] = {}
    for entry in fields.values.get(_METADATA_FIELD, []):
        try:
            pair = _message_fields(io.BytesIO(entry), len(entry), wanted={1, 2})
            key = b"".join(pair.values.get(1, [b""])[-1:]).decode("utf-8")
            value = b"".join(pair.values.get(2, [b""])[-1:]).decode("utf-8")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ExportError(f"{path}: not a readable ONNX file (damaged metadata: {exc})") from exc
        metadata[key] = value
    return metadata


# ModelProto field numbers (onnx/onnx.proto): the graph, and the metadata_props export_onnx writes.
_GRAPH_FIELD = 7
_METADATA_FIELD = 14


@dataclass
class _Fields:
    seen: set[int] = field(default_factory=set)  # every field number met
    values: dict[int, list[bytes]] = field(default_factory=dict)  # length-delimited values of wanted ones


def _message_fields(handle: BinaryIO, size: int, wanted: set[int]) -> _Fields:
    """The fields of one protobuf message filling ``size`` bytes of ``handle``: the number of every
    field, and the bytes of the length-delimited ``wanted`` ones (others are skipped by seeking)."""
    fields = _Fields()
    end = handle.tell() + size
    while handle.tell() < end:
        tag = _varint(handle)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        fields.seen.add(number)
        if wire_type == 0:
            _varint(handle)
        elif wire_type == 1 or wire_type == 5:
            handle.seek(8 if wire_type == 1 else 4, io.SEEK_CUR)
        elif wire_type == 2:
            length = _varint(handle)
            if handle.tell() + length > end:
                raise ValueError(f"field {number} runs past the end")
            if number in wanted:
                fields.values.setdefault(number, []).append(handle.read(length))
            else:
                handle.seek(length, io.SEEK_CUR)
        else:
            raise ValueError(f"field {number} has wire type {wire_type}")
    if handle.tell() != end:
        raise ValueError("the last field runs past the end")
    return fields


def _varint(handle: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ValueError("cut short")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


# --- the cache beside the model file ----------------------------------------------------------------


def onnx_path_beside(model_path: str | Path, include_frontend: bool = True) -> Path:
    """Where the cached graph of ``model_path`` lives: ``model.onnx`` (``model.cnn.onnx`` without
    the frontend) in the same folder."""
    model_path = Path(model_path)
    suffix = ".onnx" if include_frontend else ".cnn.onnx"
    return model_path.with_name(model_path.stem + suffix)


def user_cache_dir() -> Path:
    """Where graphs go when the model file's folder is not writable: ``~/.cache/dawnchorus/onnx``
    (``$XDG_CACHE_HOME`` respected)."""
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


def cached_record(model_path: str | Path) -> dict[str, Any] | None:
    """The record (:data:`RECORD_KEY`) a current cached graph of ``model_path`` keeps (the CNN graph
    ``MODEL.cnn.onnx`` first, then ``MODEL.onnx``; beside the file or in :func:`user_cache_dir`), or
    None: no current graph (another SHA-256, older than the file), or one exported without a record
    or with one that is not JSON. The record is plain data (what it holds is checked by
    :func:`dawnchorus.models.modelfile.model_from_record`)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        return None
    sha256 = file_sha256(model_path)
    for include_frontend in (False, True):
        for candidate in _cache_candidates(model_path, sha256, include_frontend):
            if not _cache_is_current(candidate, model_path, sha256, include_frontend):
                continue
            try:
                record = json.loads(read_onnx_metadata(candidate).get(RECORD_KEY) or "null")
            except (ExportError, ValueError):
                continue
            if isinstance(record, dict):
                return record
    return None


def _cache_candidates(model_path: Path, sha256: str, include_frontend: bool) -> tuple[Path, Path]:
    """Where a graph of the model file may be cached: beside it, then in the user cache."""
    fallback = user_cache_dir() / f"{sha256[:32]}{'' if include_frontend else '.cnn'}.onnx"
    return onnx_path_beside(model_path, include_frontend), fallback


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
    ``model`` (the loaded model file) saves loading it again when an export is needed; its network
    is built only then. A current graph is used as it is, without the network: it was exported from
    these very bytes, so it runs even where the installed timm lacks the model's backbone (the
    torch engine, or a new export, then fails naming the backbone).
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: model file not found")
    sha256 = file_sha256(model_path)
    beside, fallback = _cache_candidates(model_path, sha256, include_frontend)
    for candidate in (beside, fallback):
        if _cache_is_current(candidate, model_path, sha256, include_frontend):
            _add_record(candidate, model_path)
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


def _add_record(graph: Path, model_path: Path) -> None:
    """Give a current graph exported before graphs kept records (:data:`RECORD_KEY`) the model
    file's record, once, so later runs start without torch; left as it is when that fails."""
    try:
        if RECORD_KEY in read_onnx_metadata(graph) or not folder_is_writable(graph.parent):
            return
        record = _record_of(model_path)
        if record is None:
            return
        onnx = require("onnx")
        proto = onnx.load(str(graph))
        entry = proto.metadata_props.add()
        entry.key, entry.value = RECORD_KEY, record
        atomic_write(graph, lambda temporary: onnx.save(proto, str(temporary)))
    except (DawnchorusError, OSError, ValueError):
        return


def folder_is_writable(folder: Path) -> bool:
    """Whether new files can be created in ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)
