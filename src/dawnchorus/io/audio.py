"""Audio input/output: decode, mono, resample, crop/pad and stream windows from long files.

Everything returns mono ``float32`` numpy arrays at the requested sample rate. Decoding goes through
libsndfile (``soundfile``: wav, flac, ogg/vorbis, opus, mp3), resampling through ``soxr``.
Long recordings are never read whole: :func:`iter_windows` reads blocks and keeps at most one block
plus one window in memory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dawnchorus.errors import (
    AudioDecodeError,
    AudioEmptyError,
    AudioError,
    AudioFileNotFoundError,
    AudioNonFiniteError,
    AudioTruncatedError,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")

# Seconds of audio decoded per read when streaming; bounds memory for any file length.
STREAM_BLOCK_S = 30.0


@dataclass(frozen=True)
class AudioInfo:
    """Header facts about a recording, read without decoding it."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioFileNotFoundError(path, "file not found")
    if not path.is_file():
        raise AudioFileNotFoundError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioEmptyError(path, "empty file (0 bytes)")
    # libsndfile reports a file it may not open as "System error.": ask the OS, which says why.
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError as exc:
        raise AudioDecodeError(path, "permission denied: this user may not read the file") from exc
    except OSError as exc:
        raise AudioDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc


def _open(path: Path) -> sf.SoundFile:
    _check_exists(path)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioDecodeError(path, f"not decodable audio ({_clean(exc)})") from exc
    except OSError as exc:
        raise AudioDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
    _check_declared_length(handle, path)
    if str(handle.format) == "OGG":
        _check_ogg_end(handle, path)
    elif str(handle.format) in _PROBE_END_FORMATS:
        _check_end_decodes(handle, path)
    return handle


