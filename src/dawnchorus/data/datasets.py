"""Serving audio to torch: target encoding, the decoded-audio cache and the data sets.

:func:`encode_targets` turns a clips table into multi-hot targets; :class:`AudioCache` keeps decoded,
resampled audio on disk; :class:`ClipDataset` serves fixed-length (augmented) training clips and
:class:`SoundscapeWindows` fixed windows of labelled soundscapes (:func:`soundscape_windows` builds
them from a training set's ``test_soundscapes``). This module does not read a
training-set layout (:mod:`dawnchorus.data.layouts`), split or balance (:mod:`dawnchorus.data.splits`),
or define augmentations (it takes a ``waveform_transform`` callable).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dawnchorus.config import Config
from dawnchorus.data.layouts import TrainingSet
from dawnchorus.io import audio
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.io.files import atomic_write

# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


def encode_targets(
    clips: pd.DataFrame,
    labels: Sequence[str],
    secondary_weight: float = 0.5,
) -> np.ndarray:
    """Multi-hot targets ``(n_clips, n_labels)`` float32 in the order of ``labels``.

    The primary label gets 1.0, each secondary label ``secondary_weight`` (the larger value wins
    when a label is both). Secondary labels outside ``labels`` are ignored; a primary label outside
    them is an error. Label smoothing is not applied here: the training loss applies it
    (:meth:`dawnchorus.training.module.BirdModule.loss`), so validation targets stay hard.
    """
    if not 0.0 <= secondary_weight <= 1.0:
        raise ValueError(f"secondary_weight must be in [0, 1], got {secondary_weight}")
    column_of = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(clips["primary_label"]) - column_of.keys())
    if unknown:
        raise ValueError(f"primary label(s) not in the label list: {', '.join(map(str, unknown))}")
    secondaries = clips["secondary_labels"] if "secondary_labels" in clips else [[]] * len(clips)
    targets = np.zeros((len(clips), len(labels)), dtype=np.float32)
    for row, (primary, secondary) in enumerate(zip(clips["primary_label"], secondaries, strict=True)):
        if isinstance(secondary, str):
            raise ValueError(f"row {row}: secondary_labels must be a list of labels, not the string "
                             f"{secondary!r}")
        for label in secondary:
            if label in column_of:
                targets[row, column_of[label]] = max(targets[row, column_of[label]], secondary_weight)
        targets[row, column_of[primary]] = 1.0
    return targets.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Serving clips
# ----------------------------------------------------------------------------------------------


class AudioCache:
    """Decoded, resampled mono audio stored as ``.npy`` so later epochs do not decode again.

    The key hashes the absolute path, file size, modification time and sample rate, so an edited
    file is decoded afresh. Files are written to a unique temporary name and renamed into place,
    so several DataLoader workers may fill the same key at once; reads are memory-mapped
    (read-only) and shared between processes through the page cache.
    """

    def __init__(self, cache_dir: str | Path, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.cache_dir = Path(cache_dir)
        self.sample_rate = int(sample_rate)

    def path_for(self, path: str | Path) -> Path:
        """The cache file that holds (or will hold) ``path`` decoded at this sample rate."""
        absolute = os.path.abspath(path)
        try:
            stat = os.stat(absolute)
        except OSError:
            raise audio.AudioFileNotFoundError(absolute, "file not found") from None
        key = f"{absolute}|{stat.st_size}|{stat.st_mtime_ns}|{self.sample_rate}"
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"

    def get(self, path: str | Path) -> np.ndarray:
        """Mono float32 samples of ``path``: memory-mapped from the cache, or decoded and stored."""
        cached = self.path_for(path)
        if cached.is_file():
            try:
                return np.load(cached, mmap_mode="r")
            except (OSError, ValueError):
                pass  # a damaged cache file (e.g. disk full) is decoded and written again
        samples = audio.load(path, sample_rate=self.sample_rate)
        self._store(cached, samples)
        return samples

    def _store(self, cached: Path, samples: np.ndarray) -> None:
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.save(handle, np.ascontiguousarray(samples, dtype=np.float32))

        cached.parent.mkdir(parents=True, exist_ok=True)  # on first use: a run that fails early leaves none
        atomic_write(cached, write)


WaveformTransform = Callable[[np.ndarray, int], np.ndarray]
# (length, rng) -> `length` samples of bird-free background, e.g. NoiseBank.random_segment.
BackgroundSource = Callable[[int, np.random.Generator], np.ndarray]


class ClipDataset(Dataset):
    """Fixed-length clips and their targets for a torch DataLoader.

    Training items are randomly cropped (or padded at a random offset) and passed through
    ``waveform_transform(samples, sample_rate)``; validation items take the first ``clip_samples``
    (calls are usually at the start of a focal recording), zero-padded, untransformed. Each item is
    ``{"audio": (clip_samples,) float32, "target": (C,) float32, "weight": () float32, "index": int}``.
    Randomness comes from a numpy Generator seeded by ``seed`` and ``torch.initial_seed()``, created
    lazily in each worker, so workers and epochs draw differently. With a ``background_source``, a
    share ``background_only_p`` of training items is replaced by bird-free background with an all-zero
    target (then transformed like any clip): the model must learn that noise alone is no bird.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        sample_rate: int,
        clip_samples: int,
        train: bool,
        cache: AudioCache | None = None,
        waveform_transform: WaveformTransform | None = None,
        weights: np.ndarray | None = None,
        seed: int = 0,
        background_source: BackgroundSource | None = None,
        background_only_p: float = 0.0,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(paths):
            raise ValueError(f"targets must have shape ({len(paths)}, n_labels), got {targets.shape}")
        if weights is not None and len(weights) != len(paths):
            raise ValueError(f"weights has {len(weights)} entries for {len(paths)} clips")
        if sample_rate <= 0 or clip_samples <= 0:
            raise ValueError("sample_rate and clip_samples must be positive")
        if not 0.0 <= background_only_p < 1.0:
            raise ValueError(f"background_only_p must be in [0, 1), got {background_only_p}")
        self.paths = [str(p) for p in paths]
        self.targets = targets
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(clip_samples)
        self.train = train
        self.cache = cache
        self.waveform_transform = waveform_transform
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.seed = seed
        self.background_source = background_source
        self.background_only_p = background_only_p if background_source is not None else 0.0
        self._rng: np.random.Generator | None = None
        self._rng_torch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator; re-created when the worker's torch seed changes."""
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng_torch_seed != torch_seed:
            self._rng = np.random.default_rng([self.seed, torch_seed])
            self._rng_torch_seed = torch_seed
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        target = self.targets[index].copy()
        if self.train and self.background_only_p and self.rng.random() < self.background_only_p:
            samples = self._background_only()
            target[:] = 0.0
        else:
            samples = self._clip(self.paths[index])
        if self.train and self.waveform_transform is not None:
            samples = self.waveform_transform(samples, self.sample_rate)
            # Length-changing transforms (time stretch) are brought back to the clip length.
            samples = audio.crop_or_pad(np.asarray(samples, dtype=np.float32), self.clip_samples,
                                        mode="start")
        weight = 1.0 if self.weights is None else float(self.weights[index])
        return {
            "audio": torch.from_numpy(np.array(samples, dtype=np.float32)),
            "target": torch.from_numpy(target),
            "weight": torch.tensor(weight, dtype=torch.float32),
            "index": int(index),
        }

    def _background_only(self) -> np.ndarray:
        """A bird-free stretch of background (a negative example: every target 0)."""
        assert self.background_source is not None
        samples = np.asarray(self.background_source(self.clip_samples, self.rng), dtype=np.float32)
        if samples.shape != (self.clip_samples,):
            raise ValueError(
                f"background source returned shape {samples.shape}, expected ({self.clip_samples},)"
            )
        return samples.copy()

    def _clip(self, path: str) -> np.ndarray:
        """``clip_samples`` samples of ``path``: a random crop when training, else the start."""
        clip_s = self.clip_samples / self.sample_rate
        if self.cache is not None:
            samples = self.cache.get(path)
        elif self.train:
            samples = self._random_excerpt(path, clip_s)
        else:
            samples = audio.load(path, sample_rate=self.sample_rate, duration_s=clip_s)
        mode = "random" if self.train else "start"
        # Copy: cached arrays are read-only memory maps and transforms may work in place.
        return np.array(audio.crop_or_pad(samples, self.clip_samples, mode=mode, rng=self.rng),
                        dtype=np.float32)

    def _random_excerpt(self, path: str, clip_s: float) -> np.ndarray:
        """Decode only a random ``clip_s`` stretch of a long file (the whole file if shorter)."""
        header = audio.info(path)
        spare_s = header.duration_s - clip_s
        if spare_s <= 0:
            return audio.load(path, sample_rate=self.sample_rate)
        offset_s = float(self.rng.uniform(0.0, spare_s))
        return audio.load(path, sample_rate=self.sample_rate, offset_s=offset_s, duration_s=clip_s)


