"""``RESULTS_DIR/run.json``: what a ``predict`` run folder was made from, written when the run closes.

A run folder's tables name each recording as the user typed it (a path relative to wherever
``predict`` ran) and hold no model, thresholds or settings; ``run.json`` records them, so the
commands that read a run folder later (``review``, ``calibrate``) need neither ``--model`` nor
``--audio``:

- ``format`` (:data:`FORMAT_VERSION`), ``dawnchorus`` (the version that wrote it), ``tag`` (the
  parts folder, ``parts/<tag>/``);
- ``models``: the model file (an ensemble: every member, in order) as an absolute path (null for a
  model that has no file), its SHA-256, and its weight (1 for a single model);
- ``labels`` and ``thresholds`` (label -> the detection threshold the run applied: the model's, or
  ``--threshold``; on calibrated scores, mapped alike);
- ``settings``: those that shape the scores (``hop_s``, ``smoothing``, ``overlap_average``,
  ``max_scaling``, ``calibrated``, ``engine``) and ``threshold`` (``--threshold``, null when not given);
- ``recordings``: for each ``file`` value of the tables, the recording's absolute path and size in bytes.

This module knows the file's format only: what goes into it is decided by
:mod:`dawnchorus.inference.run` (``RunFolder.close``), and readers decide how to use it. A run.json
may come from another machine or another person, so :func:`read_run_info` treats it as data: every
field's type is checked, and a malformed file is one :class:`~dawnchorus.errors.InputError` naming the
file and the field. It imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from dawnchorus.errors import InputError
from dawnchorus.io.files import atomic_write_text
from dawnchorus.version import __version__

RUN_INFO_FILE = "run.json"
FORMAT_VERSION = 1
# A run.json is a few hundred bytes per recording; a file far over this is not one predict wrote.
MAX_BYTES = 256 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TAG = re.compile(r"[A-Za-z0-9._-]{1,200}")  # run_tag's names: a folder name, never a path
# settings keys and the JSON types each may hold (None: null allowed)
_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "hop_s": (int, float, type(None)),
    "smoothing": (list, type(None)),
    "overlap_average": (bool,),
    "max_scaling": (int, float, type(None)),
    "calibrated": (bool,),
    "threshold": (int, float, type(None)),
    "engine": (str,),
}


@dataclass(frozen=True)
class RunModel:
    """One model file of a run (an ensemble has several)."""

    path: str | None  # absolute; None for a model that has no file (Python API)
    sha256: str
    weight: float = 1.0


@dataclass(frozen=True)
class RunRecording:
    """One recording of a run: its ``file`` value in the tables, where it was (absolute) and its size."""

    file: str
    path: str
    size: int


@dataclass(frozen=True)
class RunInfo:
    """The contents of a ``run.json`` (see the module docstring)."""

    models: tuple[RunModel, ...]
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    settings: dict[str, Any]
    recordings: dict[str, RunRecording]  # by file value
    tag: str = ""
    dawnchorus: str = __version__
    format: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)  # the file read, when read from one

    def recording_path(self, file: str) -> Path | None:
        """Where recording ``file`` (a ``file`` value of the run's tables) is, by this run.json: its
        recorded absolute path when that can only be the recording: a readable regular file with the
        name ``file`` has and the size predict recorded. None when run.json does not list ``file``,
        or the file there is missing, another file or changed since (a run.json from elsewhere can
        name any path: it never makes a reader open another file)."""
        recorded = self.recordings.get(file)
        if recorded is None:
            return None
        path = Path(recorded.path)
        if not path.is_absolute() or path.name != PurePath(file).name:
            return None
        try:
            if not path.is_file() or path.stat().st_size != recorded.size or not os.access(path, os.R_OK):
                return None
        except OSError:  # a name too long, a folder without permission on the way
            return None
        return path

    @property
    def single_model(self) -> RunModel | None:
        """The run's model when it had one (not an ensemble), else None."""
        return self.models[0] if len(self.models) == 1 else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``run.json``."""
        return {
            "format": self.format,
            "dawnchorus": self.dawnchorus,
            "tag": self.tag,
            "models": [{"path": m.path, "sha256": m.sha256, "weight": m.weight} for m in self.models],
            "labels": list(self.labels),
            "thresholds": {label: self.thresholds[label] for label in self.labels},
            "settings": dict(self.settings),
            "recordings": [
                {"file": r.file, "path": r.path, "size": r.size} for r in self.recordings.values()
            ],
        }


def run_info_path(results_dir: str | Path) -> Path:
    """Where a run folder's ``run.json`` is."""
    return Path(results_dir) / RUN_INFO_FILE


def write_run_info(results_dir: str | Path, info: RunInfo) -> Path:
    """Write ``info`` to ``results_dir/run.json`` atomically (replacing the one of an earlier run);
    returns the path."""
    text = json.dumps(info.to_json(), indent=1, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(run_info_path(results_dir), text + "\n")


def read_run_info(results_dir: str | Path) -> RunInfo | None:
    """The ``run.json`` of ``results_dir``; None when there is none. A file that cannot be read, is not
    JSON, comes from a newer dawnchorus or has a field of the wrong type or value is one
    :class:`InputError`: ``RESULTS_DIR/run.json: <field>: <problem>``."""
    path = run_info_path(results_dir)
    if not path.exists():
        return None
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"{path}: {path.stat().st_size} bytes: too large for a run.json")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON (nested too deeply)") from None
    return _parse(data, path)


def unchanged_model(info: RunInfo) -> tuple[Path | None, str]:
    """The run's model file, when a command may take it as the run's model without being told: one
    model (not an ensemble) whose file is still at the recorded path with the recorded SHA-256.
    Returns (path, "") or (None, why not: a sentence part naming the file)."""
    model = info.single_model
    if model is None:
        return None, f"{info.path}: the run was an ensemble of {len(info.models)} models"
    if model.path is None:
        return None, f"{info.path}: the run's model had no file"
    path = Path(model.path)
    if not path.is_file():  # never opened otherwise: a run.json from elsewhere may name a device or pipe
        return None, f"the run's model {path} is not there any more"
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        return None, f"the run's model {path} cannot be read ({exc.strerror or exc})"
    if digest.hexdigest() != model.sha256:
        return None, f"the run's model {path} has changed since the run (its SHA-256 differs)"
    return path, ""


# ---- parsing ---------------------------------------------------------------------------------------


class _Malformed(Exception):
    """A field of the wrong type or value: (field, problem)."""


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse(data: Any, path: Path) -> RunInfo:
    try:
        return _parse_object(data, path)
    except _Malformed as exc:
        where, problem = exc.args
        raise InputError(f"{path}: {where}: {problem}") from None


def _parse_object(data: Any, path: Path) -> RunInfo:
    if not isinstance(data, Mapping):
        raise _Malformed("(top level)", f"must be a JSON object, not {_kind(data)}")
    version = _get(data, "format", int)
    if version < 1:
        raise _Malformed("format", f"{version} is not a format version")
    if version > FORMAT_VERSION:
        raise _Malformed(
            "format", f"{version}: written by a newer dawnchorus (this one reads format {FORMAT_VERSION})"
        )
    written_by = _get(data, "dawnchorus", str, default="")
    tag = _get(data, "tag", str, default="")
    if tag and (not _TAG.fullmatch(tag) or tag in (".", "..")):
        raise _Malformed("tag", f"{tag[:80]!r} is not a parts folder name (letters, digits, '.', '-', '_')")
    models = tuple(_model(m, f"models[{i}]") for i, m in enumerate(_get(data, "models", list)))
    if not models:
        raise _Malformed("models", "lists no model")
    labels = _get(data, "labels", list)
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label:
            raise _Malformed(f"labels[{i}]", f"must be a non-empty string, not {_kind(label)}")
    if len(set(labels)) != len(labels):
        raise _Malformed("labels", "a label is listed twice")
    thresholds = _thresholds(_get(data, "thresholds", dict), labels)
    settings = _settings(_get(data, "settings", dict, default={}))
    recordings: dict[str, RunRecording] = {}
    for i, entry in enumerate(_get(data, "recordings", list)):
        recording = _recording(entry, f"recordings[{i}]")
        if recording.file in recordings:
            raise _Malformed(f"recordings[{i}].file", f"{recording.file!r} is listed twice")
        recordings[recording.file] = recording
    return RunInfo(models, tuple(labels), thresholds, settings, recordings, tag, written_by, version, path)


def _get(data: Mapping[str, Any], key: str, kind: type, default: Any = ..., within: str = "") -> Any:
    """``data[key]`` checked to be of JSON type ``kind`` (``int``: not a bool; ``float``: any finite
    number); ``within`` names ``data`` in messages (``recordings[3]``)."""
    where = f"{within}.{key}" if within else key
    if key not in data:
        if default is ...:
            raise _Malformed(where, "missing")
        return default
    return _typed(data[key], where, kind)


def _typed(value: Any, where: str, kind: type) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _Malformed(where, f"must be a number, not {_kind(value)}")
        return float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise _Malformed(where, f"must be {_kind_name(kind)}, not {_kind(value)}")
    return value


def _model(entry: Any, where: str) -> RunModel:
    if not isinstance(entry, Mapping):
        raise _Malformed(where, f"must be an object, not {_kind(entry)}")
    path = entry.get("path")
    if path is not None:
        path = _absolute(path, f"{where}.path")
    sha = _get(entry, "sha256", str, within=where)
    if not _SHA256.fullmatch(sha):
        raise _Malformed(f"{where}.sha256", "must be 64 lower-case hex digits")
    weight = _typed(entry.get("weight", 1.0), f"{where}.weight", float)
    if weight < 0:
        raise _Malformed(f"{where}.weight", f"{weight} is negative")
    return RunModel(path, sha, weight)


def _thresholds(given: Mapping[str, Any], labels: Sequence[str]) -> dict[str, float]:
    out = {}
    for label in labels:
        if label not in given:
            raise _Malformed(f"thresholds.{label}", "missing (every label needs one)")
        value = _typed(given[label], f"thresholds.{label}", float)
        if not 0.0 <= value <= 1.0:
            raise _Malformed(f"thresholds.{label}", f"{value} is not between 0 and 1")
        out[label] = value
    return out


def _settings(given: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(given)
    for key, kinds in _SETTING_TYPES.items():
        value = given.get(key)
        if key in given and ((isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds)):
            wanted = " or ".join(map(_kind_name, kinds))
            raise _Malformed(f"settings.{key}", f"must be {wanted}, not {_kind(value)}")
    smoothing = given.get("smoothing")
    if smoothing is not None and not all(
        isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) for w in smoothing
    ):
        raise _Malformed("settings.smoothing", "must be a list of numbers")
    return out


def _recording(entry: Any, where: str) -> RunRecording:
    if not isinstance(entry, Mapping):
        raise _Malformed(where, f"must be an object, not {_kind(entry)}")
    file = _get(entry, "file", str, within=where)
    if not file:
        raise _Malformed(f"{where}.file", "is empty")
    path = _absolute(_get(entry, "path", str, within=where), f"{where}.path")
    size = _get(entry, "size", int, within=where)
    if size < 0:
        raise _Malformed(f"{where}.size", f"{size} is negative")
    return RunRecording(file, path, size)


def _absolute(value: Any, where: str) -> str:
    """A path string that is absolute and holds no NUL, '..' component or line break."""
    if not isinstance(value, str) or not value:
        raise _Malformed(where, f"must be a non-empty string, not {_kind(value)}")
    if any(c in value for c in "\0\r\n"):
        raise _Malformed(where, "holds a NUL or line-break character")
    pure = PurePath(value)
    if not pure.is_absolute():
        raise _Malformed(where, f"{value!r} is not an absolute path")
    if ".." in pure.parts:
        raise _Malformed(where, f"{value!r} has a '..' component")
    return value


def _kind(value: Any) -> str:
    """How a JSON value is called in a message."""
    if value is None:
        return "null"
    return _kind_name(type(value))


def _kind_name(kind: type) -> str:
    return {
        bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
        dict: "an object", type(None): "null",
    }.get(kind, kind.__name__)
