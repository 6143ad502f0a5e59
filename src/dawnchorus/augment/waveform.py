"""Waveform augmentations against domain shift, run in numpy inside DataLoader workers.

:class:`WaveformAugment` is an ordered, named pipeline of audiomentations-style transforms (time
shift, time stretch, pitch shift, background noise from a :class:`~dawnchorus.augment.noise.NoiseBank`,
coloured noise, gain), each with its own probability; :class:`BackgroundNoise` is the one transform
written here. Batch augmentations (mixup, CutMix, SpecAugment) are :mod:`dawnchorus.augment.batch`;
the noise bank is :mod:`dawnchorus.augment.noise`; the preview figure :mod:`dawnchorus.augment.preview`.

Randomness. audiomentations draws from the global ``random`` and ``numpy.random`` state.
:class:`WaveformAugment` owns a ``numpy.random.Generator`` instead: every call draws one seed from
it, seeds the global state with it for the duration of the call, then restores the previous global
state. A seeded ``WaveformAugment`` is therefore reproducible and leaves other code's randomness
alone. Inside a DataLoader worker the generator is re-derived once from the worker's torch seed, so
workers never repeat each other's augmentations (and a ``seed_everything`` run stays reproducible).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from audiomentations import AddColorNoise, Gain, PitchShift, Shift, TimeStretch
from audiomentations.core.transforms_interface import BaseWaveformTransform
from torch.utils.data import get_worker_info

from dawnchorus.augment.noise import SILENT_RMS, FloatArray, NoiseBank, rms
from dawnchorus.config import AugmentSettings
from dawnchorus.io.audio import crop_or_pad

# Length of the colouring filter. audiomentations' default (128) leaves a ~3 dB ripple across mel
# bands (visible stripes in the spectrogram); 2048 taps measured 0.7 dB, and run faster here.
COLORED_NOISE_FILTER_TAPS = 2048
# Fade applied where a shifted clip meets the inserted silence, against clicks (seconds).
SHIFT_FADE_S = 0.005


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
        noise_rms = rms(noise)
        if noise_rms < SILENT_RMS:  # a silent stretch inside a noise file
            return samples
        target_rms = rms(samples) / 10.0 ** (self.parameters["snr_db"] / 20.0)
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


def _finished(samples: np.ndarray, length: int) -> FloatArray:
    """Guarantee the pipeline contract: float32, exactly ``length`` samples, finite."""
    out = np.asarray(samples, dtype=np.float32)
    if len(out) != length:
        out = crop_or_pad(out, length, mode="start")
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out
