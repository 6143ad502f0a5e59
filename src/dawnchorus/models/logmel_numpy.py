"""The log-mel frontend in numpy, and the mel filterbank both frontends share; no torch.

:class:`NumpyLogMel` computes what :class:`dawnchorus.models.features.LogMel` computes (centred STFT
with a periodic Hann window and reflect padding, power, Slaney mel filterbank, dB with ``top_db``,
per-sample normalisation) for prediction with an ONNX graph, where torch would be imported for the
frontend alone (``import torch`` ~1.1 s of a ~2.3 s start-up, bench/README.md "Start-up"). The two
agree to float32 rounding (tests/test_features.py: ~2e-6 on real audio, normalised units).

The FFT is ``scipy.fft.rfft`` on float32 frames: numpy's own float32 ``rfft`` took ~5 ms per 5-s
window here (slower than its float64 one), scipy's ~1 ms, as fast as torch's STFT. The mel projection
is banded (:func:`mel_bands`): each group of :data:`BAND_FILTERS` neighbouring filters is multiplied
only over the STFT bins it covers, ~8x fewer multiply-adds than the dense ``(bins x n_mels)``
product (at 32 kHz, ``n_fft`` 2048, 128 mels: 114k per frame dense). A batch is computed one
waveform at a time, so each one's frames and spectrum (2.5 MB each) stay in cache: 2.6 instead of
4.1 CPU ms per 5-s window as one batch, against 3.5-5.2 for torch's banded frontend (one thread,
batches of 4, 15 interleaved rounds on a busy machine, real soundscape audio; same values).
Matrix products run through numpy's BLAS: a caller running several frontends in parallel threads
limits BLAS to one thread each (OpenBLAS's own threads spin: measured here 5.3 s of CPU for 0.3 s of
work with two of them).

Also here: :func:`slaney_mel_filterbank` (``librosa.filters.mel``'s matrix bit for bit, without
importing librosa's scipy.signal and numba) and :func:`check_parameters` (what both frontends accept).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from dawnchorus.config import AudioSettings, FrontendSettings

AMIN = 1e-10  # power floor before log10, as librosa.power_to_db(amin=1e-10)
NORM_EPS = 1e-6  # keeps per-sample normalisation finite for constant (e.g. silent) inputs
# Filters per band of the banded mel projection. Measured (one thread, batches of 4, 5-s windows at
# 32 kHz, 128 mels, busy machine, CPU ms per window for the whole numpy frontend): bands of 8 filters
# 3.8, of 16 4.5, dense 5.0; torch's frontend 5.9 in the same rounds.
BAND_FILTERS = 8

Normalize = Literal["per_sample", "none"]


@dataclass(frozen=True)
class MelBand:
    """Filters ``first_mel .. stop_mel - 1`` of a filterbank, nonzero only on STFT bins
    ``first_bin .. stop_bin - 1``."""

    first_mel: int
    stop_mel: int
    first_bin: int
    stop_bin: int


def mel_bands(filterbank: np.ndarray, filters: int = BAND_FILTERS) -> list[MelBand]:
    """The filterbank ``(n_mels, bins)`` cut into groups of ``filters`` neighbouring filters, in
    order, each with the span of bins any of its filters uses (a group of all-zero filters spans no
    bin: a product over no bins gives its zero power, as the dense product does)."""
    bands = []
    for start in range(0, filterbank.shape[0], filters):
        stop = min(start + filters, filterbank.shape[0])
        used = np.flatnonzero(filterbank[start:stop].any(axis=0))
        span = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        bands.append(MelBand(start, stop, *span))
    return bands


def band_block(filterbank: np.ndarray, band: MelBand) -> np.ndarray:
    """The filters of ``band`` over its bins, transposed, every row twice: ``(2 * bins, filters)``
    float32, the matrix that projects interleaved (real², imaginary²) squares onto the band's filters."""
    block = filterbank[band.first_mel : band.stop_mel, band.first_bin : band.stop_bin].T
    return np.ascontiguousarray(np.repeat(block, 2, axis=0), dtype=np.float32)