# libsndfile quietly shortens a WAV/AIFF whose data chunk is cut off; its log says so.
_SHORT_DATA_CHUNK = re.compile(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_declared_length(handle: sf.SoundFile, path: Path) -> None:
    match = _SHORT_DATA_CHUNK.search(handle.extra_info or "")
    if not match:
        return
    declared, present = int(match.group(1)), int(match.group(2))
    # Recorders streaming to disk leave 0 or 0xFFFFFFFF as the size: unfinalised, not cut short.
    if present < declared < 0xFFFFFFF0:
        handle.close()
        raise AudioTruncatedError(
            path, f"truncated: the header declares {declared} bytes of samples, the file holds {present}"
        )


# Ogg pages (RFC 3533): "OggS", version 0, header type (0x04: last page of the stream), granule,
# serial, sequence, CRC, a segment count and table; a page holds at most 255 x 255 bytes of data.
_OGG_CAPTURE = b"OggS"
_OGG_END_OF_STREAM = 0x04
_OGG_HEADER_BYTES = 27
_OGG_MAX_PAGE = _OGG_HEADER_BYTES + 255 + 255 * 255
_OGG_FIRST_TAIL = 8192  # the last page of a Vorbis/Opus file is usually a few KB: one small read


def _check_ogg_end(handle: sf.SoundFile, path: Path) -> None:
    """Raise :class:`AudioTruncatedError` when an Ogg file does not end with its end-of-stream page.

    libsndfile takes an Ogg file's length from its last complete page, so a cut file decodes to a
    shorter recording without any error (measured: a 60 s Vorbis file cut at half its bytes reads as
    29.7 s, every frame its header claims decodes). A finished stream ends with a whole page flagged
    end-of-stream; a cut one ends inside a page, and an unfinished one on a page without the flag.
    """
    try:
        with open(path, "rb") as raw:
            size = raw.seek(0, os.SEEK_END)
            for tail_bytes in (_OGG_FIRST_TAIL, _OGG_MAX_PAGE):
                raw.seek(max(0, size - tail_bytes))
                tail = raw.read()
                problem = _ogg_tail_problem(tail, complete=len(tail) == size or tail_bytes == _OGG_MAX_PAGE)
                if problem != "undecided":
                    break
    except OSError as exc:
        handle.close()
        raise AudioDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if problem:
        decodable = (handle.frames or 0) / handle.samplerate
        handle.close()
        raise AudioTruncatedError(path, f"truncated: {problem} ({decodable:.3f} s of audio before the cut)")


def _ogg_tail_problem(tail: bytes, complete: bool) -> str | None:
    """Why the last bytes of an Ogg file are not a finished stream; None when they are.

    ``complete``: ``tail`` holds at least the longest possible page (or the whole file); otherwise
    the answer may be "undecided" (read more). A page is trusted only when its header and segment
    table parse and its data ends exactly at the end of the file, so an "OggS" inside audio data
    does not count.
    """
    position = tail.rfind(_OGG_CAPTURE)
    while position >= 0:
        header_end = position + _OGG_HEADER_BYTES
        if header_end <= len(tail) and tail[position + 4] == 0:
            segments = tail[header_end - 1]
            table = tail[header_end : header_end + segments]
            if len(table) == segments and header_end + segments + sum(table) == len(tail):
                if tail[position + 5] & _OGG_END_OF_STREAM:
                    return None
                return "the Ogg stream ends on a page not marked end-of-stream (cut short or never finished)"
        position = tail.rfind(_OGG_CAPTURE, 0, position)
    if not complete:
        return "undecided"
    return "the file ends inside an Ogg page (cut short)"


# Formats whose header declares a length a cut file does not have, found by decoding the last frame:
# a cut FLAC cannot seek there ("Internal psf_fseek() failed"), a cut MP3 reads 0 frames there
# (measured, 0.2-2 ms a file; a whole file decodes its last frame).
_PROBE_END_FORMATS = frozenset({"FLAC", "MP3", "MPEG"})


def _check_end_decodes(handle: sf.SoundFile, path: Path) -> None:
    """Raise :class:`AudioTruncatedError` when the last frame the header declares does not decode."""
    total = int(handle.frames or 0)
    if total <= 0 or not handle.seekable():
        return
    try:
        handle.seek(total - 1)
        decoded = len(handle.read(1, dtype="float32"))
        handle.seek(0)
    except (sf.LibsndfileError, RuntimeError):
        decoded = 0
    if decoded == 0:
        handle.close()
        raise AudioTruncatedError(
            path, f"truncated: the header declares {total / handle.samplerate:.3f} s but the end of the "
                  f"file does not decode (cut short)"
        )


def _clean(exc: Exception) -> str:
    text = str(exc)
    # libsndfile repeats the path in its message; keep only the reason.
    return text.split(": ", 1)[-1] if ": " in text else text


def info(path: str | Path) -> AudioInfo:
    """Read the header of ``path``; raise an :class:`AudioError` if it is not usable audio."""
    path = Path(path)
    with _open(path) as handle:
        frames = handle.frames
        result = AudioInfo(
            path=str(path),
            sample_rate=int(handle.samplerate),
            channels=int(handle.channels),
            frames=int(frames) if frames is not None and frames >= 0 else 0,
            format=str(handle.format),
            subtype=str(handle.subtype),
        )
    if result.frames == 0:
        raise AudioEmptyError(path, "zero-length audio (the header declares no samples)")
    return result


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels: (frames, channels) or (frames,) -> (frames,) float32."""
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono signal with soxr (high quality); a no-op when the rates match."""
    if source_rate == target_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    import soxr  # here, not at the top: recordings at the model's rate never resample (~1-5 ms import)

    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32)


