"""The classifier: a timm CNN backbone on the log-mel image plus a head from the head registry.

:class:`BirdClassifier` is backbone + head; :class:`SpectrogramClassifier` puts the log-mel frontend
in front of it (waveform in, logits out), the network that training and prediction run.
:func:`build_model` builds a classifier from ``ModelSettings``.

Every head returns one logit per class from :meth:`BirdClassifier.forward`, so a single
``BCEWithLogitsLoss`` (or focal loss on logits) trains any of them. The SED head (the BirdCLEF
2021/2022 "AttBlockV2" recipe) also gives framewise probabilities through
:meth:`BirdClassifier.forward_frames`. The heads themselves live in :mod:`dawnchorus.models.heads`.

Pretrained ImageNet weights come from the timm hub (online) or a local file (``weights``). Our own
model files are restored with ``load_state_dict`` by :mod:`dawnchorus.models.modelfile`, never through
timm's pretrained machinery (that path re-creates the classifier). This module does not read or write
model files.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from dawnchorus.config import ModelSettings
from dawnchorus.errors import ModelError
from dawnchorus.models.features import LogMel
from dawnchorus.models.heads import Pooling, SedOutput, create_head

# Seed for building a backbone twice when checking that a weights file really was loaded.
CHECK_SEED = 20220524


class BirdClassifier(nn.Module):
    """timm backbone on a one-channel log-mel image ``(B, 1, n_mels, frames)`` plus a head.

    ``head`` is a name registered in :mod:`dawnchorus.models.heads` (``linear``, ``sed``).
    ``forward`` returns logits ``(B, num_classes)`` for every head. With ``in_chans=3`` the mel
    image is repeated over three channels inside ``forward``, so callers always pass one channel.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "linear",
        in_chans: Literal[1, 3] = 1,
        drop_rate: float = 0.2,
        pooling: Pooling = "avgmax",
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ModelError(f"num_classes must be at least 1, got {num_classes}")
        if in_chans not in (1, 3):
            raise ModelError(f"in_chans must be 1 or 3, got {in_chans!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.head_type = head
        self.in_chans = in_chans
        self.num_features = int(backbone.num_features)
        self.head: nn.Module = create_head(head, self.num_features, num_classes, drop_rate, pooling)

    def features(self, spec: Tensor) -> Tensor:
        """Backbone feature map ``(B, C, F', T')`` of a mel batch ``(B, 1, M, F)``."""
        if spec.ndim != 4 or spec.shape[1] != 1:
            raise ValueError(
                f"BirdClassifier expects mel spectrograms shaped (batch, 1, n_mels, frames), got "
                f"shape {tuple(spec.shape)}"
            )
        if self.in_chans == 3:
            channels_last = spec.is_contiguous(memory_format=torch.channels_last)
            spec = spec.repeat(1, 3, 1, 1)
            if channels_last:
                spec = spec.contiguous(memory_format=torch.channels_last)
        feature_map = self.backbone.forward_features(spec)
        if feature_map.ndim != 4:
            raise ModelError(
                f"backbone {type(self.backbone).__name__} returned features shaped "
                f"{tuple(feature_map.shape)}; a CNN feature map (batch, channels, freq, time) is needed"
            )
        return feature_map

    def forward(self, spec: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``; ``sigmoid`` gives the per-class probabilities."""
        output = self.head(self.features(spec))
        return output.logits if isinstance(output, SedOutput) else output

    def forward_sed(self, spec: Tensor) -> SedOutput:
        """Logits, clipwise and framewise probabilities and attention weights (SED head only)."""
        self._require_sed("forward_sed")
        return self.head(self.features(spec))

    def forward_frames(self, spec: Tensor) -> Tensor:
        """Framewise probabilities ``(B, num_classes, T')`` over backbone time steps (SED only)."""
        self._require_sed("forward_frames")
        return self.head(self.features(spec)).framewise

    def _require_sed(self, method: str) -> None:
        if self.head_type != "sed":
            raise ModelError(
                f"{method} needs the SED head (model.head: sed); this model has a "
                f"{self.head_type!r} head, which only gives one score per clip"
            )


class SpectrogramClassifier(nn.Module):
    """Waveform batch (B, T) -> logits (B, C): the log-mel frontend followed by the CNN."""

    def __init__(self, frontend: LogMel, classifier: BirdClassifier, channels_last: bool = False) -> None:
        super().__init__()
        self.frontend = frontend
        self.classifier = classifier
        self.channels_last = channels_last

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """The classifier's input ``(B, 1, n_mels, frames)`` for a waveform batch ``(B, T)``."""
        spec = self.frontend(audio)
        return spec.contiguous(memory_format=torch.channels_last) if self.channels_last else spec

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of a waveform batch ``(B, T)``."""
        return self.classifier(self.spectrogram(audio))


def create_backbone(
    name: str, pretrained: bool = False, weights: str | Path | None = None, in_chans: int = 1
) -> nn.Module:
    """A timm backbone that returns its feature map (no pooling, no classifier).

    ``weights`` (a local state-dict file, ``.pth``/``.bin``/``.safetensors``) implies pretrained
    initialisation from that file; otherwise ``pretrained`` downloads ImageNet weights from the hub.
    Raises :class:`ModelError` naming the backbone or file on any failure.
    """
    if not timm.is_model(name):
        raise ModelError(f"timm has no backbone named {name!r}")
    kwargs: dict[str, Any] = dict(num_classes=0, global_pool="", in_chans=in_chans, features_only=False)
    if weights is not None:
        return _create_from_file(name, Path(weights), kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # network, hub and cache errors come in many types
        raise ModelError(
            f"no network to download ImageNet weights for {name}: train with --no-pretrained "
            f"(model.pretrained: false) or --weights FILE, a local weights file (the hub said "
            f"{type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def build_model(settings: ModelSettings, num_classes: int) -> BirdClassifier:
    """The classifier described by ``settings`` for ``num_classes`` labels."""
    backbone = create_backbone(
        settings.backbone,
        pretrained=settings.pretrained,
        weights=settings.weights,
        in_chans=settings.in_chans,
    )
    return BirdClassifier(
        backbone,
        num_classes=num_classes,
        head=settings.head,
        in_chans=settings.in_chans,
        drop_rate=settings.drop_rate,
        pooling=settings.pooling,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` when asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _create_from_file(name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"weights file {path} for backbone {name} does not exist")
    try:
        with _seeded(CHECK_SEED), _quiet_timm_loader():
            model = timm.create_model(
                name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
    except Exception as exc:  # unreadable file or state dict of another architecture
        raise ModelError(
            f"weights file {path} could not be loaded into backbone {name} (it should be a timm "
            f"state dict for {name}): {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    with _seeded(CHECK_SEED):
        random_init = timm.create_model(name, pretrained=False, **kwargs)
    _check_weights_loaded(model, random_init, name, path)
    return model


@contextmanager
def _quiet_timm_loader() -> Iterator[None]:
    """Mute timm's key-mismatch log lines; :func:`_check_weights_loaded` reports them clearly."""
    builder_logger = logging.getLogger("timm.models._builder")
    previous = builder_logger.level
    builder_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        builder_logger.setLevel(previous)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _check_weights_loaded(model: nn.Module, random_init: nn.Module, name: str, path: Path) -> None:
    """Fail when a weights file left the backbone at its random initialisation.

    timm loads a pretrained file non-strictly when the classifier is dropped, so a file whose tensor
    names do not match (our own model file, a Lightning checkpoint) would load nothing and say so
    only in a log line. Both models are built from the same seed: unchanged weights were not loaded.
    """
    reference = random_init.state_dict()
    weights = {key: value for key, value in model.state_dict().items() if value.ndim > 1}
    unchanged = [key for key, value in weights.items() if torch.equal(value, reference[key])]
    if weights and len(unchanged) == len(weights):
        raise ModelError(
            f"weights file {path} holds no weights for backbone {name}: none of its tensor names "
            f"match (expected names like {next(iter(weights))!r}). It should be a timm/ImageNet "
            f"state dict for {name}; dawnchorus model files are loaded with dawnchorus.load_model"
        )
    if unchanged:
        warnings.warn(
            f"weights file {path}: {len(unchanged)} of {len(weights)} weight tensors of {name} were "
            f"not in the file and keep their random initialisation (first: {unchanged[0]})",
            stacklevel=3,
        )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no details"
