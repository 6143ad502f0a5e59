"""The training data as a LightningDataModule: data sets, split, samplers and loaders.

:class:`BirdDataModule` reads the training set (BirdCLEF layout or folder per class), splits it
(stratified, or fold K of a K-fold), oversamples rare classes, builds the training clips (random crops,
waveform augmentation, optional bird-free negatives from the noise bank), the validation clips and the
labelled soundscape windows, and hands Lightning one training loader (weighted sampler when asked; an
epoch of at least ``train.min_steps_per_epoch`` steps however few the clips) and up to two validation
loaders (held-out clips, then soundscapes; each only when there are some). Decoded audio goes through one
:class:`~dawnchorus.data.datasets.AudioCache`. Given window items (pseudo-labelled soundscape windows,
:class:`~dawnchorus.training.windows.WindowItems`), the training items are the labelled clips, a share
``selftrain.mix_p`` of them mixed with a random window, followed by the windows themselves
(``selftrain.window_items``).

This module owns the wiring of data for a run; the data sets, splits and samplers themselves live in
:mod:`dawnchorus.data`, the model and loss in :mod:`dawnchorus.training.module`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from dawnchorus.augment.noise import NoiseBank
from dawnchorus.augment.waveform import WaveformAugment
from dawnchorus.config import Config
from dawnchorus.data.datasets import (
    AudioCache,
    BackgroundSource,
    ClipDataset,
    SoundscapeWindows,
    encode_targets,
    soundscape_windows,
)
from dawnchorus.data.layouts import TrainingSet, load_training_set
from dawnchorus.data.splits import (
    RepeatedShuffleSampler,
    fold_split,
    make_weighted_sampler,
    oversample,
    stratified_split,
)
from dawnchorus.errors import TrainingError
from dawnchorus.io.files import usable_cores
from dawnchorus.training.windows import ClipWindowMix, WindowItems

# DataLoader workers when train.num_workers is negative ("auto"): the usable cores, at most 8.
MAX_AUTO_WORKERS = 8


class BirdDataModule(L.LightningDataModule):
    """Training and validation data of one run, built once by :meth:`setup`.

    ``data`` is a training-set folder; ``cache_dir`` holds the decoded audio; ``drop_bad`` skips clips
    with problems (listed in ``training_set.problems``) instead of refusing the set. After
    :meth:`setup`: ``training_set``, ``labels``, ``train_set``, ``val_set``, ``soundscapes`` (None
    without labelled soundscapes), ``train_idx`` and ``val_idx`` (rows of ``training_set.clips``).
    ``windows`` (targets in this run's label order) are added to the training items; those without a
    waveform transform get the run's.
    """

    def __init__(
        self,
        data: str | Path,
        config: Config,
        cache_dir: str | Path,
        drop_bad: bool = True,
        windows: WindowItems | None = None,
    ) -> None:
        super().__init__()
        self.data, self.config, self.cache_dir, self.drop_bad = Path(data), config, Path(cache_dir), drop_bad
        self.windows = windows
        self.train_items: Dataset | None = None
        self.training_set: TrainingSet | None = None
        self._read: TrainingSet | None = None
        self.train_set: ClipDataset | None = None
        self.val_set: ClipDataset | None = None
        self.soundscapes: SoundscapeWindows | None = None
        self.train_idx = self.val_idx = np.empty(0, dtype=int)
        self._val_loaders: list[DataLoader] | None = None

    @property
    def labels(self) -> list[str]:
        """The class labels, in the model's output order (after :meth:`read` or :meth:`setup`)."""
        if self._read is None:
            raise TrainingError("BirdDataModule.setup() must run before its labels are known")
        return self._read.labels

    def read(self) -> TrainingSet:
        """Read and validate the training set (once), writing nothing: its labels are known after this."""
        if self._read is None:
            training_set = load_training_set(self.data, on_problem="drop" if self.drop_bad else "raise")
            if len(training_set.labels) < 2:
                raise TrainingError(
                    f"{self.data}: need at least two classes to train, found {len(training_set.labels)}"
                )
            self._read = training_set
        return self._read

    def setup(self, stage: str | None = None) -> None:
        """Read and split the training set and build the data sets (once; later calls do nothing)."""
        if self.training_set is not None:
            return
        training_set = self.read()
        cache = AudioCache(self.cache_dir, self.config.audio.sample_rate)
        self.train_set, self.val_set, self.soundscapes, self.train_idx, self.val_idx = build_datasets(
            training_set, self.config, cache
        )
        self.train_items = self.train_set
        if self.windows is not None:
            settings = self.config.selftrain
            if self.windows.waveform_transform is None:
                self.windows.waveform_transform = self.train_set.waveform_transform
            mixed = ClipWindowMix(self.train_set, self.windows, settings.mix_p, self.config.train.seed)
            self.train_items = ConcatDataset([mixed, self.windows]) if settings.window_items else mixed
        self.training_set = training_set

    def train_dataloader(self) -> DataLoader:
        """Shuffled (or weighted-sampled) training clips; Lightning shards them under DDP."""
        primary = self.training_set.clips["primary_label"].to_numpy()[self.train_idx]
        if self.windows is not None and len(self.train_items) > len(primary):
            primary = np.concatenate([primary, self.windows.primary_labels(self.labels)])
        world_size = self.trainer.world_size if self.trainer is not None else 1
        sampler = train_sampler(primary, self.config, epoch_items(len(primary), self.config, world_size))
        return _loader(self.train_items, self.config, train=True, sampler=sampler, world_size=world_size)

    def val_dataloader(self) -> list[DataLoader]:
        """Validation clips, then labelled soundscape windows, each when the set has some (built once);
        their metric prefixes are :attr:`validation_prefixes`. An empty list: nothing to validate on."""
        if self._val_loaders is None:
            sets = {"val": self.val_set, "val_soundscape": self.soundscapes}
            self._val_loaders = [_loader(sets[prefix], self.config, train=False)
                                 for prefix in self.validation_prefixes]
        return self._val_loaders

    @property
    def validation_prefixes(self) -> tuple[str, ...]:
        """The metric prefix of each validation loader, in order (after :meth:`setup`): ``val`` when a
        clip is held out (none is when every class has a single clip: it stays in training), then
        ``val_soundscape`` when the set has labelled soundscapes. An empty loader is never handed to
        Lightning (it warned "Total length of `DataLoader` across ranks is zero")."""
        held_out = self.val_set is not None and len(self.val_set) > 0
        windows = self.soundscapes is not None and len(self.soundscapes) > 0
        return ("val",) * held_out + ("val_soundscape",) * windows


def build_datasets(
    training_set: TrainingSet, config: Config, cache: AudioCache
) -> tuple[ClipDataset, ClipDataset, SoundscapeWindows | None, np.ndarray, np.ndarray]:
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
        waveform_transform=WaveformAugment(config.augment, config.audio.sample_rate, seed=config.train.seed),
        weights=None if weights is None else weights[train_idx],
        seed=config.train.seed,
        background_source=_background_source(config),
        background_only_p=config.augment.background_only_p,
        **common,
    )
    val_set = ClipDataset(paths[val_idx], targets[val_idx], train=False, **common)
    return train_set, val_set, soundscape_windows(training_set, labels, config, cache), train_idx, val_idx