def _read_frames(handle: sf.SoundFile, path: Path, count: int) -> np.ndarray:
    try:
        block = handle.read(count, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _mid_file_failure(handle, path, exc) from exc
    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        first = handle.tell() - len(block) + int(np.argmin(finite))
        raise AudioNonFiniteError(
            path, f"non-finite samples (NaN or inf), the first at {first / handle.samplerate:.3f} s"
        )
    return block


def _mid_file_failure(handle: sf.SoundFile, path: Path, exc: Exception) -> AudioError:
    """The error for a decoder that stops mid-file, at the position where it stopped.

    libFLAC reports damaged bytes as "flac decoder lost sync", and the handle's position is then where
    decoding stopped (measured). A cut file does not get here: :func:`_open` found its end missing.
    """
    try:
        stopped = f"{handle.tell() / handle.samplerate:.3f} s"
    except (sf.LibsndfileError, RuntimeError):
        stopped = "an unknown point"
    return AudioDecodeError(path, f"decoding failed mid-file at {stopped} ({_clean(exc)})")


def load(
    path: str | Path,
    sample_rate: int | None = None,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to mono float32 at ``sample_rate`` (native rate when None).

    ``offset_s``/``duration_s`` select a time range; only that range is decoded (libsndfile seeks).
    Raises an :class:`AudioError` subclass naming the file and the reason on any bad input.
    """
    path = Path(path)
    with _open(path) as handle:
        native_rate = int(handle.samplerate)
        total = int(handle.frames) if handle.frames and handle.frames > 0 else 0
        if total == 0:
            raise AudioEmptyError(path, "zero-length audio (the header declares no samples)")
        start = int(round(offset_s * native_rate))
        if start >= total or start < 0:
            raise AudioError(
                path, f"offset {offset_s:.3f} s is outside the recording ({total / native_rate:.3f} s)"
            )
        wanted = (
            total - start if duration_s is None else min(total - start, int(round(duration_s * native_rate)))
        )
        if start:
            handle.seek(start)
        block = _read_frames(handle, path, wanted)
    if len(block) < wanted:
        raise AudioTruncatedError(
            path,
            f"truncated: decoding stops at {(start + len(block)) / native_rate:.3f} s of the "
            f"{total / native_rate:.3f} s the header declares",
        )
    samples = to_mono(block)
    return resample(samples, native_rate, sample_rate) if sample_rate else samples


def crop_or_pad(
    samples: np.ndarray,
    length: int,
    mode: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Return exactly ``length`` samples.

    Longer input is cropped: ``random`` (training), ``center`` or ``start`` (deterministic).
    Shorter input is zero-padded at the end (``start``/``center``) or at a random offset (``random``).
    """
    if mode not in {"random", "center", "start"}:
        raise ValueError(f"crop mode must be random, center or start, not {mode!r}")
    n = len(samples)
    if n == length:
        return samples.astype(np.float32, copy=False)
    rng = rng or np.random.default_rng()
    if n > length:
        spare = n - length
        begin = {
            "random": lambda: int(rng.integers(0, spare + 1)),
            "center": lambda: spare // 2,
            "start": lambda: 0,
        }[mode]()
        return samples[begin : begin + length].astype(np.float32, copy=False)
    out = np.zeros(length, dtype=np.float32)
    begin = int(rng.integers(0, length - n + 1)) if mode == "random" else 0
    out[begin : begin + n] = samples
    return out


def window_count(frames: int, window: int, hop: int) -> int:
    """Windows needed to cover ``frames`` samples: every window adds audio the previous did not.

    A 60 s file gives 12 windows of 5 s at hop 5 s, and 23 at hop 2.5 s; a tail shorter than a
    window gets one zero-padded window.
    """
    if frames <= 0:
        return 0
    if frames <= window:
        return 1
    return math.ceil((frames - window) / hop) + 1


@dataclass(frozen=True)
class Window:
    """One fixed-length window of a recording."""

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray


# Output seconds decoded and discarded before a window range that starts mid-file, so the streaming
# resampler's filter is settled when the first kept sample comes out (soxr HQ needs a few ms).
RESAMPLER_PREROLL_S = 0.25


def _seek_before(handle: sf.SoundFile, out_index: int, native_rate: int, sample_rate: int) -> tuple[int, int]:
    """Seek a little before output sample ``out_index``; return (input frame, output index) sought to.

    The input frame is a multiple of ``native_rate / gcd(native_rate, sample_rate)``, so it falls
    exactly on an output sample and a resampler started there produces the whole-file sample grid.
    """
    if out_index <= 0:
        return 0, 0
    period = native_rate // math.gcd(native_rate, sample_rate)
    preroll = int(round(RESAMPLER_PREROLL_S * sample_rate))
    wanted = max(0, out_index - preroll) * native_rate // sample_rate
    frame = wanted // period * period
    if frame:
        try:
            handle.seek(frame)
        except (sf.LibsndfileError, RuntimeError) as exc:
            reason = f"cannot seek to {frame / native_rate:.3f} s ({_clean(exc)})"
            raise AudioDecodeError(handle.name, reason) from exc
    return frame, frame * sample_rate // native_rate


def iter_windows(
    path: str | Path,
    sample_rate: int,
    window_s: float,
    hop_s: float | None = None,
    block_s: float = STREAM_BLOCK_S,
    first_window: int = 0,
    max_windows: int | None = None,
) -> Iterator[Window]:
    """Stream fixed-length mono windows at ``sample_rate`` from a file of any length.

    The file is decoded block by block and resampled with a streaming soxr resampler, so memory is
    bounded by ``block_s`` plus one window whatever the file length. The last window is zero-padded.
    ``start_s``/``end_s`` are nominal (``end_s = start_s + window_s``), as BirdCLEF row ids use.

    ``first_window``/``max_windows`` stream only windows ``first_window`` .. ``first_window +
    max_windows - 1`` of the whole-file sequence (same indices and start times). Decoding seeks to a
    point shortly before the first of them and discards the pre-roll, so the samples equal a
    whole-file run's (to float rounding, about 1e-7, when resampling).
    """
    path = Path(path)
    hop_s = window_s if hop_s is None else hop_s
    if window_s <= 0 or hop_s <= 0:
        raise ValueError("window_s and hop_s must be positive")
    if first_window < 0 or (max_windows is not None and max_windows < 0):
        raise ValueError(f"window range must be non-negative, got first_window={first_window}, "
                         f"max_windows={max_windows}")
    window = int(round(window_s * sample_rate))
    hop = int(round(hop_s * sample_rate))
    with _open(path) as handle:
        native_rate = int(handle.samplerate)
        total = int(handle.frames) if handle.frames and handle.frames > 0 else 0
        if total == 0:
            raise AudioEmptyError(path, "zero-length audio (the header declares no samples)")
        expected_out = int(round(total * sample_rate / native_rate))
        n_windows = window_count(expected_out, window, hop)
        if max_windows is not None:
            n_windows = min(n_windows, first_window + max_windows)
        if first_window >= n_windows:
            return
        decoded, buffer_start = _seek_before(handle, first_window * hop, native_rate, sample_rate)
        stream = None
        if native_rate != sample_rate:
            import soxr  # here: recordings at the model's rate never resample

            stream = soxr.ResampleStream(native_rate, sample_rate, 1, dtype="float32", quality="HQ")
        block_frames = max(1, int(block_s * native_rate))
        buffer = np.zeros(0, dtype=np.float32)  # buffer_start: output-sample index of buffer[0]
        emitted = first_window
        finished = False
        while emitted < n_windows:
            next_start = emitted * hop
            need_end = next_start + window
            while not finished and buffer_start + len(buffer) < need_end:
                block = _read_frames(handle, path, block_frames)
                decoded += len(block)
                finished = len(block) < block_frames or decoded >= total
                if finished and decoded < total:
                    raise AudioTruncatedError(
                        path,
                        f"truncated: decoding stops at {decoded / native_rate:.3f} s of the "
                        f"{total / native_rate:.3f} s the header declares",
                    )
                mono = to_mono(block)
                if stream is not None:
                    mono = stream.resample_chunk(mono, last=finished)
                # Drop samples no future window needs before appending.
                drop = min(max(0, next_start - buffer_start), len(buffer))
                buffer = np.concatenate([buffer[drop:], mono])
                buffer_start += drop
            offset = next_start - buffer_start
            chunk = buffer[offset : offset + window]
            if len(chunk) < window:
                chunk = np.concatenate([chunk, np.zeros(window - len(chunk), dtype=np.float32)])
            yield Window(
                index=emitted,
                start_s=next_start / sample_rate,
                end_s=(next_start + window) / sample_rate,
                samples=chunk,
            )
            emitted += 1


def write_audio(path: str | Path, samples: np.ndarray, sample_rate: int, block_s: float = 10.0) -> None:
    """Write mono float samples; OGG/FLAC are written in blocks (one large call can crash libsndfile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    suffix = path.suffix.lower()
    fmt = {".ogg": "OGG", ".oga": "OGG", ".flac": "FLAC", ".wav": "WAV", ".mp3": "MP3"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{path}: unsupported output extension {suffix!r}")
    subtype = {"OGG": "VORBIS", "FLAC": "PCM_16", "WAV": "PCM_16", "MP3": "MPEG_LAYER_III"}[fmt]
    block = max(1, int(block_s * sample_rate))
    with sf.SoundFile(
        str(path), "w", samplerate=sample_rate, channels=1, format=fmt, subtype=subtype
    ) as handle:
        for begin in range(0, len(samples), block):
            handle.write(samples[begin : begin + block])


def find_audio_files(root: str | Path) -> list[Path]:
    """All audio files under ``root`` (recursive), sorted, by extension."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
