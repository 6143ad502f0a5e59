"""A training run: ``train(data, out, config)`` wires the data module, the LightningModule and the trainer.

It reads a BirdCLEF-layout or folder-per-class set (:class:`~dawnchorus.training.datamodule.BirdDataModule`),
trains a timm classifier on log-mel spectrograms (:class:`~dawnchorus.training.module.BirdModule`), keeps
the best checkpoint by the chosen validation metric, tunes thresholds on validation and writes
``out/model.pt``: one file with weights, labels, settings, thresholds and the package version (see
:mod:`dawnchorus.models.modelfile`). A config naming a zoo backbone (``embedding.backbone``) trains a
head on that frozen backbone instead (:mod:`dawnchorus.training.frozen`). ``resume`` continues
from ``out/checkpoints/last.ckpt`` and keeps the interrupted run's metric rows.

This module owns the run folder, the trainer, the checkpoints and the model file written at the end;
data and model live in :mod:`dawnchorus.training.datamodule` and :mod:`dawnchorus.training.module`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import warnings
from collections.abc import Callable, Iterator
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
from torch.utils.data import DataLoader

from dawnchorus.augment.noise import NoiseBank
from dawnchorus.config import Config
from dawnchorus.errors import TrainingError
from dawnchorus.evaluate.thresholds import tune_thresholds
from dawnchorus.io.files import output_folder
from dawnchorus.models.modelfile import load_model, load_refusal, save_model_file
from dawnchorus.training.datamodule import BirdDataModule
from dawnchorus.training.frozen import train_frozen
from dawnchorus.training.module import BirdModule, ThroughputMonitor
from dawnchorus.training.result import Monitor, TrainResult, check_monitor, choose_monitor, tell
from dawnchorus.training.windows import WindowItems


def train(
    data: str | Path,
    out: str | Path,
    config: Config,
    resume: bool = False,
    drop_bad: bool = True,
    progress_bar: bool = True,
    windows: WindowItems | None = None,
    init_from: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on ``data`` and write ``out/model.pt``.

    ``resume`` continues an interrupted run from ``out/checkpoints/last.ckpt``; ``drop_bad`` skips
    clips with problems (listed in ``TrainResult.dropped_problems``) instead of refusing the set.
    With ``config.embedding.backbone`` set (a zoo backbone such as ``birdnet``), a head is trained on
    that frozen backbone's embeddings instead (:func:`~dawnchorus.training.frozen.train_frozen`;
    ``resume`` then retrains the head from the cached embeddings, in seconds). ``windows`` (soundscape
    windows with soft targets in the data set's label order, e.g. pseudo-labels) join the training
    items (see :class:`~dawnchorus.training.datamodule.BirdDataModule`); not with a frozen backbone.
    ``init_from``: a model file of the same network and labels whose weights the run starts from instead
    of the backbone's pretrained ones (a noisy student warm-started from its teacher; ``resume`` still
    continues from the checkpoint). ``log`` gets a line when the run monitors another metric than
    ``train.monitor`` (one its validation set cannot define, see
    :func:`~dawnchorus.training.result.choose_monitor`); without it, that line is a warning.
    """
    if config.embedding.backbone is not None:
        if windows is not None:
            raise TrainingError(
                "window items (pseudo-labelled windows) train a fine-tuned CNN, not a head on a frozen "
                "backbone: give the student a timm backbone (selftrain.student_backbone, --student-model)"
            )
        return train_frozen(data, out, config, drop_bad=drop_bad, progress_bar=progress_bar, log=log)
    run_dir = Path(out)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise TrainingError(f"--resume: no checkpoint at {last} to continue from")
    resume_step = int(read_checkpoint(last).get("global_step", 0)) if resume else 0
    if config.augment.noise_dir is not None:  # loaded once per process: the data module reuses it
        NoiseBank.cached(config.augment.noise_dir, config.audio.sample_rate)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    data_module = BirdDataModule(
        data, config, config.train.cache_dir or run_dir / "cache", drop_bad, windows=windows
    )
    # The network is built (pretrained weights fetched) before the run folder: offline, or with a
    # weights file that does not fit, the run fails with nothing written.
    module = BirdModule(config, data_module.read().labels)
    if init_from is not None:
        start_from_model(module, Path(init_from))
    data_module.setup("fit")  # the split (nothing written: the audio cache fills while training)
    module.validation_prefixes = data_module.validation_prefixes
    check_monitor(
        config.train.monitor,
        has_soundscapes="val_soundscape" in module.validation_prefixes,
        has_validation_clips="val" in module.validation_prefixes,
    )
    monitor = choose_monitor(
        config.train.monitor,
        config.train.monitor_mode,
        data_module.val_set.targets if "val" in module.validation_prefixes else None,
        data_module.soundscapes.targets if "val_soundscape" in module.validation_prefixes else None,
    )
    if monitor.note is not None and rank_zero_only.rank == 0:
        tell(monitor.note, log)
    output_folder(run_dir, "run folder")  # only now: every input above was checked first
    if rank_zero_only.rank == 0:  # under DDP every process runs this function
        config.to_yaml(run_dir / "config.yaml")

    checkpoints, latest = run_checkpoints(run_dir / "checkpoints", config, monitor)
    throughput = ThroughputMonitor()
    # A multi-process run keeps Lightning's lines: how its processes met is what its user checks first.
    setup = config.train
    several = setup.strategy != "auto" or setup.num_nodes > 1 or str(setup.devices) not in ("auto", "1")
    quiet = warnings.catch_warnings if several else quiet_lightning
    with quiet():
        trainer = _trainer(
            config, run_dir, [checkpoints, latest, throughput], progress_bar,
            validate=bool(module.validation_prefixes), monitor=monitor,
        )
    earlier_metrics = (
        set_aside_metrics(run_dir / "logs", resume_step) if resume and trainer.is_global_zero else None
    )
    with quiet():
        for notice in RUN_FOLDER_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        # A run folder is untrusted input: its checkpoints load as tensors and plain data only.
        checkpoint = str(last) if resume else None
        trainer.fit(module, datamodule=data_module, ckpt_path=checkpoint, weights_only=True)
    if earlier_metrics is not None and trainer.is_global_zero:
        restore_metrics(run_dir / "logs", earlier_metrics)

    model_path = run_dir / "model.pt"
    best = checkpoints.best_model_score
    best_score = float(best) if best is not None and math.isfinite(float(best)) else None
    thresholds: dict[str, Any] = {}
    if trainer.is_global_zero:
        best_path = checkpoints.best_model_path or str(last)
        module.load_state_dict(read_checkpoint(Path(best_path))["state_dict"])
        thresholds = _tune_on_validation(module, data_module.val_dataloader())
        save_model_file(
            model_path,
            module.network,
            data_module.labels,
            config,
            thresholds=thresholds,
            scored_labels=data_module.training_set.scored_labels,
            metadata={
                "trained_on": str(Path(data).resolve()),
                "train_clips": int(len(data_module.train_idx)),
                "val_clips": int(len(data_module.val_idx)),
                "monitor": monitor.name,
                "best_score": best_score,
                "epochs": int(trainer.current_epoch),
                "throughput": throughput.history,
            },
        )
    return TrainResult(
        model_path=model_path,
        run_dir=run_dir,
        best_score=best_score,
        monitor=monitor.name,
        epochs_run=int(trainer.current_epoch),
        throughput=throughput.history,
        thresholds=thresholds,
        dropped_problems=[str(p) for p in data_module.training_set.problems],
    )


