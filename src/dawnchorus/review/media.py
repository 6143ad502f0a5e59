"""What a reviewer sees and hears of a window: a spectrogram PNG and WAV slices, with a second of context.

Both are rendered once and cached under ``RESULTS_DIR/review_cache/`` (written atomically, named by
the recording id and window, never by a path from a request); where the run folder cannot be written,
they are rendered for each request instead. The spectrogram shows the window and
:data:`CONTEXT_S` either side (clipped at the recording's ends), with the window's bounds drawn as
white lines; the audio is the window alone or with its context.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from dawnchorus.errors import OutputError
from dawnchorus.io import audio
from dawnchorus.io.files import atomic_write

CACHE_DIR = "review_cache"
CONTEXT_S = 1.0
N_FFT = 512  # ~16 ms at 32 kHz: resolves the frequency sweeps of bird calls
HOP = 128
MAX_FREQ_HZ = 12_000  # most bird song lies below; above is mostly empty and costs image height
DYNAMIC_RANGE_DB = 80.0
MAX_COLUMNS = 800  # time frames are pooled (mean power) down to this width: ~250 KB PNGs for 7 s


def clip_bounds(start_s: float, end_s: float, context: bool) -> tuple[float, float]:
    """The stretch of audio served for a window: with ``context``, :data:`CONTEXT_S` either side
    (never before 0; the end is clipped by the recording's length when read)."""
    if not context:
        return start_s, end_s
    return max(0.0, start_s - CONTEXT_S), end_s + CONTEXT_S


def spectrogram_png(recording: Path, cache: Path, start_s: float, end_s: float) -> Path | bytes:
    """The spectrogram PNG of window ``start_s``..``end_s`` of ``recording`` with context: the
    ``cache`` file it is kept in, or the bytes themselves where the cache cannot be written (a
    read-only run folder). Raises an AudioError for an unreadable recording."""
    if cache.is_file():
        return cache
    begin, end = clip_bounds(start_s, end_s, context=True)
    samples, rate = _read(recording, begin, end)
    image = _spectrogram_image(samples, rate)
    width = image.shape[1]
    seconds = max(len(samples) / rate, 1e-9)
    for bound in (start_s - begin, end_s - begin):  # the window's edges
        column = int(round(bound / seconds * (width - 1)))
        if 0 <= column < width:
            image[:, max(column - 1, 0) : column + 1] = 1.0
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, image, cmap="magma", vmin=0.0, vmax=1.0, format="png")
    return _kept(cache, buffer.getvalue())


def wav_slice(recording: Path, cache: Path, start_s: float, end_s: float, context: bool) -> Path | bytes:
    """The 16-bit WAV of the window (with ``context``: and a second either side): the ``cache`` file,
    or the bytes where it cannot be written."""
    if cache.is_file():
        return cache
    begin, end = clip_bounds(start_s, end_s, context)
    samples, rate = _read(recording, begin, end)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return _kept(cache, buffer.getvalue())


def cache_path(results_dir: Path, recording_id: str, start_ms: int, kind: str) -> Path:
    """Where the ``kind`` (``png``, ``wav``, ``context.wav``) of a window is cached."""
    return results_dir / CACHE_DIR / recording_id / f"{int(start_ms)}.{kind}"


def _kept(cache: Path, data: bytes) -> Path | bytes:
    """``data`` written to ``cache`` (atomically), or ``data`` itself when it cannot be written."""
    try:
        return atomic_write(cache, lambda tmp: tmp.write_bytes(data))
    except OutputError:
        return data


def _read(recording: Path, begin: float, end: float) -> tuple[np.ndarray, int]:
    """Mono samples of ``recording`` from ``begin`` to ``end`` (clipped to its length), native rate."""
    found = audio.info(recording)
    rate = int(found.sample_rate)
    length = found.duration_s
    begin = min(begin, max(length - 1.0 / rate, 0.0))
    duration = max(min(end, length) - begin, 1.0 / rate)
    samples = audio.load(recording, None, offset_s=begin, duration_s=duration)
    return samples.astype(np.float32), rate


def _spectrogram_image(samples: np.ndarray, rate: int) -> np.ndarray:
    """A [0, 1] image (low frequencies at the bottom) of the log power spectrogram of ``samples``."""
    if len(samples) < N_FFT:
        samples = np.pad(samples, (0, N_FFT - len(samples)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    group = -(-len(power) // MAX_COLUMNS)
    if group > 1:
        padded = np.pad(power, ((0, (-len(power)) % group), (0, 0)), mode="edge")
        power = padded.reshape(-1, group, power.shape[1]).mean(axis=1)
    keep = int(np.searchsorted(np.fft.rfftfreq(N_FFT, 1.0 / rate), min(MAX_FREQ_HZ, rate / 2), side="right"))
    decibels = 10 * np.log10(power[:, :keep].T + 1e-12)
    top = decibels.max()
    image = np.clip((decibels - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    return np.ascontiguousarray(image[::-1])
