"""Classification heads, built by name from a registry (timm's ``register_model`` pattern).

A head turns a backbone feature map ``(B, C, F', T')`` into one logit per class. Each head builder is
registered under the name the configuration uses (``model.head``) with :func:`register_head`;
:func:`create_head` builds one by name, so a new head (an MLP, a few-shot prototype head) is added
here without touching the classifier or its callers. Heads today:

- ``linear``: global pooling (average+max or GeM) -> dropout -> linear layer.
- ``mlp``: global pooling -> dropout -> linear -> GELU -> dropout -> linear (:data:`MLP_HIDDEN` units).
- ``sed``: sound-event detection with attention pooling over time (BirdCLEF 2021/2022 "AttBlockV2");
  it returns a :class:`SedOutput` whose ``logits`` the classifier passes on.

``linear`` and ``mlp`` also take an embedding ``(B, C)`` (a frozen backbone's output, see
:mod:`dawnchorus.models.embedding_classifier`): there is nothing to pool, so pooling is skipped.

This module owns the head layers and the registry; it does not own the backbone or the model file
(:mod:`dawnchorus.models.classifier`, :mod:`dawnchorus.models.modelfile`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawnchorus.errors import ModelError

Pooling = Literal["avgmax", "gem"]

# Hidden units of the mlp head: a small MLP on a 1024-d BirdNET embedding (the size of
# BirdNET-Analyzer's custom-classifier hidden layer is a user choice; 256 keeps the head small).
MLP_HIDDEN = 256

# SED clipwise probabilities are clamped to [eps, 1 - eps] before the logit, so logits stay finite.
PROBABILITY_EPS = 1e-6


class HeadBuilder(Protocol):
    """What :func:`register_head` accepts: every head gets the same keyword arguments."""

    def __call__(
        self, num_features: int, num_classes: int, *, drop_rate: float, pooling: Pooling
    ) -> nn.Module: ...


_HEADS: dict[str, HeadBuilder] = {}


def register_head(name: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator: register a head builder under ``name`` (the value of ``model.head``)."""

    def register(builder: HeadBuilder) -> HeadBuilder:
        if name in _HEADS:
            raise ModelError(f"a head named {name!r} is already registered")
        _HEADS[name] = builder
        return builder

    return register


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(_HEADS)


def create_head(
    name: str, num_features: int, num_classes: int, drop_rate: float = 0.2, pooling: Pooling = "avgmax"
) -> nn.Module:
    """The head registered as ``name`` for a ``num_features``-channel feature map and ``num_classes``.

    Raises :class:`ModelError` naming the registered heads when ``name`` is not one of them.
    """
    builder = _HEADS.get(name)
    if builder is None:
        raise ModelError(f"head must be one of {', '.join(map(repr, list_heads()))}, got {name!r}")
    return builder(num_features, num_classes, drop_rate=drop_rate, pooling=pooling)


class SedOutput(NamedTuple):
    """Everything the SED head computes for a batch.

    ``logits``/``clipwise``: ``(B, K)``; ``framewise``/``attention``: ``(B, K, T')`` where ``T'``
    is the number of time steps of the backbone feature map.
    """

    logits: Tensor
    clipwise: Tensor
    framewise: Tensor
    attention: Tensor


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial axes with a learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C)``."""
        pooled = features.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / self.p)


class AvgMaxPool(nn.Module):
    """Mean of global average and global max pooling over the spatial axes."""

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C)``."""
        return 0.5 * (features.mean(dim=(-2, -1)) + features.amax(dim=(-2, -1)))


def pooled(pool: nn.Module, features: Tensor) -> Tensor:
    """``pool(features)`` for a feature map ``(B, C, H, W)``; an embedding ``(B, C)`` as it is."""
    return features if features.ndim == 2 else pool(features)


class LinearHead(nn.Module):
    """Global pooling -> dropout -> linear layer: one logit per class."""

    def __init__(
        self, num_features: int, num_classes: int, drop_rate: float, pooling: Pooling = "avgmax"
    ) -> None:
        super().__init__()
        self.pool = GeM() if pooling == "gem" else AvgMaxPool()
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Feature map ``(B, C, H, W)`` (or embedding ``(B, C)``) -> logits ``(B, K)``."""
        return self.fc(self.dropout(pooled(self.pool, features)))


class MlpHead(nn.Module):
    """Global pooling -> dropout -> linear -> GELU -> dropout -> linear: one logit per class."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        drop_rate: float,
        pooling: Pooling = "avgmax",
        hidden: int = MLP_HIDDEN,
    ) -> None:
        super().__init__()
        self.pool = GeM() if pooling == "gem" else AvgMaxPool()
        self.layers = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(num_features, hidden),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Feature map ``(B, C, H, W)`` (or embedding ``(B, C)``) -> logits ``(B, K)``."""
        return self.layers(pooled(self.pool, features))


class SedHead(nn.Module):
    """Sound-event-detection head with attention pooling over time (BirdCLEF "AttBlockV2").

    The feature map is averaged over frequency, smoothed over time (max-pool + average-pool,
    kernel 3), projected to a hidden layer, then each time step gets a class probability
    ``sigmoid(cla)`` and an attention weight ``softmax(tanh(att))`` over time. The clip
    probability is the attention-weighted sum of the frame probabilities, so it always lies between
    the smallest and the largest frame probability of its class.
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        self.hidden = nn.Linear(num_features, num_features)
        self.attention = nn.Conv1d(num_features, num_classes, kernel_size=1)
        self.classifier = nn.Conv1d(num_features, num_classes, kernel_size=1)
        for layer in (self.hidden, self.attention, self.classifier):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> SedOutput:
        """Feature map ``(B, C, F', T')`` (frequency, then time) -> :class:`SedOutput`."""
        sequence = features.mean(dim=2)
        sequence = F.max_pool1d(sequence, kernel_size=3, stride=1, padding=1) + F.avg_pool1d(
            sequence, kernel_size=3, stride=1, padding=1
        )
        sequence = F.dropout(sequence, p=self.drop_rate, training=self.training)
        sequence = F.relu(self.hidden(sequence.transpose(1, 2))).transpose(1, 2)
        sequence = F.dropout(sequence, p=self.drop_rate, training=self.training)
        attention = torch.softmax(torch.tanh(self.attention(sequence)).float(), dim=-1)
        framewise = torch.sigmoid(self.classifier(sequence).float())
        clipwise = (attention * framewise).sum(dim=-1)
        logits = torch.logit(clipwise.clamp(PROBABILITY_EPS, 1.0 - PROBABILITY_EPS))
        return SedOutput(logits=logits, clipwise=clipwise, framewise=framewise, attention=attention)


@register_head("linear")
def linear(num_features: int, num_classes: int, *, drop_rate: float, pooling: Pooling) -> nn.Module:
    """:class:`LinearHead` with the configured global pooling."""
    return LinearHead(num_features, num_classes, drop_rate, pooling)


@register_head("mlp")
def mlp(num_features: int, num_classes: int, *, drop_rate: float, pooling: Pooling) -> nn.Module:
    """:class:`MlpHead` with the configured global pooling and :data:`MLP_HIDDEN` hidden units."""
    return MlpHead(num_features, num_classes, drop_rate, pooling)


@register_head("sed")
def sed(num_features: int, num_classes: int, *, drop_rate: float, pooling: Pooling) -> nn.Module:
    """:class:`SedHead`; it pools over time by attention, so ``pooling`` does not apply."""
    return SedHead(num_features, num_classes, drop_rate)
