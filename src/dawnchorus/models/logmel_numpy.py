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
waveform at a time, so each one's arrays stay in cache: 2.6 instead of 4.1 CPU ms per 5-s window as
one batch, against 3.5-5.2 for torch's banded frontend (one thread, batches of 4, 15 interleaved
rounds on a busy machine, real soundscape audio; same values). Each thread computes in buffers of
its own (:class:`_Workspace`: no spectrum-sized array is allocated per call; allocating them cost
page faults, e.g. 30 per window against none once the heap held other buffers), and the frames go
through window, FFT and squares :data:`FFT_FRAMES` at a time, in cache. Per step, CPU ms per 5-s
window before -> after (one thread, load ~2, medians of 30 interleaved rounds of 20 windows, a
step-timed copy of each; indicative): padding 0.30 -> 0.09, window 0.87 -> 0.29, FFT 1.59 -> 1.07,
squares 0.76 -> 0.26, mel projection 0.32 -> 0.26, dB and normalisation 0.29 -> 0.16; whole
4.5 -> 2.3. The whole frontend's gain depends on the allocator's state: 1.90 -> 1.82 ms in
bench/logmel_speed.py's torch-free process, 4.05 -> 2.33 in another; with the buffers it took
1.8-2.4 ms in every setup measured, before 1.9-4.2 (the values are bitwise the same).
Matrix products run through numpy's BLAS: a caller running several frontends in parallel threads
limits BLAS to one thread each (OpenBLAS's own threads spin: measured here 5.3 s of CPU for 0.3 s of
work with two of them).

