"""Batch augmentations in torch, run on the batch device during training.

:func:`mixup`, :func:`cutmix_time` and :func:`spec_augment`, combined by :class:`BatchAugment`
(the identity in eval mode). Each takes an optional ``torch.Generator`` (default: torch's global
generator). Waveform augmentations are :mod:`dawnchorus.augment.waveform`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dawnchorus.config import AugmentSettings


class BatchAugment(nn.Module):
    """Mixup, time CutMix and SpecAugment on a training batch, each with its probability.

    Mixup and CutMix are decided once per batch (``mixup_p``, ``cutmix_p``), SpecAugment once per
    item (``specaugment_p``). In eval mode (``module.eval()``) the inputs are returned unchanged.
    """

    def __init__(self, settings: AugmentSettings, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.generator = generator

    def forward(
        self, spec: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the augmented ``(spec, targets)``; unchanged when not training."""
        if not self.training:
            return spec, targets
        s, generator = self.settings, self.generator
        if s.mixup_p > 0 and float(_uniform((1,), generator)) < s.mixup_p:
            spec, targets = mixup(spec, targets, s.mixup_alpha, generator)
        if s.cutmix_p > 0 and float(_uniform((1,), generator)) < s.cutmix_p:
            spec, targets = cutmix_time(spec, targets, generator)
        if s.specaugment_p > 0:
            chosen = _uniform((spec.shape[0],), generator) < s.specaugment_p
            spec = spec_augment(spec, s.time_masks, s.time_mask_fraction, s.freq_masks,
                                s.freq_mask_fraction, generator, apply_to=chosen)
        return spec, targets

    def extra_repr(self) -> str:
        s = self.settings
        return f"mixup_p={s.mixup_p}, cutmix_p={s.cutmix_p}, specaugment_p={s.specaugment_p}"