class SoundscapeWindows(Dataset):
    """Fixed windows of labelled soundscapes (decoded once through the cache)."""

    def __init__(
        self,
        paths: Sequence[str],
        starts: Sequence[int],
        targets: np.ndarray,
        clip_samples: int,
        cache: AudioCache,
    ) -> None:
        self.paths, self.starts, self.targets = list(paths), list(starts), targets
        self.clip_samples, self.cache = clip_samples, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        samples = self.cache.get(self.paths[index])
        start = self.starts[index]
        window = audio.crop_or_pad(
            np.asarray(samples[start : start + self.clip_samples]), self.clip_samples, "start"
        )
        return {
            "audio": torch.from_numpy(window.copy()),
            "target": torch.from_numpy(self.targets[index]),
            "weight": torch.tensor(1.0),
            "index": index,
        }


def soundscape_windows(
    training_set: TrainingSet, labels: list[str], config: Config, cache: AudioCache
) -> SoundscapeWindows | None:
    """Labelled soundscape windows of the training set's ``test_soundscapes``, if it has them."""
    if training_set.soundscape_dir is None or training_set.soundscape_labels is None:
        return None
    truth = read_birdclef_labels(training_set.soundscape_labels)
    paths, starts, rows = [], [], []
    by_stem = {p.stem: p for p in Path(training_set.soundscape_dir).iterdir() if p.is_file()}
    clip_s = config.audio.clip_s
    for (audio_id, end_s), row in truth.iterrows():
        path = by_stem.get(str(audio_id))
        if path is None:
            continue
        paths.append(str(path))
        starts.append(int(round((float(end_s) - clip_s) * config.audio.sample_rate)))
        rows.append(row.reindex(labels, fill_value=0).to_numpy(dtype=np.float32))
    if not paths:
        return None
    return SoundscapeWindows(paths, starts, np.stack(rows), config.audio.clip_samples, cache)
