"""Which windows of which recordings a prediction run covers, and how they are split up.

Owns the inputs (:func:`expand_inputs`: files, folders, lists -> recordings), a recording's output
name (:func:`recording_key`), the one window-range type (:class:`Segment`: a whole recording, one
checkpointed segment of a long one, or one Dask chunk) and the plan of a recording
(:class:`RecordingPlan`: its window count, duration and segments, from the header alone). The
single-process runner checkpoints long recordings in segments and the Dask runner predicts them in
parallel chunks: both are segments planned here, with the same rule (:func:`windows_per_segment`).
Decoding, batching and classifying belong to ``pipeline.py``; nothing here reads samples.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dawnchorus.errors import PredictionError
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, info, window_count


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive) and text files listing paths (one per line, # comments) -> recordings.

    Missing paths are kept: reading them fails later and is reported per file like any bad recording.
    What a folder holds but cannot be read (a broken symbolic link, a subfolder that cannot be
    listed) is left out here: :func:`find_recordings` names it.
    """
    return find_recordings(inputs).recordings


@dataclass(frozen=True)
class FoundInputs:
    """The recordings the inputs hold, and what was seen among them but cannot be read, with why."""

    recordings: list[Path]
    unreadable: list[tuple[Path, str]]


def find_recordings(inputs: Sequence[str | Path]) -> FoundInputs:
    """:func:`expand_inputs`, plus every path seen that cannot be read: a broken symbolic link (inside
    a folder, in a list, or given), an audio-named entry that is not a regular file, a folder that
    cannot be listed. A run reports each of them (``errors.csv``) instead of skipping it silently."""
    found: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(_walk_recordings(item, unreadable))
        elif item.suffix.lower() in {".txt", ".lst", ".list"} and item.is_file():
            base = item.parent
            for line in item.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    path = Path(line)
                    found.append(path if path.is_absolute() else base / path)
        else:
            found.append(item)
    unique: dict[str, Path] = {}
    for path in found:
        if path.is_symlink() and not path.exists():
            unreadable.append((path, _broken_link(path)))
        else:
            unique.setdefault(str(path.resolve()), path)
    return FoundInputs(list(unique.values()), unreadable)


