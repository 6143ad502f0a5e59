"""What a training run gives back, and the validation metrics a run can monitor.

Shared by both training paths: fine-tuning a timm CNN (:mod:`dawnchorus.training.run`) and a head on
a frozen pretrained backbone (:mod:`dawnchorus.training.frozen`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawnchorus.errors import TrainingError

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
