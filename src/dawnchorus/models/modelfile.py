"""The self-contained model file: weights, labels, settings, thresholds and the package version.

:func:`save_model_file` writes it, :func:`load_model` restores it with no other input into a
:class:`LoadedModel`. This module owns only the file format; the network it holds is built by
:mod:`dawnchorus.models.classifier`, and prediction lives in :mod:`dawnchorus.inference`. It does
not import Lightning, so prediction (and every dask worker) starts without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from pydantic import ValidationError

from dawnchorus.config import Config
from dawnchorus.errors import ModelFileError
from dawnchorus.io.files import atomic_write
from dawnchorus.models.classifier import SpectrogramClassifier, build_model
from dawnchorus.models.features import LogMel
from dawnchorus.version import __version__

MODEL_FORMAT = "dawnchorus-model"
MODEL_FORMAT_VERSION = 1


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
    config = _portable_config(json.loads(payload["config"]), path)
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


def _portable_config(stored: dict[str, Any], path: Path) -> Config:
    """The stored settings, minus machine-specific paths that need not exist where the model is used.

    Settings this installation cannot use raise :class:`ModelFileError` naming the file: above all a
    backbone the installed timm does not have (a model trained with a newer timm).
    """
    stored = json.loads(json.dumps(stored))
    stored.setdefault("model", {}).update({"pretrained": False, "weights": None})
    stored.setdefault("augment", {})["noise_dir"] = None
    stored.setdefault("train", {})["cache_dir"] = None
    backbone = stored["model"].get("backbone")
    if isinstance(backbone, str) and not timm.is_model(backbone):
        raise ModelFileError(
            f"{path}: the model's backbone {backbone!r} is not in the installed timm {timm.__version__}; "
            f"install the timm version the model was trained with (or a newer one)"
        )
    try:
        return Config.model_validate(stored)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        raise ModelFileError(
            f"{path}: settings stored in the model file are not valid for dawnchorus {__version__}: "
            f"{problems}"
        ) from None
