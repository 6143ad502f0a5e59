"""Training with Lightning.

``train(data, out, config)`` reads a BirdCLEF-layout or folder-per-class set, splits it, trains a timm
classifier on log-mel spectrograms with the configured augmentation and imbalance handling, keeps the
best checkpoint by the chosen validation metric and writes ``out/model.pt``: one file with weights,
labels, settings, thresholds and the package version (see :mod:`dawnchorus.models.modelfile`), restored by
:func:`load_model`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import sigmoid_focal_loss

from dawnchorus.augment.batch import BatchAugment
from dawnchorus.augment.noise import NoiseBank
from dawnchorus.augment.waveform import WaveformAugment
from dawnchorus.config import Config
from dawnchorus.data.datasets import (
    AudioCache,
    BackgroundSource,
    ClipDataset,
    encode_targets,
    soundscape_windows,
)
from dawnchorus.data.layouts import TrainingSet, load_training_set
from dawnchorus.data.splits import fold_split, make_weighted_sampler, oversample, stratified_split
from dawnchorus.errors import TrainingError
from dawnchorus.evaluate.metrics import macro_roc_auc, padded_cmap
from dawnchorus.evaluate.thresholds import tune_thresholds
from dawnchorus.io.files import usable_cores
from dawnchorus.models.classifier import build_model
from dawnchorus.models.features import LogMel
from dawnchorus.models.modelfile import (  # noqa: F401 - re-exported: the model file API lived here first
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    LoadedModel,
    ModelFileError,
    SpectrogramClassifier,
    load_model,
    save_model_file,
)

# --- the LightningModule ------------------------------------------------------------------------


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
        self._outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.network(audio)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        settings = self.config.imbalance
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
            per_item = nn.functional.binary_cross_entropy_with_logits(
                logits.float(), targets, reduction="none"
            )
        per_item = per_item.mean(dim=1)
        return (per_item * weights).sum() / weights.sum().clamp_min(1e-6)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        spec = self.network.spectrogram(batch["audio"])
        spec, targets = self.batch_augment(spec, batch["target"])
        logits = self.network.classifier(spec)
        loss = self.loss(logits, targets, batch["weight"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        logits = self(batch["audio"])
        if dataloader_idx == 0:
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
            prefix = "val" if dataloader_idx == 0 else "val_soundscape"
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


def _safe(
    metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, y_score: np.ndarray
) -> float:
    """A metric that is undefined on this batch (no positives at all) logs as NaN, not a crash."""
    try:
        return float(metric(y_true, y_score))
    except ValueError:
        return float("nan")


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


# --- the run ----------------------------------------------------------------------------------------


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


def _num_workers(setting: int) -> int:
    return min(8, usable_cores()) if setting < 0 else setting


def _precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "16-mixed" if torch.cuda.is_available() else "32-true"


def _loader(dataset: Dataset, config: Config, train: bool, sampler=None, world_size: int = 1) -> DataLoader:
    workers = _num_workers(config.train.num_workers)
    return DataLoader(
        dataset,
        batch_size=config.train.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        # Under DDP each of the world_size processes gets 1/world_size of the items.
        drop_last=train and len(dataset) > config.train.batch_size * world_size,
    )


def _training_indices(clips: pd.DataFrame, config: Config) -> tuple[np.ndarray, np.ndarray]:
    settings = config.train
    if settings.fold is not None:
        return fold_split(clips, settings.folds, settings.fold, settings.seed)
    return stratified_split(clips, settings.val_fraction, settings.seed)


def _train_sampler(primary: Sequence[str], config: Config, num_samples: int):
    settings = config.imbalance
    if settings.sampler == "weighted":
        return make_weighted_sampler(primary, settings.sampler_power, num_samples, config.train.seed)
    return None


def _background_source(config: Config) -> BackgroundSource | None:
    """Bird-free negatives come from the background-noise bank, when there is one."""
    if config.augment.noise_dir is None or config.augment.background_only_p == 0:
        return None
    return NoiseBank.cached(config.augment.noise_dir, config.audio.sample_rate).random_segment


def build_datasets(
    training_set: TrainingSet, config: Config, cache: AudioCache
) -> tuple[ClipDataset, ClipDataset, Dataset | None, np.ndarray, np.ndarray]:
    """Train / validation clip datasets (+ soundscape windows) and the train/val index arrays."""
    clips, labels = training_set.clips, training_set.labels
    targets = encode_targets(clips, labels, secondary_weight=config.imbalance.secondary_weight)
    train_idx, val_idx = _training_indices(clips, config)
    primary = clips["primary_label"].to_numpy()
    train_idx = oversample(
        train_idx, primary[train_idx], config.imbalance.min_clips_per_class, config.train.seed
    )
    weights = (
        clips["rating"].fillna(5.0).clip(lower=0.5).to_numpy(dtype=np.float32) / 5.0
        if config.imbalance.rating_weight
        else None
    )
    paths = clips["path"].to_numpy()
    common = {
        "sample_rate": config.audio.sample_rate,
        "clip_samples": config.audio.clip_samples,
        "cache": cache,
    }
    train_set = ClipDataset(
        paths[train_idx],
        targets[train_idx],
        train=True,
        waveform_transform=WaveformAugment(config.augment, config.audio.sample_rate),
        weights=None if weights is None else weights[train_idx],
        seed=config.train.seed,
        background_source=_background_source(config),
        background_only_p=config.augment.background_only_p,
        **common,
    )
    val_set = ClipDataset(paths[val_idx], targets[val_idx], train=False, **common)
    return train_set, val_set, soundscape_windows(training_set, labels, config, cache), train_idx, val_idx


CLIP_METRICS = ("val/roc_auc", "val/cmap", "val/loss", "train/loss_epoch")
SOUNDSCAPE_METRICS = ("val_soundscape/roc_auc", "val_soundscape/cmap")


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


EARLIER_METRICS_NAME = "metrics.before_resume.csv"


def set_aside_metrics(log_dir: Path, checkpoint: Path) -> Path | None:
    """Before a resumed fit: keep the interrupted run's CSV log rows up to the checkpoint.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so the rows logged
    before the checkpoint (steps below its ``global_step``) are moved to a side file, together with
    any rows kept by an earlier resume that was itself interrupted. Returns the side file, or None.
    """
    current, kept = log_dir / "metrics.csv", log_dir / EARLIER_METRICS_NAME
    frames = [pd.read_csv(path) for path in (kept, current) if path.is_file()]
    if not frames:
        return None
    resume_step = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
    earlier = pd.concat(frames, ignore_index=True)
    earlier[earlier["step"] < resume_step].to_csv(kept, index=False)
    current.unlink(missing_ok=True)
    return kept


def restore_metrics(log_dir: Path, kept: Path) -> None:
    """After a resumed fit: one ``metrics.csv`` with the earlier rows followed by the new ones."""
    current = log_dir / "metrics.csv"
    frames = [pd.read_csv(path) for path in (kept, current) if path.is_file()]
    pd.concat(frames, ignore_index=True).to_csv(current, index=False)
    kept.unlink()


def train(
    data: str | Path,
    out: str | Path,
    config: Config,
    resume: bool = False,
    drop_bad: bool = True,
    progress_bar: bool = True,
) -> TrainResult:
    """Train on ``data`` and write ``out/model.pt``.

    ``resume`` continues an interrupted run from ``out/checkpoints/last.ckpt``.
    """
    run_dir = Path(out)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise TrainingError(f"--resume: no checkpoint at {last} to continue from")
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # under DDP every process runs this function
        config.to_yaml(run_dir / "config.yaml")
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    training_set = load_training_set(data, on_problem="drop" if drop_bad else "raise")
    if len(training_set.labels) < 2:
        raise TrainingError(f"{data}: need at least two classes to train, found {len(training_set.labels)}")
    cache = AudioCache(config.train.cache_dir or run_dir / "cache", config.audio.sample_rate)
    train_set, val_set, soundscapes, train_idx, val_idx = build_datasets(training_set, config, cache)
    primary = training_set.clips["primary_label"].to_numpy()
    sampler = _train_sampler(primary[train_idx], config, len(train_idx))
    check_monitor(config.train.monitor, has_soundscapes=soundscapes is not None)
    val_loaders = [_loader(val_set, config, train=False)]
    if soundscapes is not None:
        val_loaders.append(_loader(soundscapes, config, train=False))

    module = BirdModule(config, training_set.labels)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=config.train.monitor,
        mode=config.train.monitor_mode,
        save_last=True,
        save_top_k=1,
    )
    throughput = ThroughputMonitor()
    callbacks: list[Callback] = [checkpoints, throughput, LearningRateMonitor(logging_interval="epoch")]
    if config.train.patience:
        callbacks.append(
            EarlyStopping(
                config.train.monitor, mode=config.train.monitor_mode, patience=config.train.patience
            )
        )
    if progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=config.train.epochs,
        max_steps=config.train.max_steps,
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        strategy=config.train.strategy,
        num_nodes=config.train.num_nodes,
        precision=_precision(config.train.precision),
        gradient_clip_val=config.train.grad_clip,
        callbacks=callbacks,
        logger=[
            CSVLogger(run_dir, name="logs", version=""),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    ckpt_path = str(last) if resume else None
    earlier_metrics = (
        set_aside_metrics(run_dir / "logs", last) if resume and trainer.is_global_zero else None
    )
    with warnings.catch_warnings():
        if earlier_metrics is not None:  # Lightning warns it deletes the old log; its rows are kept
            warnings.filterwarnings("ignore", message="Experiment logs directory .* is not empty")
        trainer.fit(
            module,
            train_dataloaders=_loader(
                train_set, config, train=True, sampler=sampler, world_size=trainer.world_size
            ),
            val_dataloaders=val_loaders,
            ckpt_path=ckpt_path,
        )
    if earlier_metrics is not None and trainer.is_global_zero:
        restore_metrics(run_dir / "logs", earlier_metrics)

    best_path = checkpoints.best_model_path or str(last)
    if trainer.is_global_zero:
        state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    thresholds = _tune_on_validation(module, val_loaders[-1], config) if trainer.is_global_zero else {}
    model_path = run_dir / "model.pt"
    best = checkpoints.best_model_score
    if trainer.is_global_zero:
        save_model_file(
            model_path,
            module.network,
            training_set.labels,
            config,
            thresholds=thresholds,
            scored_labels=training_set.scored_labels,
            metadata={
                "trained_on": str(Path(data).resolve()),
                "train_clips": int(len(train_idx)),
                "val_clips": int(len(val_idx)),
                "monitor": config.train.monitor,
                "best_score": float(best) if best is not None else None,
                "epochs": int(trainer.current_epoch),
                "throughput": throughput.history,
            },
        )
    return TrainResult(
        model_path=model_path,
        run_dir=run_dir,
        best_score=float(best) if best is not None else None,
        monitor=config.train.monitor,
        epochs_run=int(trainer.current_epoch),
        throughput=throughput.history,
        thresholds=thresholds,
        dropped_problems=[str(p) for p in training_set.problems],
    )


@torch.no_grad()
def predict_loader(network: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets over a validation loader."""
    network.eval()
    device = next(network.parameters()).device
    probs, targets = [], []
    for batch in loader:
        probs.append(torch.sigmoid(network(batch["audio"].to(device)).float()).cpu().numpy())
        targets.append(batch["target"].numpy())
    return np.concatenate(probs), np.concatenate(targets)


def _tune_on_validation(module: BirdModule, loader: DataLoader, config: Config) -> dict[str, Any]:
    """Global and per-class thresholds maximising F1 on validation (soundscapes when there are some)."""
    network = module.network.cpu()
    probs, targets = predict_loader(network, loader)
    global_threshold, per_class = tune_thresholds((targets >= 0.5).astype(int), probs)
    return {"global": float(global_threshold), "per_class": [float(t) for t in per_class]}
