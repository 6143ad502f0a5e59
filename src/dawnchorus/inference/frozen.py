"""Prediction with a model on a frozen pretrained backbone (``train --backbone birdnet``).

A model file of that kind holds a head and the backbone's record, not the backbone.
:func:`model_backbone` builds the recorded backbone from the zoo (:mod:`dawnchorus.embed.registry`)
and checks it is the one the head was trained on (same name, same weights SHA-256); a missing extra
or a weights file with another hash is one :class:`~dawnchorus.errors.ModelError` line naming the
model file and the install command or the expected file. :class:`FrozenBackboneFunction` is the
batch function ``predict`` runs for such a model: decoded windows (at the backbone's rate, which is
the model's ``audio.sample_rate``) -> pooled backbone embeddings
(:func:`~dawnchorus.embed.base.window_embeddings`, exactly as training embedded its clips) -> head
-> sigmoid. Everything else (pipeline, run folder, outputs, Dask) is the same as for any model.

Where the backbone's weights come from: a file the user names (:func:`use_backbone_weights`, which
``predict --weights FILE`` calls: the file must carry the SHA-256 the model file records), else the file
the model was trained with when it is still there (the model file's ``backbone_weights_path``
metadata, a path on the training machine), else the backbone's own default (the birdnet extra's file,
``$DAWNCHORUS_PERCH_V2_ONNX``). Whichever is used, its hash is checked against the record.

Choosing engines is :mod:`dawnchorus.inference.engines`' job; it hands models with a backbone here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dawnchorus.embed.base import (
    BackboneInfo,
    EmbeddingModel,
    check_backbone,
    file_sha256,
    window_embeddings,
)
from dawnchorus.embed.registry import EmbeddingModelSpec, create_embedding_model, embedding_model_spec
from dawnchorus.errors import ModelError
from dawnchorus.io.files import usable_cores

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

# Backbones built in this process, by (name, weights, threads): building BirdNET reads and edits a
# 50 MB file; threshold tuning, evaluation and predict may each ask for the same one.
_BACKBONES: dict[tuple[EmbeddingModelSpec, str | None, int], EmbeddingModel] = {}
_LOCK = threading.Lock()


def backbone_record(model: LoadedModel) -> BackboneInfo:
    """The backbone record of ``model`` (a :class:`ModelError` naming the file when it has none or a
    damaged one)."""
    where = _where(model)
    if model.backbone is None:
        raise ModelError(f"{where}: not a model on a frozen backbone")
    try:
        return BackboneInfo.from_dict(model.backbone)
    except ModelError as exc:
        raise ModelError(f"{where}: damaged model file: {exc}") from None


def model_backbone(
    model: LoadedModel, threads: int | None = None, weights: str | Path | None = None
) -> EmbeddingModel:
    """The backbone ``model`` was trained on, built from the zoo and checked against its record.

    ``weights``: the backbone's weights file (default: the one :func:`use_backbone_weights` set on
    ``model``, else the file it was trained with if still there, else the backbone's own, e.g. the one
    the birdnet extra installs). ``threads``: the backbone's threads (default: the usable cores).
    Raises :class:`ModelError` (one line, naming the model file) when the backbone cannot be built
    here (the message names the install command or the file to get, and the SHA-256 the model
    expects), when its weights' SHA-256 differs from the record (naming the expected file and hash),
    or when its sample rate differs from the model's.
    """
    record = backbone_record(model)
    where = _where(model)
    threads = max(1, threads or usable_cores())
    try:
        spec = embedding_model_spec(record.name)
    except ModelError as exc:
        raise ModelError(f"{where}: this model runs on a backbone this installation lacks: {exc}") from None
    chosen = weights if weights is not None else model.config.embedding.weights
    if chosen is None:
        trained_with = model.metadata.get("backbone_weights_path")
        if isinstance(trained_with, str) and _has_sha256(Path(trained_with), record.weights_sha256):
            chosen = trained_with  # the file it was trained with, still here and unchanged
    elif not Path(chosen).is_file():
        raise ModelError(f"{where}: backbone weights file {chosen} not found")
    # The spec is part of the key: a backbone registered again under the same name is built afresh.
    key = (spec, None if chosen is None else str(Path(chosen).resolve()), threads)
    with _LOCK:
        backbone = _BACKBONES.get(key)
        if backbone is None:
            options: dict[str, Any] = {"threads": threads}
            if chosen is not None:
                if not _has_sha256(Path(chosen), record.weights_sha256):  # refused before it is loaded
                    raise ModelError(f"{where}: {_wrong_weights(Path(chosen), record)}")
                options["weights"] = chosen
            try:
                backbone = create_embedding_model(record.name, **options)
            except ModelError as exc:
                raise ModelError(
                    f"{where}: this model runs on the {record.name} backbone, which cannot be loaded "
                    f"here: {str(exc).rstrip('.')} (the model needs {record.weights_file} with SHA-256 "
                    f"{record.weights_sha256})"
                ) from None
            _BACKBONES[key] = backbone
    try:
        check_backbone(backbone, record)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    if int(model.config.audio.sample_rate) != int(backbone.sample_rate):
        raise ModelError(
            f"{where}: the model decodes audio at {model.config.audio.sample_rate} Hz, its backbone "
            f"{record.name} takes {backbone.sample_rate} Hz; damaged model file"
        )
    return backbone


def use_backbone_weights(models: Sequence[LoadedModel], weights: Sequence[str | Path]) -> None:
    """Run the frozen backbones of ``models`` (one model, or an ensemble's members) on the weights
    files ``weights`` (``predict --weights FILE``): each file goes to every model whose backbone
    record has the file's SHA-256, so one file can serve several members and an ensemble of a
    BirdNET and a Perch head takes both files.

    Raises :class:`ModelError` (one line) for a missing file, for a file whose SHA-256 no model
    records (naming the file, its hash and the file and hash each model expects), and when no model
    runs on a frozen backbone (a fine-tuned CNN carries its weights in its model file).
    """
    frozen = [model for model in models if model.backbone is not None]
    paths = [Path(path) for path in weights]
    if paths and not frozen:
        names = ", ".join(_where(model) for model in models)
        raise ModelError(
            f"{names}: a fine-tuned CNN carries its weights in its model file; backbone weights "
            f"({', '.join(map(str, paths))}) are for a model on a frozen backbone (birdnet, perch-v2)"
        )
    for path in paths:
        if not path.is_file():
            raise ModelError(f"{path}: backbone weights file not found")
        records = [(model, backbone_record(model)) for model in frozen]
        matching = [model for model, record in records if _has_sha256(path, record.weights_sha256)]
        if not matching:
            expected = "; ".join(
                f"{_where(model)} expects {record.name} weights {record.weights_file} with SHA-256 "
                f"{record.weights_sha256}"
                for model, record in records
            )
            which = "the model was" if len(models) == 1 else "any of the models was"
            raise ModelError(
                f"{path}: not the backbone weights {which} trained on (its SHA-256 is {_sha256(path)}): "
                f"{expected}"
            )
        for model in matching:
            model.config.embedding.weights = path


class FrozenBackboneFunction:
    """Audio batch ``(B, T)`` at the backbone's rate -> probabilities ``(B, C)``: backbone embeddings
    of each window (sub-windows pooled as the model's ``embedding`` settings say), then the head.

    Thread safe (backbones embed one batch at a time); ``backbone`` and ``window_s`` are public for
    descriptions and tests.
    """

    def __init__(self, model: LoadedModel, backbone: EmbeddingModel, device: str | torch.device = "cpu"):
        self.backbone = backbone
        self.window_s = float(model.config.audio.clip_s)
        self.pooling = model.config.embedding.pooling
        self.sub_windows = model.config.embedding.sub_windows
        self.device = torch.device(device)
        self.head = model.network.to(self.device).eval()

    def embeddings(self, batch: np.ndarray) -> np.ndarray:
        """Pooled embeddings ``(B, D)`` of a batch of windows."""
        output = window_embeddings(self.backbone, batch, self.window_s, self.pooling, self.sub_windows)
        return output.embeddings

    @torch.inference_mode()
    def classify(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, C)`` of embeddings ``(B, D)``."""
        logits = self.head(torch.from_numpy(np.ascontiguousarray(embeddings)).to(self.device))
        return torch.sigmoid(logits.float()).cpu().numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.classify(self.embeddings(batch))

    def describe(self) -> dict[str, Any]:
        """What this runs, for logs: the backbone (name, version, threads) and the head's device."""
        return {
            "engine": "torch",
            "backbone": f"{self.backbone.name} {self.backbone.version}",
            "lanes": 1,
            "threads_per_lane": int(getattr(self.backbone, "threads", 1)),
        }


def frozen_batch_function(
    model: LoadedModel, device: str | torch.device | None = None, threads: int | None = None
) -> FrozenBackboneFunction:
    """The batch function of a model on a frozen backbone (see :class:`FrozenBackboneFunction`): the
    backbone from :func:`model_backbone` on the CPU (its own runtime), the head on ``device``."""
    head_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return FrozenBackboneFunction(model, model_backbone(model, threads=threads), head_device)


def _where(model: LoadedModel) -> str:
    return str(model.path) if model.path is not None else "model"


# SHA-256 of weights files by (path, size, mtime): hashing Perch's file takes about a second.
_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        cached = _HASHES.get(key)
    if cached is None:
        cached = file_sha256(path)
        with _HASH_LOCK:
            _HASHES[key] = cached
    return cached


def _has_sha256(path: Path, expected: str) -> bool:
    try:
        return path.is_file() and _sha256(path) == expected
    except OSError:
        return False


def _wrong_weights(path: Path, record: BackboneInfo) -> str:
    return (
        f"{path}: weights of {record.name} differ from the ones this was made with (expected "
        f"{record.weights_file} with SHA-256 {record.weights_sha256}, got SHA-256 {_sha256(path)})"
    )
