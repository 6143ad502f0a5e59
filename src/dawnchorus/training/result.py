"""What a training run gives back, the validation metrics a run can monitor, and the one it does.

Shared by both training paths: fine-tuning a timm CNN (:mod:`dawnchorus.training.run`) and a head on
a frozen pretrained backbone (:mod:`dawnchorus.training.frozen`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dawnchorus.errors import TrainingError
from dawnchorus.evaluate.metrics import roc_auc_classes

TRAINING_METRICS = ("train/loss_epoch",)
CLIP_METRICS = ("val/roc_auc", "val/cmap", "val/loss", *TRAINING_METRICS)
SOUNDSCAPE_METRICS = ("val_soundscape/roc_auc", "val_soundscape/cmap")


@dataclass
class TrainResult:
    """What a training run produced."""

    model_path: Path
    run_dir: Path
    best_score: float | None
    monitor: str
    epochs_run: int
    throughput: list[dict[str, float]]
    thresholds: dict[str, Any]
    dropped_problems: list[str]


def check_monitor(monitor: str, has_soundscapes: bool, has_validation_clips: bool = True) -> None:
    """Refuse, before training, a ``train.monitor`` the run will never log (a typo would otherwise
    silently disable best-checkpoint selection, or stop early stopping after the first epoch).

    ``has_validation_clips`` False: no clip is held out for validation (every class has a single
    clip, which stays in training), so the clip metrics are never logged either."""
    clip_metrics = CLIP_METRICS if has_validation_clips else TRAINING_METRICS
    available = clip_metrics + (SOUNDSCAPE_METRICS if has_soundscapes else ())
    if monitor in available:
        return
    if monitor in SOUNDSCAPE_METRICS:
        reason = "the training set has no labelled soundscapes (test_soundscapes/ and test_labels.csv)"
    elif monitor in CLIP_METRICS:
        reason = "no clip is held out for validation (a class's only clip stays in training)"
    else:
        reason = "no such metric"
    raise TrainingError(f"train.monitor: {monitor!r}: {reason}; choose one of {', '.join(available)}")


@dataclass(frozen=True)
class Monitor:
    """The metric a run picks its best epoch by (and early-stops on), and which way is better.

    ``note``: why it is not ``train.monitor`` (one line for the user), None when it is.
    """

    name: str
    mode: str  # "max" or "min"
    note: str | None = None

    def improves(self, score: float, best: float | None) -> bool:
        """Whether an epoch scoring ``score`` replaces the best so far (``best``; None: none yet).

        An undefined score (NaN, e.g. ROC-AUC of an epoch whose predictions were not finite) never
        does, and leaves the best as it was; ties go to the later epoch."""
        if not math.isfinite(score):
            return False
        return best is None or (score >= best if self.mode == "max" else score <= best)


def choose_monitor(
    monitor: str,
    mode: str,
    validation_targets: np.ndarray | None,
    soundscape_targets: np.ndarray | None = None,
) -> Monitor:
    """The metric a run monitors: ``monitor`` (``mode``), or a defined one when the validation labels
    cannot define it, known before training.

    A ROC-AUC needs a class with both positive and negative items (targets >= 0.5) among the validation
    clips (``validation_targets``, ``(clips, classes)``) or soundscape windows (``soundscape_targets``);
    a tiny set (a single validation clip) has none, so the metric would be NaN every epoch and the
    first epoch would stay the best one. The run then monitors ``val/loss`` (lowest best), or
    ``train/loss_epoch`` when no clip is held out, and :attr:`Monitor.note` says so. cmAP (padded) and
    the losses are defined on any non-empty set."""
    prefix, _, metric = monitor.partition("/")
    targets = {"val": validation_targets, "val_soundscape": soundscape_targets}.get(prefix)
    if metric != "roc_auc" or targets is None or not len(targets):
        return Monitor(monitor, mode)
    if roc_auc_classes(np.asarray(targets) >= 0.5).any():
        return Monitor(monitor, mode)
    has_clips = validation_targets is not None and len(validation_targets) > 0
    fallback = "val/loss" if has_clips else TRAINING_METRICS[0]
    items = "clip" if prefix == "val" else "soundscape window"
    count = f"{len(targets)} validation {items}{'' if len(targets) == 1 else 's'}"
    note = (
        f"train.monitor: {monitor} is undefined on this validation set (among its {count}, no class has "
        f"both positives and negatives); the best epoch is the one of lowest {fallback} instead"
    )
    return Monitor(fallback, "min", note)


def tell(line: str, log: Callable[[str], None] | None) -> None:
    """Give ``line`` to ``log``, or warn with it when there is none (a caller of the Python API)."""
    if log is not None:
        log(line)
    else:
        warnings.warn(line, stacklevel=3)