Also here: :func:`slaney_mel_filterbank` (``librosa.filters.mel``'s matrix bit for bit, without
importing librosa's scipy.signal and numba) and :func:`check_parameters` (what both frontends accept).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self

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
# Frames windowed and transformed at a time: their windowed samples (256 kB) and spectrum stay in
# cache between the window product, the FFT and the squares (see NumpyLogMel._log_mel).
FFT_FRAMES = 32

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


class LogMelParameters:
    """The parameters both log-mel frontends take, checked and kept as attributes, their construction
    from a model's settings, and the number of frames they give: :class:`NumpyLogMel` and
    :class:`~dawnchorus.models.features.LogMel` derive from it (this module imports no torch)."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    top_db: float | None
    normalize: Normalize

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
        self.fmin = fmin
        self.fmax = fmax
        self.top_db = top_db
        self.normalize = normalize

    @classmethod
    def from_settings(cls, audio: AudioSettings, frontend: FrontendSettings) -> Self:
        """The frontend described by a model's (or run's) audio and frontend settings."""
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
        """Number of spectrogram frames produced for ``num_samples`` audio samples: the centred STFT's
        (``n_fft // 2`` samples of padding each side), ``1 + num_samples // hop_length`` for an even
        ``n_fft``."""
        return 1 + (num_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length


class NumpyLogMel(LogMelParameters):
    """Waveforms ``(B, T)`` float32 -> log-mel spectrograms ``(B, 1, n_mels, frames_for(T))``
    float32 in dB, as :class:`~dawnchorus.models.features.LogMel` in eval mode computes them.

    Thread safe: no state changes after construction; each thread computes in buffers of its own
    (:class:`_Workspace`, kept per thread and waveform length). Each call uses one thread for its FFTs
    and as many as numpy's BLAS is allowed for its products (see the module docstring).
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
        super().__init__(sample_rate, n_fft, hop_length, n_mels, fmin, fmax, top_db, normalize)
        self.window = hann_window(n_fft)
        filterbank = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        every_band = mel_bands(filterbank)
        self.bands = [band for band in every_band if band.stop_bin > band.first_bin]
        # filters that use no bin (their power stays 0, as in the dense product)
        self.silent = [
            (band.first_mel, band.stop_mel) for band in every_band if band.stop_bin <= band.first_bin
        ]
        spans = [(band.first_bin, band.stop_bin) for band in self.bands]
        self.bins = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)
        # The products run over the interleaved (real, imaginary) squares of the spectrum, which
        # sum to the power without a pass of their own (band_block).
        self.blocks = [band_block(filterbank, band) for band in self.bands]

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
        work = self._workspace(audio.shape[-1])
        for row, waveform in enumerate(audio):  # one waveform at a time: its arrays stay in cache
            out[row, 0] = self._log_mel(waveform, work, scipy.fft.rfft).T
        return out

    def _workspace(self, samples: int) -> _Workspace:
        key = (samples, self.n_fft, self.hop_length, self.n_mels, 2 * (self.bins[1] - self.bins[0]))
        spaces: dict[tuple[int, ...], _Workspace] = _THREAD.__dict__.setdefault("workspaces", {})
        if key not in spaces:
            if len(spaces) >= _WORKSPACES_KEPT:
                spaces.clear()
            spaces[key] = _Workspace(samples, self.n_fft, self.frames_for(samples), key[3], key[4])
        return spaces[key]

    def _log_mel(self, waveform: np.ndarray, work: _Workspace, rfft: Any) -> np.ndarray:
        """``(frames, n_mels)`` log-mel of one waveform, in ``work.mel``.

        Steps, each writing into ``work``'s buffers (none allocates a spectrum-sized array): reflect
        padding; per :data:`FFT_FRAMES` frames (a strided view of the padded waveform), the window
        multiplied into one small buffer, its ``rfft``, and the squares of the real and imaginary parts
        of the bins the filterbank uses, written side by side into ``work.squares`` while the chunk's
        spectrum is in cache; the banded projection of the squares into ``work.mel``; dB,
        ``top_db`` and normalisation in place.
        """
        half = self.n_fft // 2
        samples = len(waveform)
        padded = work.padded
        padded[half : half + samples] = waveform
        padded[:half] = waveform[half:0:-1]  # reflect padding, as np.pad(mode="reflect")
        padded[half + samples :] = waveform[-2 : -half - 2 : -1]
        frames = sliding_window_view(padded, self.n_fft)[:: self.hop_length]
        first, stop = self.bins
        squares, mel = work.squares, work.mel
        for start in range(0, len(frames), FFT_FRAMES):
            end = min(start + FFT_FRAMES, len(frames))
            windowed = work.windowed[: end - start]
            np.multiply(frames[start:end], self.window, out=windowed)
            spectrum = rfft(windowed, axis=-1, overwrite_x=True)  # complex64, (chunk, bins): in cache
            np.square(spectrum.view(np.float32)[:, 2 * first : 2 * stop], out=squares[start:end])
        for band, block in zip(self.bands, self.blocks, strict=True):
            columns = squares[:, 2 * (band.first_bin - first) : 2 * (band.stop_bin - first)]
            np.matmul(columns, block, out=mel[:, band.first_mel : band.stop_mel])
        for first_mel, stop_mel in self.silent:
            mel[:, first_mel:stop_mel] = 0.0
        decibels = np.maximum(mel, AMIN, out=mel)
        np.log10(decibels, out=decibels)
        decibels *= 10.0
        if self.top_db is not None:
            np.maximum(decibels, decibels.max() - np.float32(self.top_db), out=decibels)
        if self.normalize == "per_sample":
            mean, std = decibels.mean(), decibels.std()
            decibels -= mean
            decibels /= std + np.float32(NORM_EPS)
        return decibels


class _Workspace:
    """One thread's buffers for waveforms of ``samples`` samples: the reflect-padded waveform, one
    chunk of windowed frames, the squares of the used bins ``(frames, squares)`` and the mel power
    ``(frames, n_mels)``, all float32 (2.8 MB at the defaults)."""

    def __init__(self, samples: int, n_fft: int, frames: int, n_mels: int, squares: int) -> None:
        self.padded = np.empty(samples + 2 * (n_fft // 2), dtype=np.float32)
        self.windowed = np.empty((min(FFT_FRAMES, frames), n_fft), dtype=np.float32)
        self.squares = np.empty((frames, squares), dtype=np.float32)
        self.mel = np.empty((frames, n_mels), dtype=np.float32)


# Each thread's workspaces by (samples, n_fft, hop_length, n_mels, squares); at most a few are kept
# (predict uses one window length).
_THREAD = threading.local()
_WORKSPACES_KEPT = 4


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