EARLIER_METRICS_NAME = "metrics.before_resume.csv"


def run_checkpoints(
    folder: Path, config: Config, monitor: Monitor | None = None
) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The two checkpoints of a run in ``folder``: ``best.ckpt`` (the best epoch by ``monitor``, default
    ``train.monitor``, what model.pt is made from) and ``last.ckpt`` (the last finished epoch, what
    ``resume`` continues). An epoch whose monitored metric is undefined (NaN) is never the best one
    (:class:`FiniteBestCheckpoint`).

    ``last.ckpt`` has a callback of its own, saved after the best one: Lightning 2.6's
    ``save_last=True`` writes it only at an epoch that also wrote a new best, so after an epoch that
    did not improve it still held the earlier epoch and a resume trained that epoch again. Saved
    after the best one, it carries the best score so far, so a resumed run keeps the best epoch.
    Without a version counter a fresh run in a used folder replaces both files (was: ``best-v1.ckpt``
    beside the earlier run's, and ``--resume`` then continued the earlier run).
    """
    monitor = monitor or Monitor(config.train.monitor, config.train.monitor_mode)
    best = FiniteBestCheckpoint(
        dirpath=folder,
        filename="best",
        monitor=monitor.name,
        mode=monitor.mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1, enable_version_counter=False)
    return best, last


class FiniteBestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: Lightning's checkpoint of the best epoch, where an epoch whose monitored metric is
    undefined (NaN or infinite) is never saved as the best one. Lightning stored a NaN as -inf (+inf
    for a "min" metric), so a first epoch without a defined score became the best and stayed so while
    no later epoch had one ("best = -inf", model.pt from epoch 0); the run's last epoch is used then.

    Its state in a checkpoint is keyed as a plain ModelCheckpoint's: runs saved before it resume."""

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        """Whether ``current`` enters the top k (never when it is not finite)."""
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current))):
            return False
        return super().check_monitor_top_k(trainer, current)

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"


class FiniteEarlyStopping(EarlyStopping):
    """Early stopping that passes over an epoch whose monitored metric is undefined (NaN): it neither
    improves nor counts towards ``patience``. Lightning's own stopped the run at the first such epoch
    (``check_finite``), so a later epoch could never improve on it.

    Its state in a checkpoint is keyed as a plain EarlyStopping's: runs saved before it resume."""

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if not bool(torch.isfinite(current)):
            return False, None
        return super()._evaluate_stopping_criteria(current)

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{EarlyStopping.__qualname__}{kwargs!r}"