def recording_key(path: Path) -> str:
    """A file-system-safe, collision-free name for a recording's outputs."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.stem}-{digest}"


@dataclass(frozen=True)
class Segment:
    """Windows ``first_window`` .. ``first_window + max_windows - 1`` of a recording (``max_windows``
    None: to its end); segment ``index`` of the ``count`` a recording is split into.

    ``path`` is the recording as the user gave it (the ``file`` column of every table); ``source``,
    when set, is what is opened instead (Dask workers open the absolute path).
    """

    path: Path
    first_window: int = 0
    max_windows: int | None = None
    index: int = 0
    count: int = 1
    source: Path | None = None

    @property
    def opened(self) -> Path:
        """The file decoding reads."""
        return self.source if self.source is not None else self.path

    def seconds(self, duration_s: float, hop_s: float) -> float:
        """Seconds of a ``duration_s`` recording whose windows start in this segment."""
        start = self.first_window * hop_s
        end = duration_s if self.max_windows is None else (self.first_window + self.max_windows) * hop_s
        return max(0.0, min(end, duration_s) - min(start, duration_s))


@dataclass(frozen=True)
class RecordingPlan:
    """One recording to predict: its output key, length, and the segments its windows are split into
    (one whole-recording segment when it is short)."""

    path: Path  # as the user gave it: the ``file`` column of the outputs
    key: str
    duration_s: float
    windows: int
    segments: tuple[Segment, ...]

    @property
    def split(self) -> bool:
        """Whether the recording is predicted in more than one segment."""
        return len(self.segments) > 1


def chunk_ranges(windows: int, windows_per_chunk: int) -> tuple[tuple[int, int | None], ...]:
    """Split ``windows`` windows into consecutive ranges; the last one runs to the end of the file."""
    if windows_per_chunk < 1:
        raise ValueError(f"windows_per_chunk must be >= 1, got {windows_per_chunk}")
    firsts = list(range(0, max(windows, 1), windows_per_chunk))
    return tuple((first, windows_per_chunk) for first in firsts[:-1]) + ((firsts[-1], None),)


def windows_per_segment(segment_s: float, hop_s: float, batch_size: int) -> int:
    """Window starts in ``segment_s`` seconds, rounded down to whole batches when there is more than
    one: every batch then holds the windows an unsplit run batches together, so the probabilities
    are bit-for-bit the same (no resampling involved)."""
    count = max(1, int(segment_s // hop_s))
    return count - count % batch_size if count >= batch_size else count


def windows_in(path: Path, sample_rate: int, clip_s: float, hop_s: float) -> tuple[int, float]:
    """(windows a run over ``path`` yields, its duration in seconds), from the header alone."""
    header = info(path)
    expected = int(round(header.frames * sample_rate / header.sample_rate))
    windows = window_count(expected, int(round(clip_s * sample_rate)), int(round(hop_s * sample_rate)))
    return windows, header.duration_s


def plan_recording(
    path: Path, sample_rate: int, clip_s: float, hop_s: float, segment_s: float, batch_size: int,
    absolute: bool = False,
) -> RecordingPlan:
    """Read ``path``'s header and split its windows into segments of ``segment_s`` seconds (see
    :func:`windows_per_segment`); ``absolute``: segments open the absolute path. Raises
    :class:`AudioError` for an unusable header."""
    windows, duration_s = windows_in(path, sample_rate, clip_s, hop_s)
    ranges = chunk_ranges(windows, windows_per_segment(segment_s, hop_s, batch_size))
    source = path.resolve() if absolute else None
    segments = tuple(
        Segment(path, first, count, index, len(ranges), source) for index, (first, count) in enumerate(ranges)
    )
    return RecordingPlan(path, recording_key(path), duration_s, windows, segments)


def whole_recording(path: Path) -> RecordingPlan:
    """The plan of a recording whose header cannot be read: one segment, which decoding then fails
    with the reason."""
    return RecordingPlan(path, recording_key(path), 0.0, 0, (Segment(path),))


def plan_recordings(
    paths: Sequence[Path],
    sample_rate: int,
    clip_s: float,
    hop_s: float,
    segment_s: float,
    batch_size: int = 1,
    readers: int = 16,
    absolute: bool = False,
) -> tuple[list[RecordingPlan], list[tuple[Path, str]]]:
    """:func:`plan_recording` for every path, headers read in ``readers`` threads.

    Returns the plans (in the order of ``paths``) and the recordings whose header is unusable, with
    the reason.
    """
    if segment_s <= 0:
        raise PredictionError(f"chunk length must be positive, got {segment_s} s")

    def plan(path: Path) -> RecordingPlan | tuple[Path, str]:
        try:
            return plan_recording(path, sample_rate, clip_s, hop_s, segment_s, batch_size, absolute)
        except AudioError as exc:
            return path, exc.reason

    with ThreadPoolExecutor(max(1, readers)) as pool:
        planned = list(pool.map(plan, paths))
    plans = [p for p in planned if isinstance(p, RecordingPlan)]
    failed = [p for p in planned if not isinstance(p, RecordingPlan)]
    return plans, failed


def _walk_recordings(folder: Path, unreadable: list[tuple[Path, str]]) -> list[Path]:
    """The audio files under ``folder`` (recursive, symbolic links to folders not followed), sorted;
    audio-named entries that are no regular file, and folders that cannot be listed, go to
    ``unreadable`` with the reason."""
    found: list[Path] = []

    def cannot_list(exc: OSError) -> None:
        reason = f"folder cannot be read ({(exc.strerror or str(exc)).lower()}): its recordings were left out"
        unreadable.append((Path(exc.filename or folder), reason))

    for root, _, names in os.walk(folder, onerror=cannot_list):
        for name in names:
            path = Path(root) / name
            if path.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            if path.is_file():
                found.append(path)
            elif path.is_symlink() and not path.exists():
                found.append(path)  # named by find_recordings with the other broken links
            else:
                unreadable.append((path, "not a regular file"))
    return sorted(found)


def _broken_link(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "broken symbolic link: its target does not exist"
    return f"broken symbolic link: its target {target} does not exist"
