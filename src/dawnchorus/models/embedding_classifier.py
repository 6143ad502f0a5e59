"""The network of a model on a frozen pretrained backbone: a small head on the backbone's embeddings.

:class:`EmbeddingClassifier` turns embeddings ``(B, D)`` of a backbone of :mod:`dawnchorus.embed`
(BirdNET, Perch) into one logit per class: the embeddings are standardised with the training set's
per-dimension mean and standard deviation (stored as buffers, so they travel in the model file), then
a head of :mod:`dawnchorus.models.heads` (``linear`` or ``mlp``) classifies them. Its ``classifier``
attribute holds everything the model file stores (as a
:class:`~dawnchorus.models.classifier.SpectrogramClassifier`'s does).

The backbone itself is never part of this network or of the model file (its weights have their own
licence); building and checking it is the inference layer's job. This module does not import
:mod:`dawnchorus.embed`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from dawnchorus.errors import ModelError
from dawnchorus.models.heads import create_head

EMBEDDING_HEADS: tuple[str, ...] = ("linear", "mlp")
# Per-dimension standard deviations below this are treated as this (a constant dimension).
MIN_STD = 1e-6


class StandardizedHead(nn.Module):
    """``head((embeddings - mean) / std)``: mean and std are buffers set by :meth:`fit_scaler`."""

    def __init__(self, head: nn.Module, embedding_size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(embedding_size))
        self.register_buffer("std", torch.ones(embedding_size))
        self.head = head

    def forward(self, embeddings: Tensor) -> Tensor:
        """Embeddings ``(B, D)`` -> logits ``(B, K)``."""
        return self.head((embeddings - self.mean) / self.std)


class EmbeddingClassifier(nn.Module):
    """Embeddings ``(B, embedding_size)`` -> logits ``(B, num_classes)`` through a standardised head.

    ``head`` is ``linear`` or ``mlp`` (see :mod:`dawnchorus.models.heads`); ``drop_rate`` its dropout.
    """

    def __init__(self, embedding_size: int, num_classes: int, head: str = "linear", drop_rate: float = 0.2):
        super().__init__()
        if head not in EMBEDDING_HEADS:
            raise ModelError(
                f"a head on embeddings must be one of {', '.join(EMBEDDING_HEADS)}, got {head!r}"
            )
        if embedding_size < 1 or num_classes < 1:
            raise ModelError(
                f"embedding size and classes must be at least 1, got {embedding_size} and {num_classes}"
            )
        self.embedding_size, self.num_classes, self.head_type = embedding_size, num_classes, head
        self.classifier = StandardizedHead(
            create_head(head, embedding_size, num_classes, drop_rate=drop_rate), embedding_size
        )

    def forward(self, embeddings: Tensor) -> Tensor:
        """Embeddings ``(B, D)`` -> logits ``(B, K)``."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ModelError(
                f"the head takes embeddings of shape (B, {self.embedding_size}), "
                f"got {tuple(embeddings.shape)}"
            )
        return self.classifier(embeddings)

    def fit_scaler(self, embeddings: np.ndarray) -> None:
        """Set the standardisation from training embeddings ``(N, D)``."""
        values = np.asarray(embeddings, dtype=np.float64)
        std = np.maximum(values.std(axis=0), MIN_STD)
        self.classifier.mean.copy_(torch.as_tensor(values.mean(axis=0), dtype=torch.float32))
        self.classifier.std.copy_(torch.as_tensor(std, dtype=torch.float32))