# Lightning's own lines that are not for our users: device banners ("GPU available: False"),
# advertising tips, "Loading `train_dataloader` ...", "`Trainer.fit` stopped", and its dependencies'
# deprecation chatter. Its warnings about the run itself (WARNING and above) still show.
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_utilities")
LIBRARY_CHATTER = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    # Lightning's tip to raise a loader's num_workers (where the cores allow more than one): the
    # setting is train.num_workers, by default the usable cores up to 8 (training/datamodule.py).
    r".*does not have many workers which may be a bottleneck.*",
    # train.max_steps ending an epoch before its validation: the monitor exists (check_monitor), this
    # epoch logged none; model.pt is then the best validated epoch, or last.ckpt when none was.
    r".*ModelCheckpoint\(monitor=.*could not find the monitored key.*",
)
# Lightning's notices that a run folder holds files: a resume keeps the earlier metric rows
# (set_aside_metrics), a fresh run replaces its checkpoints and logs (run_checkpoints), as model.pt.
RUN_FOLDER_NOTICES = ("Experiment logs directory .* is not empty", "Checkpoint directory .* is not empty")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within: Lightning logs warnings only, and known library deprecation messages are hidden."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in LIBRARY_CHATTER:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def start_from_model(module: BirdModule, path: Path) -> None:
    """Load the network weights of model file ``path`` into ``module`` (same backbone, head and labels);
    one :class:`TrainingError` naming the file when they do not fit."""
    model = load_model(path, build_network=False)
    if model.backbone is not None or model.labels != module.labels:
        raise TrainingError(f"{path}: not a model of this run's network and labels; cannot start from it")
    state = model.stored_state if model.stored_state is not None else model.network.classifier.state_dict()
    try:
        module.network.classifier.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainingError(
            f"{path}: its weights do not fit this run's network ({str(exc).splitlines()[0]})"
        ) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint of a run folder, read as tensors and plain data only (nothing in it runs).

    A file that is not such a checkpoint (or holds pickled objects) is a :class:`TrainingError` naming it.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        pickled_object, diagnosis = load_refusal(exc)
        if pickled_object is not None:
            diagnosis = (
                f"it holds a pickled Python object ({pickled_object}) that unpickling would call; "
                "refused, nothing in it ran"
            )
        raise TrainingError(
            f"{path}: not a training checkpoint that can be read safely ({diagnosis})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise TrainingError(f"{path}: not a training checkpoint (no state_dict)")
    return checkpoint


def set_aside_metrics(log_dir: Path, resume_step: int) -> Path | None:
    """Before a resumed fit: keep the interrupted run's CSV log rows up to the checkpoint.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so the rows logged
    before the checkpoint (steps below ``resume_step``, its ``global_step``) are moved to a side
    file, together with any rows kept by an earlier resume that was itself interrupted. Returns the
    side file, or None.
    """
    current, kept = log_dir / "metrics.csv", log_dir / EARLIER_METRICS_NAME
    frames = [pd.read_csv(path) for path in (kept, current) if path.is_file()]
    if not frames:
        return None
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


def _trainer(
    config: Config,
    run_dir: Path,
    callbacks: list[Callback],
    progress_bar: bool,
    validate: bool = True,
    monitor: Monitor | None = None,
) -> L.Trainer:
    """The Lightning trainer of a run: ``callbacks`` plus learning-rate logging, early stopping on
    ``monitor`` (default ``train.monitor``) when ``train.patience`` is set, and the progress bar; CSV
    and TensorBoard logs in ``run_dir``; ``validate`` False: no validation loop (the set has nothing
    to validate on)."""
    settings = config.train
    monitor = monitor or Monitor(settings.monitor, settings.monitor_mode)
    callbacks = [*callbacks, LearningRateMonitor(logging_interval="epoch")]
    if settings.patience:
        callbacks.append(FiniteEarlyStopping(monitor.name, mode=monitor.mode, patience=settings.patience))
    if progress_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=True))
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=settings.epochs,
        max_steps=settings.max_steps,
        accelerator=settings.accelerator,
        devices=settings.devices,
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        precision=_precision(settings.precision),
        gradient_clip_val=settings.grad_clip,
        callbacks=callbacks,
        logger=[
            CSVLogger(run_dir, name="logs", version=""),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        limit_val_batches=None if validate else 0,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def _precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "16-mixed" if torch.cuda.is_available() else "32-true"


def _tune_on_validation(module: BirdModule, loaders: list[DataLoader]) -> dict[str, Any]:
    """Global and per-class thresholds maximising F1 on validation (soundscapes when there are some);
    0.5 for every class without validation data."""
    if not loaders:
        return {"global": 0.5, "per_class": None}
    network = module.network.cpu()
    probs, targets = predict_loader(network, loaders[-1])
    global_threshold, per_class = tune_thresholds((targets >= 0.5).astype(int), probs)
    return {"global": float(global_threshold), "per_class": [float(t) for t in per_class]}