def epoch_items(items: int, config: Config, world_size: int = 1) -> int:
    """Training items drawn per epoch: all ``items``, or more when that is under
    ``train.min_steps_per_epoch`` optimizer steps for each of the ``world_size`` processes."""
    return max(items, config.train.min_steps_per_epoch * config.train.batch_size * world_size)


def train_sampler(primary: Sequence[str], config: Config, num_samples: int) -> Sampler | None:
    """The sampler drawing ``num_samples`` training items an epoch from the ``len(primary)`` there are.

    The weighted sampler when ``imbalance.sampler: weighted`` asks for it; shuffled rounds of every
    item (:class:`~dawnchorus.data.splits.RepeatedShuffleSampler`) when an epoch needs more items
    than there are (``train.min_steps_per_epoch``); else None: the loader's plain shuffling.
    """
    settings = config.imbalance
    if settings.sampler == "weighted":
        return make_weighted_sampler(primary, settings.sampler_power, num_samples, config.train.seed)
    if num_samples > len(primary):
        return RepeatedShuffleSampler(len(primary), num_samples, config.train.seed)
    return None


def _training_indices(clips: pd.DataFrame, config: Config) -> tuple[np.ndarray, np.ndarray]:
    settings = config.train
    if settings.fold is not None:
        return fold_split(clips, settings.folds, settings.fold, settings.seed)
    return stratified_split(clips, settings.val_fraction, settings.seed)


def _background_source(config: Config) -> BackgroundSource | None:
    """Bird-free negatives come from the background-noise bank, when there is one."""
    if config.augment.noise_dir is None or config.augment.background_only_p == 0:
        return None
    return NoiseBank.cached(config.augment.noise_dir, config.audio.sample_rate).random_segment


def _num_workers(setting: int) -> int:
    return min(MAX_AUTO_WORKERS, usable_cores()) if setting < 0 else setting


def _loader(
    dataset: Dataset, config: Config, train: bool, sampler: Sampler | None = None, world_size: int = 1
) -> DataLoader:
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
