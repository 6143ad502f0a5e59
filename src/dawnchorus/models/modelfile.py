"""The self-contained model file: weights, labels, settings, thresholds and the package version.

:func:`save_model_file` writes it, :func:`load_model` restores it with no other input. This module
does not import Lightning, so prediction (and every dask worker) starts without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dawnchorus.config import Config
from dawnchorus.errors import ModelFileError
from dawnchorus.io.files import atomic_write
from dawnchorus.models.classifier import BirdClassifier, build_model
from dawnchorus.models.features import LogMel
from dawnchorus.version import __version__

MODEL_FORMAT = "dawnchorus-model"
MODEL_FORMAT_VERSION = 1


# --- the network used for prediction: frontend + classifier --------------------------------------


class SpectrogramClassifier(nn.Module):
    """Waveform batch (B, T) -> logits (B, C): the log-mel frontend followed by the CNN."""

    def __init__(self, frontend: LogMel, classifier: BirdClassifier, channels_last: bool = False) -> None:
        super().__init__()
        self.frontend = frontend
        self.classifier = classifier
        self.channels_last = channels_last

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        spec = self.frontend(audio)
        return spec.contiguous(memory_format=torch.channels_last) if self.channels_last else spec

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.spectrogram(audio))


# --- the model file -------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A trained model restored from its file: everything ``predict`` needs."""

    network: SpectrogramClassifier
    labels: list[str]
    config: Config
    thresholds: dict[str, Any] = field(default_factory=lambda: {"global": 0.5, "per_class": None})
    scored_labels: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def class_thresholds(self) -> np.ndarray:
        """One threshold per label: the tuned per-class ones, else the global one."""
        per_class = self.thresholds.get("per_class")
        if per_class is not None:
            return np.asarray(per_class, dtype=np.float32)
        return np.full(len(self.labels), float(self.thresholds.get("global", 0.5)), dtype=np.float32)

    def save(self, path: str | Path | None = None) -> Path:
        """Write the model file (atomically)."""
        target = Path(path or self.path)
        save_model_file(
            target,
            self.network,
            self.labels,
            self.config,
            thresholds=self.thresholds,
            scored_labels=self.scored_labels,
            metadata=self.metadata,
        )
        return target


def save_model_file(
    path: str | Path,
    network: SpectrogramClassifier,
    labels: list[str],
    config: Config,
    thresholds: dict[str, Any] | None = None,
    scored_labels: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """One file: weights, labels, settings, thresholds, package version. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or {"global": 0.5, "per_class": None}
    per_class = thresholds.get("per_class")
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": list(labels),
        "scored_labels": list(scored_labels) if scored_labels else None,
        "config": json.dumps(config.model_dump(mode="json")),
        "thresholds": {
            "global": float(thresholds.get("global", 0.5)),
            "per_class": [float(t) for t in per_class] if per_class is not None else None,
        },
        "metadata": json.dumps(metadata or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in network.classifier.state_dict().items()},
    }
    return atomic_write(path, lambda temporary: torch.save(payload, temporary))


def _portable_config(stored: dict[str, Any]) -> Config:
    """The stored settings, minus machine-specific paths that need not exist where the model is used."""
    stored = json.loads(json.dumps(stored))
    stored.setdefault("model", {}).update({"pretrained": False, "weights": None})
    stored.setdefault("augment", {})["noise_dir"] = None
    stored.setdefault("train", {})["cache_dir"] = None
    stored.pop("cluster", None)
    return Config.model_validate(stored)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Restore a model file with no other input (weights-only unpickling: safe on untrusted files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a model file"
        raise ModelFileError(f"{path}: not a dawnchorus model file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a dawnchorus model file")
    if payload["format_version"] > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format {payload['format_version']} is newer than this dawnchorus "
            f"({__version__}) reads; upgrade dawnchorus"
        )
    config = _portable_config(json.loads(payload["config"]))
    labels = list(payload["labels"])
    classifier = build_model(config.model, len(labels))
    classifier.load_state_dict(payload["state_dict"])
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), classifier, channels_last=False
    )
    network.eval().to(device)
    return LoadedModel(
        network=network,
        labels=labels,
        config=config,
        thresholds=dict(payload["thresholds"]),
        scored_labels=payload.get("scored_labels"),
        metadata=json.loads(payload.get("metadata") or "{}"),
        path=path,
    )
