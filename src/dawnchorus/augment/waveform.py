"""Augmentations against domain shift: waveform transforms, a background-noise bank, batch mixing.

Focal training clips are clean; field recordings are not. Two stages close that gap:

- **Waveform** (numpy, inside DataLoader workers): :class:`WaveformAugment` is an ordered, named
  pipeline of audiomentations-style transforms (time shift, time stretch, pitch shift, background
  noise from a :class:`NoiseBank`, coloured noise, gain). Each step has its own probability.
- **Batch** (torch, on the batch device during training): :func:`mixup`, :func:`cutmix_time` and
  :func:`spec_augment`, combined by :class:`BatchAugment`, which is the identity in eval mode.

:func:`preview_augmentations` draws a clip under each augmentation alone, as one PNG.

Randomness. audiomentations draws from the global ``random`` and ``numpy.random`` state.
:class:`WaveformAugment` owns a ``numpy.random.Generator`` instead: every call draws one seed from
it, seeds the global state with it for the duration of the call, then restores the previous global
state. A seeded ``WaveformAugment`` is therefore reproducible and leaves other code's randomness
alone. Inside a DataLoader worker the generator is re-derived once from the worker's torch seed, so
workers never repeat each other's augmentations (and a ``seed_everything`` run stays reproducible).
The batch functions take an optional ``torch.Generator`` (default: torch's global generator).
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from audiomentations import AddColorNoise, Gain, PitchShift, Shift, TimeStretch
from audiomentations.core.transforms_interface import BaseWaveformTransform
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import get_worker_info

from dawnchorus.config import AugmentSettings, FrontendSettings
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, crop_or_pad, find_audio_files, load

# Length of the colouring filter. audiomentations' default (128) leaves a ~3 dB ripple across mel
# bands (visible stripes in the spectrogram); 2048 taps measured 0.7 dB, and run faster here.
COLORED_NOISE_FILTER_TAPS = 2048
# Fade applied where a shifted clip meets the inserted silence, against clicks (seconds).
SHIFT_FADE_S = 0.005
# A noise recording quieter than this RMS carries no usable noise.
SILENT_RMS = 1e-9

FloatArray = NDArray[np.float32]


# --------------------------------------------------------------------------------------------------
# Noise bank
# --------------------------------------------------------------------------------------------------


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


class NoiseBank:
    """Every audio file of a folder (recursive), decoded once to mono float32 at ``sample_rate``.

    Unreadable or silent files are skipped with a warning that names them. A folder with no usable
    audio raises ``ValueError`` naming the folder. Banks are meant to be small (minutes of audio):
    all of it is held in memory so drawing a segment costs a slice, not a decode.
    """

    def __init__(self, folder: str | Path, sample_rate: int) -> None:
        self.folder = Path(folder)
        self.sample_rate = int(sample_rate)
        if sample_rate <= 0:
            raise ValueError(f"noise bank sample_rate must be positive, got {sample_rate}")
        if not self.folder.is_dir():
            raise ValueError(f"noise folder {self.folder} does not exist or is not a folder")
        files = find_audio_files(self.folder)
        if not files:
            raise ValueError(
                f"noise folder {self.folder} contains no audio files "
                f"(looked for {', '.join(AUDIO_EXTENSIONS)} recursively)"
            )
        self.paths: list[Path] = []
        self.clips: list[FloatArray] = []
        for path in files:
            clip = self._load_usable(path)
            if clip is not None:
                self.paths.append(path)
                self.clips.append(clip)
        if not self.clips:
            raise ValueError(
                f"noise folder {self.folder}: none of its {len(files)} audio files could be used "
                "(see the warnings above for each file)"
            )

    def _load_usable(self, path: Path) -> FloatArray | None:
        try:
            clip = load(path, self.sample_rate)
        except AudioError as exc:
            warnings.warn(f"noise bank: skipping {exc}", stacklevel=3)
            return None
        if _rms(clip) < SILENT_RMS:
            warnings.warn(f"noise bank: skipping {path}: silent (no noise to mix in)", stacklevel=3)
            return None
        return clip

    @classmethod
    def cached(cls, folder: str | Path, sample_rate: int) -> NoiseBank:
        """The bank for ``folder`` at ``sample_rate``, loaded once per process.

        The cache key includes every file's size and modification time, so editing the folder
        loads it afresh. Forked DataLoader workers inherit the parent's already-loaded bank.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise ValueError(f"noise folder {folder} does not exist or is not a folder")
        signature = tuple(
            (str(path), path.stat().st_size, path.stat().st_mtime_ns)
            for path in find_audio_files(folder)
        )
        return _cached_bank(str(folder), int(sample_rate), signature)

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def duration_s(self) -> float:
        """Total seconds of noise held."""
        return sum(len(clip) for clip in self.clips) / self.sample_rate

    def max_offset(self, index: int, length: int) -> int:
        """Largest start sample for a ``length``-sample segment of clip ``index``.

        A clip at least ``length`` long must fit whole; a shorter one is looped, so any start works.
        """
        size = len(self.clips[index])
        return size - length if size >= length else size - 1

    def segment(self, index: int, offset: int, length: int) -> FloatArray:
        """``length`` samples of clip ``index`` from ``offset``, looping a clip that is too short."""
        clip = self.clips[index]
        if offset + length <= len(clip):
            return clip[offset : offset + length]
        return np.take(clip, np.arange(offset, offset + length) % len(clip))

    def random_segment(self, length: int, rng: np.random.Generator | None = None) -> FloatArray:
        """A ``length``-sample segment of a uniformly chosen clip at a uniform random offset."""
        if length <= 0:
            raise ValueError(f"segment length must be positive, got {length}")
        rng = rng if rng is not None else np.random.default_rng()
        index = int(rng.integers(len(self.clips)))
        offset = int(rng.integers(self.max_offset(index, length) + 1))
        return self.segment(index, offset, length)

    def __repr__(self) -> str:
        return (
            f"NoiseBank({str(self.folder)!r}, sample_rate={self.sample_rate}, "
            f"files={len(self)}, duration_s={self.duration_s:.1f})"
        )


