"""The interface every pretrained bird-sound backbone meets, and pooling over longer windows.

An :class:`EmbeddingModel` turns a batch of audio windows at its own sample rate and length into one
embedding per window (and class logits where the model has a classifier), like perch-hoplite's
``zoo_interface.EmbeddingModel``. Its :meth:`~EmbeddingModel.info` is what a model file records about
the backbone (name, version, rates, SHA-256 of the weights file; never the weights themselves), and
:func:`check_backbone` compares such a record with a loaded backbone.

:func:`window_embeddings` is the one place that adapts a dawnchorus window to a backbone's window: a
5-s window over a 3-s backbone is cut into sub-windows (:func:`sub_window_starts`) whose embeddings
are pooled (mean or max). Building models by name is ``registry.py``'s job; running them over long
recordings is :mod:`dawnchorus.inference.embeddings`'.

This module imports numpy only: no torch, no model runtime.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dawnchorus.errors import ModelError

Pooling = Literal["mean", "max"]
POOLINGS: tuple[str, ...] = ("mean", "max")


@dataclass(frozen=True)
class EmbeddingOutput:
    """What a backbone computes for a batch of ``B`` windows.

    ``embeddings``: ``(B, D)`` float32. ``logits``: ``(B, C)`` float32 class logits (before any
    sigmoid), aligned with the model's ``labels``; None for a model without a classifier.
    """

    embeddings: np.ndarray
    logits: np.ndarray | None = None


@dataclass(frozen=True)
class BackboneInfo:
    """Everything about a backbone that travels with what was computed from it (embedding parts, and
    later a model file's head): enough to rebuild the same backbone and to refuse a different one.

    ``weights_sha256`` identifies the exact weights; ``weights_file`` is the file's name only (the
    path differs between machines). ``licence`` names the weights' licence.
    """

    name: str
    version: str
    sample_rate: int
    window_s: float
    embedding_size: int
    num_classes: int
    weights_sha256: str
    weights_file: str
    licence: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float) for JSON, YAML or a model file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneInfo:
        """The inverse of :meth:`as_dict`; raises :class:`ModelError` naming a missing field."""
        missing = [name for name in cls.__dataclass_fields__ if name not in data]
        if missing:
            raise ModelError(f"backbone record lacks field(s) {', '.join(missing)}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class EmbeddingModel(ABC):
    """A pretrained audio backbone: fixed-length windows at ``sample_rate`` -> embeddings (+ logits).

    Subclasses set the class attributes, point ``weights_path`` at the weights file they load, and
    implement :meth:`embed`. ``labels`` is the class list the logits follow (None: no classifier).
    ``embed`` may be called from one thread at a time.
    """

    name: str
    version: str
    sample_rate: int
    window_s: float
    embedding_size: int
    licence: str = "unknown"
    labels: tuple[str, ...] | None = None
    weights_path: Path

    @property
    def window_samples(self) -> int:
        """Samples in one window at the model's rate."""
        return int(round(self.window_s * self.sample_rate))

    @property
    def weights_sha256(self) -> str:
        """SHA-256 (hex) of the weights file, computed once."""
        cached = getattr(self, "_weights_sha256", None)
        if cached is None:
            cached = file_sha256(self.weights_path)
            self._weights_sha256 = cached
        return cached

    def info(self) -> BackboneInfo:
        """The record of this backbone (see :class:`BackboneInfo`)."""
        return BackboneInfo(
            name=self.name,
            version=self.version,
            sample_rate=int(self.sample_rate),
            window_s=float(self.window_s),
            embedding_size=int(self.embedding_size),
            num_classes=0 if self.labels is None else len(self.labels),
            weights_sha256=self.weights_sha256,
            weights_file=Path(self.weights_path).name,
            licence=self.licence,
        )

    @abstractmethod
    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        """Embed ``batch``: ``(B, window_samples)`` mono audio at ``sample_rate``, float32 in [-1, 1].

        Implementations call :meth:`check_batch` first.
        """

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` as a C-contiguous float32 ``(B, window_samples)`` array; a 1-D window becomes a
        batch of one. Raises :class:`ModelError` for any other shape."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 1:
            batch = batch[None, :]
        if batch.ndim != 2 or batch.shape[1] != self.window_samples:
            raise ModelError(
                f"{self.name} embeds windows of {self.window_samples} samples ({self.window_s:g} s at "
                f"{self.sample_rate} Hz), got an array of shape {tuple(batch.shape)}"
            )
        return np.ascontiguousarray(batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, version={self.version!r}, "
            f"{self.sample_rate} Hz, {self.window_s:g} s, {self.embedding_size}-d)"
        )


def file_sha256(path: str | Path, block_bytes: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def check_backbone(model: EmbeddingModel, expected: BackboneInfo | Mapping[str, Any]) -> None:
    """Raise :class:`ModelError` unless ``model`` is the backbone ``expected`` records (same name and
    weights hash): the message names the weights file the record expects and the one loaded."""
    record = expected if isinstance(expected, BackboneInfo) else BackboneInfo.from_dict(expected)
    if model.name != record.name:
        raise ModelError(f"this needs the {record.name!r} backbone, got {model.name!r}")
    if model.weights_sha256 != record.weights_sha256:
        raise ModelError(
            f"{model.weights_path}: weights of {model.name} differ from the ones this was made with "
            f"(expected {record.weights_file} with SHA-256 {record.weights_sha256}, "
            f"got SHA-256 {model.weights_sha256})"
        )


# --- a dawnchorus window over a backbone window ------------------------------------------------------


def sub_window_starts(window_s: float, model_window_s: float, count: int | None = None) -> list[float]:
    """Start times (s, from the window's start) of the backbone windows that cover one ``window_s``
    window.

    By default the fewest that cover it, ``ceil(window_s / model_window_s)``, spread evenly so the
    first starts at 0 and the last ends at ``window_s``: a 5-s window over a 3-s backbone gives
    starts 0 and 2 (two sub-windows overlapping by 1 s); 6 s over 3 s gives 0 and 3 (no overlap);
    a window no longer than the backbone's gives one sub-window at 0 (the window is zero-padded,
    whatever ``count``). ``count`` asks for more (denser) sub-windows, spread the same way: 5 s over
    3 s with ``count=3`` gives 0, 1, 2.
    """
    if window_s <= 0 or model_window_s <= 0:
        raise ModelError(f"window lengths must be positive, got {window_s} and {model_window_s} s")
    if count is not None and count < 1:
        raise ModelError(f"sub-windows must be at least 1, got {count}")
    if window_s <= model_window_s + 1e-9:
        return [0.0]  # one (zero-padded) sub-window; more would repeat it
    needed = math.ceil(window_s / model_window_s - 1e-9)
    count = needed if count is None else count
    if count < needed:
        raise ModelError(
            f"{count} sub-window(s) of {model_window_s:g} s cannot cover a {window_s:g}-s window "
            f"(at least {needed})"
        )
    span = window_s - model_window_s
    return [round(span * index / (count - 1), 6) for index in range(count)] if count > 1 else [0.0]


def window_embeddings(
    model: EmbeddingModel,
    audio: np.ndarray,
    window_s: float | None = None,
    pooling: Pooling = "mean",
    sub_windows: int | None = None,
) -> EmbeddingOutput:
    """Embeddings of ``audio``: ``(B, round(window_s * model.sample_rate))`` windows at the model's
    rate (``window_s`` None: the model's own window).

    Each window is cut into the sub-windows :func:`sub_window_starts` gives (zero-padded at the end
    where the window is shorter than the model's), all sub-windows of the batch are embedded in one
    :meth:`EmbeddingModel.embed` call, and each window's embeddings (and logits) are pooled by
    ``pooling``: ``mean`` or ``max`` over its sub-windows. A window of exactly the model's length is
    embedded as it is (pooling one sub-window changes nothing).
    """
    if pooling not in POOLINGS:
        raise ModelError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    window_s = model.window_s if window_s is None else float(window_s)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    expected = int(round(window_s * model.sample_rate))
    if audio.ndim != 2 or audio.shape[1] != expected:
        raise ModelError(
            f"{window_s:g}-s windows at {model.sample_rate} Hz have {expected} samples, "
            f"got an array of shape {tuple(audio.shape)}"
        )
    starts = sub_window_starts(window_s, model.window_s, sub_windows)
    size = model.window_samples
    if len(starts) == 1 and expected == size:
        return model.embed(audio)
    if expected < size:
        audio = np.pad(audio, ((0, 0), (0, size - expected)))
    offsets = [min(int(round(start * model.sample_rate)), audio.shape[1] - size) for start in starts]
    pieces = np.stack([audio[:, offset:offset + size] for offset in offsets], axis=1)  # (B, n, size)
    batch, count = pieces.shape[:2]
    output = model.embed(pieces.reshape(batch * count, size))
    return EmbeddingOutput(
        embeddings=_pool(output.embeddings, batch, count, pooling),
        logits=None if output.logits is None else _pool(output.logits, batch, count, pooling),
    )


def embedding_columns(size: int) -> list[str]:
    """The column names of a ``size``-d embedding in a table: ``e0`` .. ``e{size-1}``."""
    return [f"e{index}" for index in range(size)]


def labels_from_lines(lines: Sequence[str]) -> tuple[str, ...]:
    """A class list from the lines of a labels file (blank lines dropped, whitespace stripped)."""
    return tuple(line.strip() for line in lines if line.strip())


def _pool(values: np.ndarray, batch: int, count: int, pooling: Pooling) -> np.ndarray:
    grouped = np.asarray(values, dtype=np.float32).reshape(batch, count, -1)
    pooled = grouped.mean(axis=1) if pooling == "mean" else grouped.max(axis=1)
    return np.ascontiguousarray(pooled, dtype=np.float32)
