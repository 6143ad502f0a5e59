"""The LightningModule of a training run and its callbacks.

:class:`BirdModule` holds the network (log-mel frontend + classifier), the batch augmentation
(mixup, SpecAugment), the loss (BCE or focal on logits, with label smoothing and per-clip weights),
validation on clips and labelled soundscapes (macro ROC-AUC, padded cmAP, scored once per item under
DDP) and the optimiser with its warmup-then-cosine schedule. :class:`ThroughputMonitor` logs training
clips per second.

This module does not read data (:mod:`dawnchorus.training.datamodule`) nor start or finish a run
(:mod:`dawnchorus.training.run`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from dawnchorus.augment.batch import BatchAugment
from dawnchorus.config import Config, ImbalanceSettings
from dawnchorus.evaluate.metrics import macro_roc_auc, padded_cmap
from dawnchorus.models.classifier import SpectrogramClassifier, build_model
from dawnchorus.models.features import LogMel


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warmup to 1, then cosine decay towards 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class BirdModule(L.LightningModule):
    """Frontend, batch augmentation, classifier and loss, with clip and soundscape validation."""

    def __init__(self, config: Config, labels: list[str]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config.model_dump(mode="json"), "labels": labels})
        self.config, self.labels = config, labels
        self.network = SpectrogramClassifier(
            LogMel.from_settings(config.audio, config.frontend),
            build_model(config.model, len(labels)),
            channels_last=config.train.channels_last,
        )
        if config.train.channels_last:
            self.network.classifier.to(memory_format=torch.channels_last)
        self.batch_augment = BatchAugment(config.augment)
        # The metric prefix of each validation loader (BirdDataModule.validation_prefixes): held-out
        # clips log val/..., labelled soundscape windows val_soundscape/...; a set may lack either.
        self.validation_prefixes: tuple[str, ...] = ("val", "val_soundscape")
        self._outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of a waveform batch ``(B, T)``."""
        return self.network(audio)

    def loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted mean over clips of the per-class BCE (or focal) loss (:func:`clip_loss`)."""
        return clip_loss(logits, targets, weights, self.config.imbalance, mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        spec = self.network.spectrogram(batch["audio"])
        mask = batch.get("mask")
        if mask is None:
            spec, targets = self.batch_augment(spec, batch["target"])
        else:  # mixing takes the union of targets; of "unjudged" too, so a label is judged in both
            classes = batch["target"].shape[1]
            spec, both = self.batch_augment(spec, torch.cat([batch["target"], 1 - mask], dim=1))
            targets, mask = both[:, :classes], 1 - both[:, classes:]
        logits = self.network.classifier(spec)
        loss = self.loss(logits, targets, batch["weight"], mask)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        logits = self(batch["audio"])
        if self.validation_prefixes[dataloader_idx] == "val":
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["target"])
            self.log("val/loss", loss, batch_size=len(logits), add_dataloader_idx=False, sync_dist=True)
        probs = torch.sigmoid(logits.float())
        self._outputs.setdefault(dataloader_idx, []).append(
            (probs.detach(), batch["target"].detach(), batch["index"].detach())
        )

    def on_validation_epoch_end(self) -> None:
        for dataloader_idx, pieces in sorted(self._outputs.items()):
            probs = torch.cat([p for p, _, _ in pieces])
            targets = torch.cat([t for _, t, _ in pieces])
            if self.trainer.world_size > 1:  # every rank scores the whole validation set, each item once
                indices = torch.cat([i for _, _, i in pieces])
                probs, targets = first_of_each_index(
                    self.all_gather(indices).flatten(0, 1),
                    self.all_gather(probs).flatten(0, 1),
                    self.all_gather(targets).flatten(0, 1),
                )
            y_true = (targets.cpu().numpy() >= 0.5).astype(int)
            y_score = probs.cpu().numpy()
            prefix = self.validation_prefixes[dataloader_idx]
            self.log(f"{prefix}/roc_auc", _safe(macro_roc_auc, y_true, y_score), prog_bar=True)
            self.log(f"{prefix}/cmap", _safe(padded_cmap, y_true, y_score))
            self.log(f"{prefix}/items", float(len(y_true)))
        self._outputs.clear()

    def configure_optimizers(self) -> dict[str, Any]:
        settings = self.config.train
        optimizer = torch.optim.AdamW(self.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))  # also loads the train data
        steps_per_epoch = self._steps_per_epoch(total)
        warmup = min(total // 2, int(settings.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _steps_per_epoch(self, total: int) -> int:
        """Optimizer steps per epoch (from the loader's length; correct when max_steps ends early)."""
        batches = self.trainer.num_training_batches
        if math.isfinite(batches):
            return max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
        return max(1, total // max(1, self.trainer.max_epochs or 1))


def clip_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    settings: ImbalanceSettings,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over clips of the per-class BCE (or focal) loss, as ``settings`` choose.

    Label smoothing (``imbalance.label_smoothing``) is applied here and nowhere else: targets move
    towards 0.5 by ``label_smoothing / 2`` after mixup, so validation targets stay hard. ``mask``
    (``(B, C)``, 1 judged, 0 not) leaves the labels nobody judged out of an item's mean; all ones
    gives the plain mean.
    """
    if settings.label_smoothing:
        targets = targets * (1 - settings.label_smoothing) + settings.label_smoothing / 2
    if settings.loss == "focal":
        per_item = sigmoid_focal_loss(
            logits.float(),
            targets,
            alpha=settings.focal_alpha if settings.focal_alpha is not None else -1,
            gamma=settings.focal_gamma,
            reduction="none",
        )
    else:
        per_item = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    if mask is None:
        per_item = per_item.mean(dim=1)
    else:
        mask = mask.to(per_item.dtype)
        per_item = (per_item * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-6)
    return (per_item * weights).sum() / weights.sum().clamp_min(1e-6)


def first_of_each_index(indices: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows of ``tensors`` for the first occurrence of each dataset index, in index order.

    A DistributedSampler pads the ranks' shares to equal length by repeating items; gathered
    validation outputs hold those repeats, which must be scored once.
    """
    order = torch.argsort(indices, stable=True)
    ordered = indices[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = order[first]
    return tuple(tensor[keep] for tensor in tensors)


class ThroughputMonitor(Callback):
    """Logs training clips per second for each epoch (first epoch decodes, later ones hit the cache)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self._start = 0.0
        self._clips = 0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._clips = time.perf_counter(), 0

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        self._clips += len(batch["audio"]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        rate = self._clips / max(seconds, 1e-9)
        self.history.append({"epoch": trainer.current_epoch, "clips": self._clips, "seconds": seconds})
        module.log("train/clips_per_s", rate, prog_bar=True, sync_dist=False, rank_zero_only=True)


def _safe(
    metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, y_score: np.ndarray
) -> float:
    """A metric that is undefined on this batch (no positives at all) logs as NaN, not a crash."""
    try:
        return float(metric(y_true, y_score))
    except ValueError:
        return float("nan")
