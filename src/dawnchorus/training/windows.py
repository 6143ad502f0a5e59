"""Window items: windows of long recordings with (soft) targets as training items.

:class:`WindowItems` serves windows ``(file, start_s)`` of soundscapes with their soft targets (from
pseudo-labels, or from reviewed detections), decoding only the window's seconds from the long file
each time (libsndfile seeks), so memory stays bounded however many hours the table covers. An optional
per-label ``mask`` marks the labels somebody judged for a window (1) and those nobody did (0): the
training loss leaves unjudged labels out (:func:`dawnchorus.training.module.clip_loss`).
:class:`ClipWindowMix` adds a random window to a share of the labelled clips, with the union (max)
of both targets (BirdCLEF 2025 1st place). Every item carries a ``mask``, so clips and windows
batch together.

Building the table (pseudo-labels: :mod:`dawnchorus.training.pseudo`) and wiring the items into a
run (:mod:`dawnchorus.training.datamodule`) are not this module's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dawnchorus.data.datasets import ClipDataset, WaveformTransform
from dawnchorus.io import audio


class WindowItems(Dataset):
    """Windows of long recordings and their soft targets, decoded lazily, as training items.

    ``paths[i]`` and ``starts_s[i]`` locate window ``i`` (``clip_samples`` long at ``sample_rate``);
    ``targets`` is ``(n, labels)`` in [0, 1]; ``mask`` (same shape, default all ones) is 1 where a label
    was judged; ``weights`` scales each item's loss. Training items go through ``waveform_transform``.
    Items: ``{"audio", "target", "weight", "index", "mask"}`` like :class:`ClipDataset`'s plus the mask.
    """

    def __init__(
        self,
        paths: Sequence[str],
        starts_s: Sequence[float],
        targets: np.ndarray,
        sample_rate: int,
        clip_samples: int,
        mask: np.ndarray | None = None,
        weights: np.ndarray | float = 1.0,
        waveform_transform: WaveformTransform | None = None,
        train: bool = True,
        seed: int = 0,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(paths) or len(starts_s) != len(paths):
            raise ValueError(
                f"{len(paths)} paths, {len(starts_s)} starts and targets of shape {targets.shape} differ"
            )
        if mask is not None and np.shape(mask) != targets.shape:
            raise ValueError(f"mask has shape {np.shape(mask)}, targets {targets.shape}")
        if sample_rate <= 0 or clip_samples <= 0:
            raise ValueError("sample_rate and clip_samples must be positive")
        # Paths as a categorical: one string per recording, however many windows it has.
        self.paths = pd.Categorical([str(p) for p in paths])
        self.starts_s = np.asarray(starts_s, dtype=np.float64)
        self.targets = targets
        self.mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        self.weights = np.broadcast_to(np.asarray(weights, dtype=np.float32), (len(targets),))
        self.sample_rate, self.clip_samples = int(sample_rate), int(clip_samples)
        self.waveform_transform, self.train, self.seed = waveform_transform, train, seed
        self._rng: np.random.Generator | None = None
        self._rng_torch_seed: int | None = None

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        labels: Sequence[str],
        sample_rate: int,
        clip_samples: int,
        **options: Any,
    ) -> WindowItems:
        """Items from a table ``file, start_s, ...`` with one target column per label; a label the table
        has no column for is masked out (nobody judged it) unless ``options`` give a mask."""
        present = [label for label in labels if label in table.columns]
        targets = np.zeros((len(table), len(labels)), dtype=np.float32)
        for j, label in enumerate(labels):
            if label in table.columns:
                targets[:, j] = table[label].to_numpy(dtype=np.float32)
        if len(present) < len(labels) and options.get("mask") is None:
            options["mask"] = np.broadcast_to(
                np.array([label in table.columns for label in labels], dtype=np.float32), targets.shape
            )
        return cls(
            table["file"].astype(str).tolist(), table["start_s"].to_numpy(), targets,
            sample_rate, clip_samples, **options,
        )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator (re-created in each DataLoader worker, as ClipDataset's)."""
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng_torch_seed != torch_seed:
            self._rng = np.random.default_rng([self.seed, torch_seed, 1])
            self._rng_torch_seed = torch_seed
        return self._rng

    def window(self, index: int) -> np.ndarray:
        """The ``clip_samples`` samples of window ``index``, decoded from its recording (zero-padded at
        a recording's end), untransformed."""
        samples = audio.load(
            self.paths[index], sample_rate=self.sample_rate, offset_s=float(self.starts_s[index]),
            duration_s=self.clip_samples / self.sample_rate,
        )
        return np.array(audio.crop_or_pad(samples, self.clip_samples, mode="start"), dtype=np.float32)

    def item_mask(self, index: int) -> np.ndarray:
        """Window ``index``'s label mask (all ones without a mask)."""
        if self.mask is None:
            return np.ones(self.targets.shape[1], dtype=np.float32)
        return self.mask[index].copy()

    def __getitem__(self, index: int) -> dict[str, Any]:
        samples = self.window(index)
        if self.train and self.waveform_transform is not None:
            samples = self.waveform_transform(samples, self.sample_rate)
            samples = audio.crop_or_pad(np.asarray(samples, dtype=np.float32), self.clip_samples, "start")
        return {
            "audio": torch.from_numpy(np.array(samples, dtype=np.float32)),
            "target": torch.from_numpy(self.targets[index].copy()),
            "weight": torch.tensor(float(self.weights[index]), dtype=torch.float32),
            "index": int(index),
            "mask": torch.from_numpy(self.item_mask(index)),
        }

    def primary_labels(self, labels: Sequence[str]) -> np.ndarray:
        """Each window's strongest label (for a weighted sampler); ``""`` where every target is 0."""
        if not len(self.targets):
            return np.empty(0, dtype=object)
        strongest = np.asarray(labels, dtype=object)[self.targets.argmax(axis=1)]
        strongest[self.targets.max(axis=1) <= 0] = ""
        return strongest


class ClipWindowMix(Dataset):
    """Labelled clips, a share ``p`` of them with a random window of ``windows`` added (its audio summed
    in, targets the union: the larger of the two per label). Each item gets a ``mask``: the clip's
    labels are judged (all ones); without windows or at ``p = 0`` the clips are unchanged."""

    def __init__(self, clips: ClipDataset, windows: WindowItems | None, p: float, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.clips, self.windows, self.p, self.seed = clips, windows, p, seed
        self._rng: np.random.Generator | None = None
        self._rng_torch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator (re-created in each DataLoader worker)."""
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng_torch_seed != torch_seed:
            self._rng = np.random.default_rng([self.seed, torch_seed, 2])
            self._rng_torch_seed = torch_seed
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.clips[index]
        item["mask"] = torch.ones_like(item["target"])
        if self.windows is not None and len(self.windows) and self.p and self.rng.random() < self.p:
            other = int(self.rng.integers(len(self.windows)))
            item["audio"] = item["audio"] + torch.from_numpy(self.windows.window(other))
            judged = self.windows.item_mask(other) > 0
            window_target = torch.from_numpy(np.where(judged, self.windows.targets[other], 0.0))
            item["target"] = torch.maximum(item["target"], window_target.float())
        return item