@functools.lru_cache(maxsize=4)
def _cached_bank(folder: str, sample_rate: int, signature: tuple) -> NoiseBank:
    del signature  # part of the cache key only
    return NoiseBank(folder, sample_rate)


# --------------------------------------------------------------------------------------------------
# Waveform transforms
# --------------------------------------------------------------------------------------------------


class BackgroundNoise(BaseWaveformTransform):
    """Mix in a random segment of real background recordings at a random signal-to-noise ratio.

    Models the field: wind, rain, streams, insects under the bird. The segment comes from an
    in-memory :class:`NoiseBank` (looped when the recording is shorter than the input), is scaled
    so that ``20 log10(rms(signal) / rms(noise))`` equals an SNR drawn uniformly in dB from
    ``[min_snr_db, max_snr_db]``, and is added. A silent input gets no noise (the SNR is relative),
    as in audiomentations' ``AddBackgroundNoise``, which this replaces: that transform decodes and
    resamples a file on every call (no cache since audiomentations 0.43).
    """

    supports_multichannel = False

    def __init__(
        self, noise_bank: NoiseBank, min_snr_db: float = 3.0, max_snr_db: float = 30.0,
        p: float = 0.5,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        super().__init__(p)
        if not isinstance(noise_bank, NoiseBank):
            raise ValueError(f"noise_bank must be a NoiseBank, got {type(noise_bank).__name__}")
        if min_snr_db > max_snr_db:
            raise ValueError(f"min_snr_db ({min_snr_db}) must not exceed max_snr_db ({max_snr_db})")
        self.noise_bank = noise_bank
        self.min_snr_db = float(min_snr_db)
        self.max_snr_db = float(max_snr_db)

    def randomize_parameters(self, samples: FloatArray, sample_rate: int) -> None:
        super().randomize_parameters(samples, sample_rate)
        if self.parameters["should_apply"]:
            index = random.randrange(len(self.noise_bank))
            self.parameters["snr_db"] = random.uniform(self.min_snr_db, self.max_snr_db)
            self.parameters["noise_index"] = index
            self.parameters["noise_file"] = str(self.noise_bank.paths[index])
            self.parameters["noise_offset"] = random.randint(
                0, self.noise_bank.max_offset(index, len(samples))
            )

    def apply(self, samples: FloatArray, sample_rate: int) -> FloatArray:
        if sample_rate != self.noise_bank.sample_rate:
            raise ValueError(
                f"BackgroundNoise: input is at {sample_rate} Hz but the noise bank "
                f"{self.noise_bank.folder} was loaded at {self.noise_bank.sample_rate} Hz"
            )
        noise = self.noise_bank.segment(
            self.parameters["noise_index"], self.parameters["noise_offset"], len(samples)
        )
        noise_rms = _rms(noise)
        if noise_rms < SILENT_RMS:  # a silent stretch inside a noise file
            return samples
        target_rms = _rms(samples) / 10.0 ** (self.parameters["snr_db"] / 20.0)
        return (samples + noise * np.float32(target_rms / noise_rms)).astype(np.float32)


@contextmanager
def _global_random_seeded(seed: int) -> Iterator[None]:
    """Seed ``random`` and ``numpy.random`` for a block, then restore their previous state."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _forced(settings: AugmentSettings) -> AugmentSettings:
    """The same settings with every waveform step's probability set to 1 (for previews)."""
    return settings.model_copy(update={
        "noise_p": 1.0, "colored_noise_p": 1.0, "gain_p": 1.0, "shift_p": 1.0,
        "pitch_shift_p": 1.0, "time_stretch_p": 1.0,
    })


def build_waveform_steps(
    settings: AugmentSettings, noise_bank: NoiseBank | None = None
) -> list[tuple[str, BaseWaveformTransform]]:
    """The ordered, named waveform steps the settings describe.

    Order: shift, time_stretch, pitch_shift (reshape the call), then background_noise and
    colored_noise (the field around it; noise also fills the silence a shift leaves), then gain
    (recording level). ``background_noise`` is present only when ``noise_bank`` is given.
    """
    steps: list[tuple[str, BaseWaveformTransform]] = [
        ("shift", Shift(
            min_shift=-settings.shift_fraction, max_shift=settings.shift_fraction,
            shift_unit="fraction", rollover=False, fade_duration=SHIFT_FADE_S, p=settings.shift_p,
        )),
        ("time_stretch", TimeStretch(
            min_rate=settings.time_stretch_rate[0], max_rate=settings.time_stretch_rate[1],
            leave_length_unchanged=True, p=settings.time_stretch_p,
        )),
        ("pitch_shift", PitchShift(
            min_semitones=settings.pitch_semitones[0], max_semitones=settings.pitch_semitones[1],
            p=settings.pitch_shift_p,
        )),
    ]
    if noise_bank is not None:
        steps.append(("background_noise", BackgroundNoise(
            noise_bank, min_snr_db=settings.noise_snr_db[0], max_snr_db=settings.noise_snr_db[1],
            p=settings.noise_p,
        )))
    steps += [
        ("colored_noise", AddColorNoise(
            min_snr_db=settings.colored_noise_snr_db[0],
            max_snr_db=settings.colored_noise_snr_db[1],
            min_f_decay=settings.colored_noise_decay_db_per_octave[0],
            max_f_decay=settings.colored_noise_decay_db_per_octave[1],
            n_fft=COLORED_NOISE_FILTER_TAPS,
            p=settings.colored_noise_p,
        )),
        ("gain", Gain(min_gain_db=settings.gain_db[0], max_gain_db=settings.gain_db[1],
                      p=settings.gain_p)),
    ]
    return steps


class WaveformAugment:
    """The waveform augmentation pipeline: ``augment(samples, sample_rate) -> samples``.

    Built from :class:`~dawnchorus.config.AugmentSettings`; ``steps`` is the ordered list of
    ``(name, transform)`` pairs (see :func:`build_waveform_steps`), each applied with its own
    probability. The noise bank (``settings.noise_dir``) is loaded once per process, resampled to
    ``sample_rate``; pass ``noise_bank`` to use one already loaded instead. Output is always
    float32, finite, and as long as the input.

    ``seed`` (an int or a ``numpy.random.Generator``) makes the draws reproducible; ``None`` draws
    fresh entropy. See the module docstring for how DataLoader workers get distinct streams.
    """

    def __init__(
        self,
        settings: AugmentSettings,
        sample_rate: int,
        seed: int | np.random.Generator | None = None,
        noise_bank: NoiseBank | None = None,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.settings = settings
        self.sample_rate = int(sample_rate)
        if noise_bank is None and settings.noise_dir is not None:
            noise_bank = NoiseBank.cached(settings.noise_dir, self.sample_rate)
        self.noise_bank = noise_bank
        self.steps = build_waveform_steps(settings, noise_bank)
        self._rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    @property
    def step_names(self) -> list[str]:
        """Names of the steps, in the order they run."""
        return [name for name, _ in self.steps]

    def step(self, name: str) -> BaseWaveformTransform:
        """The transform of step ``name`` (its ``parameters`` hold the last draw)."""
        for step_name, transform in self.steps:
            if step_name == name:
                return transform
        raise KeyError(f"no augmentation step {name!r}; steps are {', '.join(self.step_names)}")

    def __call__(self, samples: np.ndarray, sample_rate: int) -> FloatArray:
        """Run every step (each with its probability) on a mono clip."""
        return self._run([transform for _, transform in self.steps], samples, sample_rate)

    def apply_step(self, name: str, samples: np.ndarray, sample_rate: int) -> FloatArray:
        """Run step ``name`` alone (with its own probability) on a mono clip."""
        return self._run([self.step(name)], samples, sample_rate)

    def _run(
        self, transforms: Sequence[BaseWaveformTransform], samples: np.ndarray, sample_rate: int
    ) -> FloatArray:
        clip = self._checked_input(samples, sample_rate)
        with _global_random_seeded(int(self._generator().integers(2**32))):
            out = clip
            for transform in transforms:
                out = transform(out, sample_rate)
        return _finished(out, len(clip))

    def _checked_input(self, samples: np.ndarray, sample_rate: int) -> FloatArray:
        if sample_rate != self.sample_rate:
            raise ValueError(
                f"WaveformAugment was built for {self.sample_rate} Hz but got a clip at "
                f"{sample_rate} Hz"
            )
        samples = np.asarray(samples)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(
                f"WaveformAugment expects a non-empty mono (1-D) clip, got shape {samples.shape}"
            )
        if not np.isfinite(samples).all():
            raise ValueError("WaveformAugment got a clip with NaN or infinite samples")
        return np.ascontiguousarray(samples, dtype=np.float32)

    def _generator(self) -> np.random.Generator:
        """This process's generator: re-derived once per DataLoader worker from its torch seed."""
        info = get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._rng = np.random.default_rng([int(self._rng.integers(2**63)), info.seed])
        return self._rng

    def __repr__(self) -> str:
        return f"WaveformAugment(sample_rate={self.sample_rate}, steps={self.step_names})"


def _finished(samples: np.ndarray, length: int) -> FloatArray:
    """Guarantee the pipeline contract: float32, exactly ``length`` samples, finite."""
    out = np.asarray(samples, dtype=np.float32)
    if len(out) != length:
        out = crop_or_pad(out, length, mode="start")
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out


# --------------------------------------------------------------------------------------------------
# Batch augmentations (torch)
# --------------------------------------------------------------------------------------------------


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


def _mix(
    x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
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
    return _mix(x, targets, _beta(alpha, generator), perm)


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


# --------------------------------------------------------------------------------------------------
# Preview
# --------------------------------------------------------------------------------------------------

_STEP_TITLES = {
    "shift": "time shift",
    "time_stretch": "time stretch",
    "pitch_shift": "pitch shift",
    "background_noise": "background noise",
    "colored_noise": "coloured noise",
    "gain": "gain",
}


def _describe(name: str, parameters: dict) -> str:
    """A short caption of one step's drawn parameters."""
    details = {
        "shift": lambda: f"{parameters['shift_amount']:+.2f} of clip",
        "time_stretch": lambda: f"rate {parameters['rate']:.2f}",
        "pitch_shift": lambda: f"{parameters['num_semitones']:+.2f} semitones",
        "background_noise": lambda: f"{Path(parameters['noise_file']).stem}, "
                                    f"SNR {parameters['snr_db']:.1f} dB",
        "colored_noise": lambda: f"{parameters['f_decay']:+.1f} dB/oct",
        "gain": lambda: f"{20 * math.log10(parameters['amplitude_ratio']):+.1f} dB",
    }
    return f"{_STEP_TITLES[name]} ({details[name]()})"


def _mel_db(samples: np.ndarray, sample_rate: int, frontend: FrontendSettings) -> np.ndarray:
    """Log-mel power (dB re 1.0, not per-clip normalised, so gain changes stay visible)."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=samples.astype(np.float32), sr=sample_rate, n_fft=frontend.n_fft,
        hop_length=frontend.hop_length, n_mels=frontend.n_mels, fmin=frontend.fmin,
        fmax=min(frontend.fmax, sample_rate / 2), pad_mode="reflect", power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def _preview_panels(
    clip: np.ndarray, settings: AugmentSettings, sample_rate: int, seed: int,
    frontend: FrontendSettings,
) -> list[tuple[str, np.ndarray]]:
    panels = [("original", _mel_db(clip, sample_rate, frontend))]
    augment = WaveformAugment(_forced(settings), sample_rate, seed=seed)
    for name in augment.step_names:
        changed = augment.apply_step(name, clip, sample_rate)
        title = _describe(name, augment.step(name).parameters)
        panels.append((title, _mel_db(changed, sample_rate, frontend)))
    original = torch.from_numpy(panels[0][1]).float()[None]
    generator = torch.Generator().manual_seed(seed)
    masked = spec_augment(original, settings.time_masks, settings.time_mask_fraction,
                          settings.freq_masks, settings.freq_mask_fraction, generator)
    panels.append(("SpecAugment (mean-filled masks)", masked[0].numpy()))
    partner = torch.from_numpy(
        _mel_db(_sweep(len(clip), sample_rate, _rms(clip)), sample_rate, frontend)
    ).float()[None]
    # Training draws lam ~ Beta(alpha, alpha), often near 0 or 1; an even mix shows the effect.
    mixed, _ = _mix(torch.cat([original, partner]), torch.eye(2), 0.5, torch.tensor([1, 0]))
    panels.append(("mixup λ=0.5 with a synthetic sweep", mixed[0].numpy()))
    return panels


def _sweep(length: int, sample_rate: int, rms: float, seed: int = 0) -> np.ndarray:
    """A falling frequency sweep at ``rms`` level over a white floor 30 dB down.

    An unmistakable mixup partner; the floor stands in for a real recording's background, since
    mixing log-mels against digital silence would only darken the clip.
    """
    level = max(rms, 1e-3)
    freqs = np.linspace(min(8000.0, 0.4 * sample_rate), 1000.0, length)
    sweep = np.sqrt(2.0) * level * np.sin(2 * np.pi * np.cumsum(freqs) / sample_rate)
    floor = level * 10 ** (-30 / 20) * np.random.default_rng(seed).standard_normal(length)
    return (sweep + floor).astype(np.float32)


def preview_augmentations(
    clip: Path,
    out_png: Path,
    settings: AugmentSettings,
    sample_rate: int = 32000,
    clip_s: float = 5.0,
    seed: int = 0,
    frontend: FrontendSettings | None = None,
) -> Path:
    """Draw one PNG: the clip's log-mel spectrogram, then the same clip under each augmentation alone.

    The first ``clip_s`` seconds (zero-padded if shorter) of ``clip`` are shown as recorded, under
    every waveform step with probability 1 (background noise only when ``settings.noise_dir`` is
    set), under SpecAugment, and mixed up with a synthetic frequency sweep. Panels share one
    colour scale in dB, titled with the drawn parameters. Returns ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if clip_s <= 0:
        raise ValueError(f"clip_s must be positive, got {clip_s}")
    frontend = frontend or FrontendSettings()
    samples = crop_or_pad(load(clip, sample_rate), int(round(clip_s * sample_rate)), mode="start")
    panels = _preview_panels(samples, settings, sample_rate, seed, frontend)
    top = max(float(np.max(image)) for _, image in panels)
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    extent = (0.0, clip_s, 0.0, float(frontend.n_mels))
    for axis, (title, image) in zip(axes, panels, strict=False):
        shown = axis.imshow(image, origin="lower", aspect="auto", extent=extent,
                            vmin=top - 80.0, vmax=top, cmap="magma")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("time (s)")
        axis.set_ylabel("mel bin")
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.colorbar(shown, ax=axes[: len(panels)].tolist(), label="dB", shrink=0.8)
    figure.suptitle(f"Augmentation preview: {Path(clip).name}")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=80)
    return out_png


__all__ = [
    "BackgroundNoise",
    "BatchAugment",
    "NoiseBank",
    "WaveformAugment",
    "build_waveform_steps",
    "cutmix_time",
    "mixup",
    "preview_augmentations",
    "spec_augment",
]
