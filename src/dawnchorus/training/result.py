"""What a training run gives back, and the validation metrics a run can monitor.

Shared by both training paths: fine-tuning a timm CNN (:mod:`dawnchorus.training.run`) and a head on
a frozen pretrained backbone (:mod:`dawnchorus.training.frozen`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dawnchorus.errors import TrainingError

CLIP_METRICS = ("val/roc_auc", "val/cmap", "val/loss", "train/loss_epoch")
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


def check_monitor(monitor: str, has_soundscapes: bool) -> None:
    """Refuse, before training, a ``train.monitor`` the run will never log (a typo would otherwise
    silently disable best-checkpoint selection, or stop early stopping after the first epoch)."""
    available = CLIP_METRICS + (SOUNDSCAPE_METRICS if has_soundscapes else ())
    if monitor in available:
        return
    reason = (
        "the training set has no labelled soundscapes (test_soundscapes/ and test_labels.csv)"
        if monitor in SOUNDSCAPE_METRICS
        else "no such metric"
    )
    raise TrainingError(f"train.monitor: {monitor!r}: {reason}; choose one of {', '.join(available)}")