class NumpyLogMel:
    """Waveforms ``(B, T)`` float32 -> log-mel spectrograms ``(B, 1, n_mels, 1 + T // hop_length)``
    float32 in dB, as :class:`~dawnchorus.models.features.LogMel` in eval mode computes them.

    Thread safe (no state changes after construction); each call uses one thread for its FFTs and
    as many as numpy's BLAS is allowed for its products (see the module docstring).
    """

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 2048,
        hop_length: int = 512,
        n_mels: int = 128,
        fmin: float = 50.0,
        fmax: float = 14000.0,
        top_db: float | None = 80.0,
        normalize: Normalize = "per_sample",
    ) -> None:
        check_parameters(sample_rate, n_fft, hop_length, n_mels, fmin, fmax, top_db, normalize)
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.top_db = top_db
        self.normalize = normalize
        self.window = hann_window(n_fft)
        filterbank = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.bands = [band for band in mel_bands(filterbank) if band.stop_bin > band.first_bin]
        spans = [(band.first_bin, band.stop_bin) for band in self.bands]
        self.bins = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)
        # The products run over the interleaved (real, imaginary) squares of the spectrum, which
        # sum to the power without a pass of their own (band_block); bands of zero filters stay 0.
        self.blocks = [band_block(filterbank, band) for band in self.bands]

    @classmethod
    def from_settings(cls, audio: AudioSettings, frontend: FrontendSettings) -> NumpyLogMel:
        """The frontend described by a model's audio and frontend settings."""
        return cls(
            sample_rate=audio.sample_rate,
            n_fft=frontend.n_fft,
            hop_length=frontend.hop_length,
            n_mels=frontend.n_mels,
            fmin=frontend.fmin,
            fmax=frontend.fmax,
            top_db=frontend.top_db,
            normalize=frontend.normalize,
        )

    def frames_for(self, num_samples: int) -> int:
        """Number of spectrogram frames produced for ``num_samples`` audio samples."""
        return 1 + num_samples // self.hop_length

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel spectrograms of a batch of waveforms ``(B, T)`` as float32 ``(B, 1, M, F)``."""
        import scipy.fft  # 0.1-0.3 s (it imports scipy.special): on the first batch, not with the module

        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 2:
            raise ValueError(
                f"LogMel expects a batch of waveforms shaped (batch, samples), got shape {audio.shape}"
            )
        half = self.n_fft // 2
        if audio.shape[-1] < half + 1:
            raise ValueError(
                f"LogMel needs at least {half + 1} samples per waveform (n_fft // 2 + 1 for reflect "
                f"padding), got {audio.shape[-1]}"
            )
        out = np.empty((audio.shape[0], 1, self.n_mels, self.frames_for(audio.shape[-1])), dtype=np.float32)
        for row, waveform in enumerate(audio):  # one waveform at a time: its arrays stay in cache
            out[row, 0] = self._log_mel(waveform, scipy.fft.rfft).T
        return out

    def _log_mel(self, waveform: np.ndarray, rfft: Any) -> np.ndarray:
        """``(frames, n_mels)`` log-mel of one waveform."""
        half = self.n_fft // 2
        padded = np.pad(waveform, (half, half), mode="reflect")
        frames = sliding_window_view(padded, self.n_fft)[:: self.hop_length]
        spectrum = rfft(frames * self.window, axis=-1, overwrite_x=True)  # complex64
        first, stop = self.bins
        squares = np.square(spectrum.view(np.float32)[:, 2 * first : 2 * stop])
        mel = np.zeros((len(frames), self.n_mels), dtype=np.float32)
        for band, block in zip(self.bands, self.blocks, strict=True):
            columns = squares[:, 2 * (band.first_bin - first) : 2 * (band.stop_bin - first)]
            np.matmul(columns, block, out=mel[:, band.first_mel : band.stop_mel])
        decibels = np.log10(np.maximum(mel, AMIN))
        decibels *= 10.0
        if self.top_db is not None:
            np.maximum(decibels, decibels.max() - np.float32(self.top_db), out=decibels)
        if self.normalize == "per_sample":
            mean, std = decibels.mean(), decibels.std()
            decibels -= mean
            decibels /= std + np.float32(NORM_EPS)
        return decibels


def hann_window(n_fft: int) -> np.ndarray:
    """The periodic Hann window of ``n_fft`` samples, float32, as ``torch.hann_window`` gives it."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``librosa.filters.mel(htk=False, norm="slaney")`` (float32 ``(n_mels, 1 + n_fft // 2)``), bit
    for bit: the same float64 steps in numpy. ``librosa.filters`` imports scipy.signal and numba
    (~0.5 s), which prediction would otherwise load for this one matrix."""
    fft_frequencies = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _slaney_mel_to_hz(np.linspace(_slaney_hz_to_mel(fmin), _slaney_hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_frequencies)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    if not np.all((mel_f[:-2] == 0) | (weights.max(axis=1) > 0)):
        warnings.warn(
            "Empty filters detected in mel frequency basis. Some channels will produce empty responses. "
            "Try increasing your sampling rate (and fmax) or reducing n_mels.",
            stacklevel=3,
        )
    return weights


# Slaney's mel scale as librosa computes it: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_MEL_HZ_PER_MEL = 200.0 / 3
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _slaney_hz_to_mel(frequency: float) -> float:
    if frequency >= _MEL_LOG_HZ:
        return _MEL_LOG_HZ / _MEL_HZ_PER_MEL + np.log(frequency / _MEL_LOG_HZ) / _MEL_LOG_STEP
    return frequency / _MEL_HZ_PER_MEL


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    log_start = _MEL_LOG_HZ / _MEL_HZ_PER_MEL
    frequencies = _MEL_HZ_PER_MEL * mels
    log_part = mels >= log_start
    frequencies[log_part] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[log_part] - log_start))
    return frequencies


def check_parameters(
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    n_mels: int,
    fmin: float,
    fmax: float,
    top_db: float | None,
    normalize: str,
) -> None:
    """Raise ``ValueError`` naming the first log-mel parameter that no frontend can use."""
    for name, value in (
        ("sample_rate", sample_rate),
        ("n_fft", n_fft),
        ("hop_length", hop_length),
        ("n_mels", n_mels),
    ):
        if value <= 0:
            raise ValueError(f"LogMel {name} must be positive, got {value}")
    if not 0 <= fmin < fmax:
        raise ValueError(f"LogMel needs 0 <= fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if fmax > sample_rate / 2:
        raise ValueError(
            f"LogMel fmax ({fmax}) exceeds the Nyquist frequency ({sample_rate / 2}) of "
            f"sample_rate {sample_rate}"
        )
    if top_db is not None and top_db <= 0:
        raise ValueError(f"LogMel top_db must be positive or None, got {top_db}")
    if normalize not in ("per_sample", "none"):
        raise ValueError(f"LogMel normalize must be 'per_sample' or 'none', got {normalize!r}")
