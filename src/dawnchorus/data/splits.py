"""Train/validation splits, cross-validation folds and class-imbalance sampling.

Every function takes the clips table of a :class:`~dawnchorus.data.layouts.TrainingSet` (or its
primary labels) and returns **positional** indices into it (or a sampler over them); nothing here
reads audio or knows a file layout.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import Sampler, WeightedRandomSampler

# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def stratified_split(
    clips: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split stratified on ``primary_label``; sorted positional indices.

    Every class keeps at least one training clip (a single-clip class stays in training); the
    validation set holds about ``val_fraction`` of the clips, spread over classes by their size.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    groups = _positions_by_label(list(clips["primary_label"]))
    quotas = _validation_quotas({label: len(p) for label, p in groups.items()}, val_fraction, rng)
    val_parts = [rng.permutation(positions)[: quotas[label]] for label, positions in groups.items()]
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(clips), dtype=np.int64), val_idx)
    return train_idx, val_idx.astype(np.int64)


def assign_folds(clips: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold id (0..folds-1) per clip, stratified on ``primary_label``; -1 = always training.

    Classes with at least ``folds`` clips are split by :class:`~sklearn.model_selection.StratifiedKFold`.
    Smaller classes put each clip in a different fold (the least filled ones), so whichever fold is
    validation, the class keeps a training clip. A class with a single clip gets -1.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    labels = np.asarray(clips["primary_label"], dtype=object)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    groups = _positions_by_label(list(labels))
    large = np.concatenate([p for p in groups.values() if len(p) >= folds] or [np.zeros(0, int)])
    if len(large):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (_, held_out) in enumerate(splitter.split(large, labels[large].astype(str))):
            fold_of[large[held_out]] = fold
    rng = np.random.default_rng(seed)
    fold_sizes = np.bincount(fold_of[fold_of >= 0], minlength=folds)
    for positions in groups.values():
        if 2 <= len(positions) < folds:
            least_filled = np.lexsort((rng.random(folds), fold_sizes))[: len(positions)]
            fold_of[rng.permutation(positions)] = least_filled
            fold_sizes[least_filled] += 1
    return fold_of


def fold_split(
    clips: pd.DataFrame, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation positional indices with fold ``fold`` of :func:`assign_folds` as validation."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    fold_of = assign_folds(clips, folds, seed)
    return np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)


# ----------------------------------------------------------------------------------------------
# Imbalance
# ----------------------------------------------------------------------------------------------


def oversample(
    indices: np.ndarray, primary_labels: Sequence[str], min_count: int, seed: int
) -> np.ndarray:
    """Repeat clips of rare classes until each class has at least ``min_count`` entries.

    ``indices`` select clips (e.g. the training indices of a split) and ``primary_labels[k]`` is
    the label of ``indices[k]`` (same length). Returns ``indices`` followed by the repeats; each
    class's clips are repeated as evenly as possible (whole rounds, then a random subset).
    """
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(primary_labels, dtype=object)
    if len(labels) != len(indices):
        raise ValueError(f"primary_labels has {len(labels)} entries for {len(indices)} indices; "
                         f"pass the labels of the selected clips, in the same order")
    if min_count <= 0 or len(indices) == 0:
        return indices.copy()
    rng = np.random.default_rng(seed)
    extra = []
    for positions in _positions_by_label(list(labels)).values():
        members = indices[positions]
        missing = min_count - len(members)
        if missing <= 0:
            continue
        rounds, rest = divmod(missing, len(members))
        extra.append(np.tile(members, rounds))
        extra.append(rng.choice(members, size=rest, replace=False))
    return np.concatenate([indices, *extra]) if extra else indices.copy()


def class_balanced_weights(primary_labels: Sequence[str], power: float) -> np.ndarray:
    """Per-clip weights ``(1 / class count) ** power``, scaled to mean 1 (float64).

    ``power`` 0 weights clips uniformly; 1 gives every class the same total weight.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    counts = Counter(primary_labels)
    weights = np.array([(1.0 / counts[label]) ** power for label in primary_labels], dtype=np.float64)
    return weights / weights.mean() if len(weights) else weights


def make_weighted_sampler(
    primary_labels: Sequence[str], power: float, num_samples: int, seed: int
) -> WeightedRandomSampler:
    """A with-replacement sampler drawing clips by :func:`class_balanced_weights` (seeded)."""
    weights = class_balanced_weights(primary_labels, power)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples,
                                 replacement=True, generator=generator)


class RepeatedShuffleSampler(Sampler[int]):
    """``num_samples`` indices of ``range(size)``: shuffled rounds of every index, chained (seeded).

    Each round holds every index once in a fresh random order; the last round is cut at
    ``num_samples``. An epoch of a tiny data set can so make more than one optimizer step while
    every clip is still seen about equally often. Like :func:`make_weighted_sampler` it is seeded,
    so every DDP process draws the same sequence and Lightning's sampler wrapper shards it.
    """

    def __init__(self, size: int, num_samples: int, seed: int) -> None:
        if size < 1 or num_samples < 1:
            raise ValueError(f"size and num_samples must be at least 1, got {size} and {num_samples}")
        self.size, self.num_samples = size, num_samples
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rounds = -(-self.num_samples // self.size)
        order = torch.cat([torch.randperm(self.size, generator=self.generator) for _ in range(rounds)])
        yield from order[: self.num_samples].tolist()


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _positions_by_label(primary_labels: Sequence[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, label in enumerate(primary_labels):
        groups[label].append(position)
    return {label: np.asarray(groups[label], dtype=np.int64) for label in sorted(groups)}


def _validation_quotas(counts: dict[str, int], val_fraction: float,
                       rng: np.random.Generator) -> dict[str, int]:
    """Validation clips per class: proportional to class size, total ``round(n * fraction)``.

    Each class gets ``floor(count * fraction)``; the rest of the total goes one clip at a time to
    the classes with the largest unmet share (random among ties). A class never gives all its clips.
    """
    capacity = {label: count - 1 for label, count in counts.items()}
    share = {label: count * val_fraction for label, count in counts.items()}
    quota = {label: min(math.floor(share[label]), capacity[label]) for label in counts}
    target = min(round(sum(counts.values()) * val_fraction), sum(capacity.values()))
    tiebreak = dict(zip(counts, rng.random(len(counts)), strict=True))
    while sum(quota.values()) < target:
        open_labels = [label for label in counts if quota[label] < capacity[label]]
        chosen = max(open_labels, key=lambda label: (share[label] - quota[label], tiebreak[label]))
        quota[chosen] += 1
    return quota
