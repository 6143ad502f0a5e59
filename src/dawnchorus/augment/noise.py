"""The noise bank and the signal-level helpers every noise user shares.

:class:`NoiseBank` holds a folder of background recordings, decoded once, for training
(:class:`~dawnchorus.augment.waveform.BackgroundNoise`) and for the synthetic soundscapes
(:mod:`dawnchorus.synth.soundscapes`). Beside it: the one RMS (:func:`rms`, :func:`unit_rms`),
synthetic coloured noise (:func:`coloured_noise`, :func:`shaped_noise`) and the looped segment a
recording shorter than the request gives (:func:`looped_segment`, :func:`random_looped_segment`).

This module does not mix noise into a clip at an SNR (:mod:`dawnchorus.augment.waveform`) and holds
no torch code.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sfft

from dawnchorus.errors import ConfigError
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, find_audio_files, load

# A noise recording quieter than this RMS carries no usable noise.
SILENT_RMS = 1e-9
# Unusable files a "no usable noise" error names (the rest are counted).
_REASONS_SHOWN = 3

FloatArray = NDArray[np.float32]


class NoiseBank:
    """Every audio file of a folder (recursive), decoded once to mono float32 at ``sample_rate``.

    Unreadable or silent files are skipped with a warning that names them. A folder that is missing,
    holds no audio file, or none that can be used, raises :class:`~dawnchorus.errors.ConfigError`
    (a ``ValueError``) in one line naming the folder and, for unusable files, each file's reason.
    Banks are meant to be small (minutes of audio): all of it is held in memory so drawing a segment
    costs a slice, not a decode.
    """

    def __init__(self, folder: str | Path, sample_rate: int) -> None:
        self.folder = Path(folder)
        self.sample_rate = int(sample_rate)
        if sample_rate <= 0:
            raise ValueError(f"noise bank sample_rate must be positive, got {sample_rate}")
        if not self.folder.is_dir():
            raise ConfigError(f"noise folder {self.folder} does not exist or is not a folder")
        files = find_audio_files(self.folder)
        if not files:
            raise ConfigError(
                f"noise folder {self.folder} contains no audio files "
                f"(looked for {', '.join(AUDIO_EXTENSIONS)} recursively)"
            )
        self.paths: list[Path] = []
        self.clips: list[FloatArray] = []
        skipped: list[str] = []
        for path in files:
            clip, problem = self._load_usable(path)
            if clip is not None:
                self.paths.append(path)
                self.clips.append(clip)
            else:
                skipped.append(problem)
        if not self.clips:
            shown = "; ".join(skipped[:_REASONS_SHOWN])
            more = f"; and {len(skipped) - _REASONS_SHOWN} more" if len(skipped) > _REASONS_SHOWN else ""
            raise ConfigError(
                f"noise folder {self.folder}: none of its {len(files)} audio files could be used: "
                f"{shown}{more}"
            )
        for problem in skipped:  # the bank works without them: say which were left out
            warnings.warn(f"noise bank: skipping {problem}", stacklevel=2)

    def _load_usable(self, path: Path) -> tuple[FloatArray | None, str]:
        """(the clip, "") or (None, "PATH: why it cannot be used")."""
        try:
            clip = load(path, self.sample_rate)
        except AudioError as exc:
            return None, str(exc)
        if rms(clip) < SILENT_RMS:
            return None, f"{path}: silent (no noise to mix in)"
        return clip, ""

    @classmethod
    def cached(cls, folder: str | Path, sample_rate: int) -> NoiseBank:
        """The bank for ``folder`` at ``sample_rate``, loaded once per process.

        The cache key includes every file's size and modification time, so editing the folder
        loads it afresh. Forked DataLoader workers inherit the parent's already-loaded bank.
        """
        folder = Path(folder).resolve()
        if not folder.is_dir():
            raise ConfigError(f"noise folder {folder} does not exist or is not a folder")
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
        return _max_offset(len(self.clips[index]), length)

    def segment(self, index: int, offset: int, length: int) -> FloatArray:
        """``length`` samples of clip ``index`` from ``offset``, looping a clip that is too short."""
        return looped_segment(self.clips[index], offset, length)

    def random_segment(self, length: int, rng: np.random.Generator | None = None) -> FloatArray:
        """A ``length``-sample segment of a uniformly chosen clip at a uniform random offset."""
        if length <= 0:
            raise ValueError(f"segment length must be positive, got {length}")
        rng = rng if rng is not None else np.random.default_rng()
        index = int(rng.integers(len(self.clips)))
        return random_looped_segment(self.clips[index], length, rng)

    def __repr__(self) -> str:
        return (
            f"NoiseBank({str(self.folder)!r}, sample_rate={self.sample_rate}, "
            f"files={len(self)}, duration_s={self.duration_s:.1f})"
        )


def rms(samples: np.ndarray) -> float:
    """Root mean square of ``samples`` (accumulated in float64); 0.0 for an empty array."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def unit_rms(samples: np.ndarray) -> np.ndarray:
    """``samples`` scaled to RMS 1 (same dtype); silence is returned unchanged."""
    level = rms(samples)
    return samples / level if level > 0 else samples


def shaped_noise(
    n: int, sample_rate: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """White noise whose amplitude spectrum is multiplied by ``gain(frequencies_hz)``; unit RMS."""
    size = sfft.next_fast_len(max(n, 2), real=True)
    spectrum = sfft.rfft(rng.standard_normal(size, dtype=np.float32))
    spectrum *= gain(sfft.rfftfreq(size, 1.0 / sample_rate).astype(np.float32))
    return unit_rms(sfft.irfft(spectrum, size)[:n])


def coloured_noise(
    n: int, sample_rate: int, exponent: float, rng: np.random.Generator
) -> np.ndarray:
    """Noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS, no DC."""
    return shaped_noise(
        n, sample_rate, rng, lambda f: np.maximum(f, 20.0) ** (-exponent / 2) * (f > 10.0)
    )


def looped_segment(recording: np.ndarray, offset: int, length: int) -> np.ndarray:
    """``length`` samples of ``recording`` from ``offset``, looping a recording that is too short.

    A stretch that fits is returned as a view (no copy).
    """
    if offset + length <= len(recording):
        return recording[offset : offset + length]
    return np.take(recording, np.arange(offset, offset + length) % len(recording))


def random_looped_segment(recording: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`looped_segment` at a uniform random offset: one that fits whole when the recording is
    at least ``length`` long, any sample of a shorter (looped) one. Draws one integer from ``rng``."""
    offset = int(rng.integers(_max_offset(len(recording), length) + 1))
    return looped_segment(recording, offset, length)


def _max_offset(size: int, length: int) -> int:
    return size - length if size >= length else size - 1


@functools.lru_cache(maxsize=4)
def _cached_bank(folder: str, sample_rate: int, signature: tuple) -> NoiseBank:
    del signature  # part of the cache key only
    return NoiseBank(folder, sample_rate)