def mix(
    x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * x + (1 - lam) * x[perm]`` with the union of targets ``max(t, t[perm])``: the mixing
    step of :func:`mixup` with ``lam`` and the partner permutation given (a preview fixes both)."""
    perm = perm.to(x.device)
    mixed = lam * x + (1.0 - lam) * x[perm]
    return mixed, torch.maximum(targets, targets[perm.to(targets.device)])


def mixup(
    x: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each item with a random partner from the same batch (mixup, Zhang et al. 2018).

    One ``lam ~ Beta(alpha, alpha)`` per batch and a random permutation give
    ``x = lam * x + (1 - lam) * x[perm]``. Calls overlap in field recordings, so multi-label
    targets become the union ``max(t, t[perm])`` rather than a weighted average.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    _check_batch(x, targets, "mixup", 1)
    perm = _permutation(x.shape[0], generator)
    return mix(x, targets, _beta(alpha, generator), perm)


def cutmix_time(
    spec: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator | None = None,
    min_fraction: float = 0.25,
    max_fraction: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random time span of a partner's spectrogram into each item (time-axis CutMix).

    ``spec`` is ``(batch, ..., time)``. Each item gets one span of ``min_fraction..max_fraction``
    of its frames, at a random position, copied from the same position of a random partner, as a
    second bird calling in the middle of a recording would appear. Targets become the union.
    """
    if not 0.0 <= min_fraction <= max_fraction <= 1.0:
        raise ValueError(
            f"cutmix fractions must satisfy 0 <= min_fraction <= max_fraction <= 1, "
            f"got {min_fraction}, {max_fraction}"
        )
    _check_batch(spec, targets, "cutmix_time", 2)
    batch, frames = spec.shape[0], spec.shape[-1]
    perm = _permutation(batch, generator).to(spec.device)
    max_width = int(round(max_fraction * frames))
    min_width = max(1, min(int(round(min_fraction * frames)), max_width))
    mask = _span_mask(batch, frames, 1, max_width, generator, spec.device, min_width)
    mask = mask.view(batch, *([1] * (spec.dim() - 2)), frames)
    pasted = torch.where(mask, spec[perm], spec)
    received = mask.reshape(batch, -1).any(dim=1).to(targets.device)
    union = torch.maximum(targets, targets[perm.to(targets.device)])
    new_targets = torch.where(received.view(batch, *([1] * (targets.dim() - 1))), union, targets)
    return pasted, new_targets


def spec_augment(
    spec: torch.Tensor,
    time_masks: int,
    time_mask_fraction: float,
    freq_masks: int,
    freq_mask_fraction: float,
    generator: torch.Generator | None = None,
    apply_to: torch.Tensor | None = None,
) -> torch.Tensor:
    """SpecAugment masks (Park et al. 2019), drawn independently for every item of the batch.

    ``spec`` is ``(batch, [channels,] freq, time)``. Each item gets ``time_masks`` time spans of
    ``0..round(time_mask_fraction * frames)`` frames and ``freq_masks`` bands of
    ``0..round(freq_mask_fraction * bins)`` bins (widths uniform, inclusive; masks may overlap),
    filled with that item's mean so the masks add no artificial edges to normalised inputs.
    ``apply_to`` (bool, ``(batch,)``) limits the masks to the chosen items. Vectorised, no loop.
    """
    if spec.dim() < 3:
        raise ValueError(f"spec_augment expects (batch, [channels,] freq, time), got {tuple(spec.shape)}")
    for name, value in (("time_mask_fraction", time_mask_fraction),
                        ("freq_mask_fraction", freq_mask_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"spec_augment {name} must be in [0, 1], got {value}")
    if time_masks < 0 or freq_masks < 0:
        raise ValueError(f"spec_augment mask counts must be >= 0, got {time_masks}, {freq_masks}")
    batch, bins, frames = spec.shape[0], spec.shape[-2], spec.shape[-1]
    middle = [1] * (spec.dim() - 3)
    time_mask = _span_mask(batch, frames, time_masks, int(round(time_mask_fraction * frames)),
                           generator, spec.device).view(batch, *middle, 1, frames)
    freq_mask = _span_mask(batch, bins, freq_masks, int(round(freq_mask_fraction * bins)),
                           generator, spec.device).view(batch, *middle, bins, 1)
    mask = time_mask | freq_mask
    if apply_to is not None:
        mask = mask & apply_to.to(spec.device).view(batch, *middle, 1, 1)
    means = spec.mean(dim=tuple(range(1, spec.dim())), keepdim=True)
    return torch.where(mask, means, spec)


def _uniform(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) draws on the generator's device (CPU for the global generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, device=device)


def _permutation(size: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(size, generator=generator, device=device)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, alpha) draw, seeded from ``generator`` (torch has no seeded Beta sampler)."""
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _check_batch(x: torch.Tensor, targets: torch.Tensor, name: str, min_dims: int) -> None:
    if x.dim() < min_dims:
        raise ValueError(f"{name}: expected a batch with at least {min_dims} dims, got {tuple(x.shape)}")
    if targets.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: batch has {x.shape[0]} items but targets has {targets.shape[0]} rows"
        )


def _span_mask(
    batch: int, length: int, count: int, max_width: int, generator: torch.Generator | None,
    device: torch.device, min_width: int = 0,
) -> torch.Tensor:
    """(batch, length) bool: per row, the union of ``count`` random spans of width
    ``min_width..max_width`` (uniform, inclusive) at uniform random starts."""
    if count == 0 or max_width == 0:
        return torch.zeros(batch, length, dtype=torch.bool, device=device)
    widths = min_width + torch.floor(_uniform((batch, count), generator) * (max_width - min_width + 1))
    starts = torch.floor(_uniform((batch, count), generator) * (length - widths + 1))
    widths, starts = widths.to(device), starts.to(device)
    position = torch.arange(length, device=device)
    inside = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
    return inside.any(dim=1)
