"""Windowed batch inference over long recordings.

The pipeline: a decoding thread streams each recording window by window (soundfile, soxr) into
batches, at most a few batches ahead; ``lanes`` threads each turn a batch into log-mel spectrograms
and probabilities (a :class:`StagedBatchFunction`: one single-threaded engine call per lane keeps
every core busy without intra-op synchronisation; soundfile, soxr, torch and onnxruntime release the
GIL); the caller's thread puts the batches back in order and writes outputs. Memory is bounded by
the batches in flight whatever the recording length. :func:`run_prediction` writes each
recording's outputs atomically as soon as it is done, so an interrupted run resumes where it
stopped. The engines (eager torch, onnxruntime) are chosen by
:func:`dawnchorus.inference.engines.batch_function_for`.
"""

from __future__ import annotations

import collections
import ctypes
import glob
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dawnchorus.errors import PredictionError
from dawnchorus.inference.engines import (
    DEFAULT_BATCH_SIZE,
    BatchFunction,
    StagedBatchFunction,
    batch_function_for,
    torch_threads_kept,
)
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, info, iter_windows, window_count
from dawnchorus.io.files import atomic_write, remove_stale_temporaries

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

OUTPUT_FORMATS = ("csv", "parquet", "birdclef", "raven", "audacity")


# --- inputs --------------------------------------------------------------------------------------


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive) and text files listing paths (one per line, # comments) -> recordings.

    Missing paths are kept: reading them fails later and is reported per file like any bad recording.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(
                sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            )
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
        unique.setdefault(str(path.resolve()), path)
    return list(unique.values())


def recording_key(path: Path) -> str:
    """A file-system-safe, collision-free name for a recording's outputs."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.stem}-{digest}"


def chunk_ranges(windows: int, windows_per_chunk: int) -> tuple[tuple[int, int | None], ...]:
    """Split ``windows`` windows into consecutive ranges; the last one runs to the end of the file."""
    if windows_per_chunk < 1:
        raise ValueError(f"windows_per_chunk must be >= 1, got {windows_per_chunk}")
    firsts = list(range(0, max(windows, 1), windows_per_chunk))
    return tuple((first, windows_per_chunk) for first in firsts[:-1]) + ((firsts[-1], None),)


def windows_per_chunk(chunk_s: float, hop_s: float, batch_size: int) -> int:
    """Window starts in ``chunk_s`` seconds, rounded down to whole batches when there is more than
    one: every batch then holds the windows an unsplit run batches together, so the probabilities
    are bit-for-bit the same (no resampling involved)."""
    count = max(1, int(chunk_s // hop_s))
    return count - count % batch_size if count >= batch_size else count


def windows_in(path: Path, sample_rate: int, clip_s: float, hop_s: float) -> tuple[int, float]:
    """(windows a run over ``path`` yields, its duration in seconds), from the header alone."""
    header = info(path)
    expected = int(round(header.frames * sample_rate / header.sample_rate))
    windows = window_count(expected, int(round(clip_s * sample_rate)), int(round(hop_s * sample_rate)))
    return windows, header.duration_s


@dataclass(frozen=True)
class Segment:
    """Windows ``first_window`` .. ``first_window + max_windows - 1`` of a recording (``max_windows``
    None: to its end); segment ``index`` of the ``count`` a long recording is checkpointed in."""

    path: Path
    first_window: int = 0
    max_windows: int | None = None
    index: int = 0
    count: int = 1


@dataclass
class _Chunk:
    """A batch of windows of one recording segment, or the end/failure of that segment."""

    segment: Segment
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    audio: Any = None  # the batch: audio (B, T), or what a StagedBatchFunction prepared from it
    last: bool = False
    error: str | None = None
    duration_s: float = 0.0
    fatal: BaseException | None = None  # a failure of the engine, not of the recording: ends the run

    @property
    def path(self) -> Path:
        return self.segment.path


class _PrepareFailed(Exception):
    """The batch function's ``prepare`` stage failed: an engine problem, not a bad recording."""


def _produce(
    segments: Iterable[Segment],
    sample_rate: int,
    clip_s: float,
    hop_s: float,
    batch_size: int,
    out: queue.Queue,
    stop: threading.Event,
    prepare: Callable[[np.ndarray], Any] | None = None,
) -> None:
    """Decode, window and batch each segment (and ``prepare`` each batch), in a thread of its own."""

    def batch(pieces: list[np.ndarray]) -> Any:
        stacked = np.stack(pieces)
        if prepare is None:
            return stacked
        try:
            return prepare(stacked)
        except Exception as exc:
            raise _PrepareFailed(str(exc)) from exc

    for segment in segments:
        if stop.is_set():
            break
        path = segment.path
        try:
            duration = _segment_seconds(segment, info(path).duration_s, hop_s)
            starts, ends, pieces = [], [], []
            windows = iter_windows(path, sample_rate, clip_s, hop_s, first_window=segment.first_window,
                                   max_windows=segment.max_windows)
            for window in windows:
                starts.append(round(window.start_s, 3))
                ends.append(round(window.end_s, 3))
                pieces.append(window.samples)
                if len(pieces) == batch_size:
                    out.put(_Chunk(segment, starts, ends, batch(pieces)))
                    starts, ends, pieces = [], [], []
            audio = batch(pieces) if pieces else None
            out.put(_Chunk(segment, starts, ends, audio, last=True, duration_s=duration))
        except _PrepareFailed as exc:
            out.put(_Chunk(segment, last=True, fatal=exc.__cause__))
            return
        except AudioError as exc:
            out.put(_Chunk(segment, last=True, error=exc.reason))
        except Exception as exc:  # noqa: BLE001 - one bad file must not end a long run
            out.put(_Chunk(segment, last=True, error=f"{type(exc).__name__}: {exc}"))
    out.put(None)


def _segment_seconds(segment: Segment, duration_s: float, hop_s: float) -> float:
    """Seconds of the recording whose windows start in ``segment``."""
    start = segment.first_window * hop_s
    end = duration_s if segment.max_windows is None else (segment.first_window + segment.max_windows) * hop_s
    return max(0.0, min(end, duration_s) - min(start, duration_s))


@dataclass
class RecordingResult:
    """Per-window probabilities of one recording, or why it failed."""

    path: Path
    frame: pd.DataFrame | None
    duration_s: float
    error: str | None = None
    segment: Segment | None = None  # set when the result covers one checkpointed segment only


def iter_predictions(
    paths: Sequence[Path | Segment],
    batch_function: BatchFunction,
    labels: Sequence[str],
    sample_rate: int,
    clip_s: float,
    hop_s: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    prefetch: int = 4,
) -> Iterator[RecordingResult]:
    """Yield each recording's window table (file, start_s, end_s, labels...) as soon as it is done.

    Decoding runs in a background thread, at most ``prefetch`` batches ahead; a
    :class:`StagedBatchFunction` is pipelined as its docstring says. Memory stays bounded by the
    batches in flight whatever the recording length. A :class:`Segment` among ``paths`` yields the
    table of its windows only, with ``result.segment`` set when it is one part of several.
    """
    segments = [item if isinstance(item, Segment) else Segment(Path(item)) for item in paths]
    hop_s = clip_s if hop_s is None else hop_s
    if hop_s <= 0:
        raise PredictionError(f"hop must be positive, got {hop_s}")
    if batch_size < 1:
        raise PredictionError(f"batch size must be at least 1, got {batch_size}")
    stages = (
        batch_function
        if isinstance(batch_function, StagedBatchFunction)
        else StagedBatchFunction(prepare=None, classify=batch_function)
    )
    # One lane: prepare in the decoding thread. Several: each lane prepares its own batch.
    prepare_while_decoding = stages.prepare if stages.lanes == 1 else None
    chunks: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    producer = threading.Thread(
        target=_produce,
        args=(segments, sample_rate, clip_s, hop_s, batch_size, chunks, stop, prepare_while_decoding),
        daemon=True,
        name="dawnchorus-decoder",
    )
    producer.start()
    starts: list[float] = []
    ends: list[float] = []
    probs: list[np.ndarray] = []
    try:
        for chunk, chunk_probs in _classify_in_order(_drain(chunks), stages):
            part_of = None if chunk.segment.count == 1 else chunk.segment
            if chunk.error is not None:
                starts, ends, probs = [], [], []
                yield RecordingResult(chunk.path, None, 0.0, chunk.error, segment=part_of)
                continue
            if chunk_probs is not None:
                probs.append(chunk_probs)
                starts.extend(chunk.starts)
                ends.extend(chunk.ends)
            if chunk.last:
                frame = _window_frame(chunk.path, starts, ends, probs, labels)
                starts, ends, probs = [], [], []
                yield RecordingResult(chunk.path, frame, chunk.duration_s, segment=part_of)
    finally:
        stop_producer(producer, chunks, stop)


def stop_producer(producer: threading.Thread, items: queue.Queue, stop: threading.Event) -> None:
    """Ask a producer thread to stop, and drain its queue until it has (it may be blocked on a put)."""
    stop.set()
    while producer.is_alive():
        try:
            items.get_nowait()
        except queue.Empty:
            producer.join(timeout=0.05)


def _drain(chunks: queue.Queue) -> Iterator[_Chunk]:
    """The producer's chunks until its end marker; an engine failure there is raised here."""
    while (chunk := chunks.get()) is not None:
        if chunk.fatal is not None:
            raise chunk.fatal
        yield chunk


def _classify_in_order(
    chunks: Iterator[_Chunk], stages: StagedBatchFunction
) -> Iterator[tuple[_Chunk, np.ndarray | None]]:
    """Each chunk with its probabilities, in order; up to ``stages.lanes`` batches in flight."""
    if stages.lanes == 1:
        for chunk in chunks:
            yield chunk, None if chunk.audio is None else stages.classify(chunk.audio)
        return
    pending: collections.deque[tuple[_Chunk, Future | None]] = collections.deque()
    with ThreadPoolExecutor(stages.lanes, thread_name_prefix="dawnchorus-lane") as lanes:
        try:
            for chunk in chunks:
                work = None if chunk.audio is None else lanes.submit(stages, chunk.audio)
                pending.append((chunk, work))
                while len(pending) > stages.lanes:
                    done, work = pending.popleft()
                    yield done, None if work is None else work.result()
            while pending:
                done, work = pending.popleft()
                yield done, None if work is None else work.result()
        finally:
            for _, work in pending:
                if work is not None:
                    work.cancel()


def _window_frame(
    path: Path, starts: list[float], ends: list[float], probs: list[np.ndarray], labels: Sequence[str]
) -> pd.DataFrame:
    values = np.concatenate(probs) if probs else np.zeros((0, len(labels)), dtype=np.float32)
    frame = pd.DataFrame(values.astype(np.float32), columns=list(labels))
    frame.insert(0, "end_s", np.asarray(ends, dtype=np.float64))
    frame.insert(0, "start_s", np.asarray(starts, dtype=np.float64))
    frame.insert(0, "file", str(path))
    return frame


def predict_frame(
    model: LoadedModel,
    paths: Sequence[str | Path] | str | Path,
    hop_s: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | None = None,
    batch_function: BatchFunction | None = None,
    raise_errors: bool = True,
) -> pd.DataFrame:
    """Python API: per-window probabilities indexed by (file, start_s, end_s)."""
    if isinstance(paths, str | Path):
        paths = [paths]
    recordings = expand_inputs(paths)
    frames = []
    with torch_threads_kept():
        run = batch_function or batch_function_for(model, "torch", device=device, batch_size=batch_size)
        for result in iter_predictions(
            recordings,
            run,
            model.labels,
            model.config.audio.sample_rate,
            model.config.audio.clip_s,
            hop_s,
            batch_size,
        ):
            if result.error is not None:
                if raise_errors:
                    raise AudioError(result.path, result.error)
                continue
            frames.append(result.frame)
    columns = ["file", "start_s", "end_s", *model.labels]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table.set_index(["file", "start_s", "end_s"])


# glibc malloc: blocks below this come from the heap and are reused, and free heap is kept. By
# default blocks above 32 MB (and in dask workers, which start with MALLOC_TRIM_THRESHOLD_=65536,
# above 128 KiB) are mmapped, page-faulted and unmapped again for every batch. Measured here
# (efficientnet_b0): dask tasks 3.2 -> 1.9 CPU-s per 5 min of audio; single process 2-5 % faster.
MALLOC_THRESHOLD_BYTES = 256 << 20


def reuse_large_allocations() -> bool:
    """Let glibc keep and reuse batch-sized blocks (``mallopt``); False where that is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim, mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD in malloc.h
        return bool(libc.mallopt(mmap, MALLOC_THRESHOLD_BYTES)) and bool(
            libc.mallopt(trim, MALLOC_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator alone
        return False


# --- the run that writes files ---------------------------------------------------------------------


@dataclass
class PredictionSummary:
    """What a prediction run did."""

    out_dir: Path
    recordings: int
    predicted: int
    skipped: int
    failed: list[tuple[str, str]]
    audio_seconds: float
    wall_seconds: float
    windows: int
    outputs: dict[str, Path]

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def parse_formats(formats: Sequence[str] | str) -> list[str]:
    """Output format names from a list or a comma-separated string; unknown names raise
    :class:`PredictionError`."""
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown:
        raise PredictionError(
            f"unknown output format(s) {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}"
        )
    return list(formats)


# Long recordings are predicted in segments of this many seconds, each saved as soon as it is done.
CHECKPOINT_S = 3600.0


def saved_windows_path(parts_dir: Path, key: str, hop_s: float, first: int, count: int | None) -> Path:
    """Where windows ``first`` .. ``first + count - 1`` of recording ``key`` wait for the rest of it.

    The name holds the hop and the range, so a run resumed with other settings (hop, batch size,
    checkpoint or chunk length) never mixes its windows with these: it computes its own.
    """
    span = "end" if count is None else str(count)
    return parts_dir / f"{key}.windows-hop{round(hop_s * 1000)}ms-{first:07d}-{span}.parquet"


def remove_saved_windows(parts_dir: Path, key: str) -> None:
    """Called once the recording's part exists: until then a re-run still finds its saved windows."""
    for saved in parts_dir.glob(f"{glob.escape(key)}.windows-hop*ms-*.parquet"):
        saved.unlink(missing_ok=True)


@dataclass
class _SegmentPlan:
    path: Path
    hop_s: float
    segments: list[Segment]  # one whole-recording segment, or the checkpointed ones
    to_run: list[Segment]
    duration_s: float

    def saved(self, parts_dir: Path, segment: Segment) -> Path:
        key = recording_key(self.path)
        return saved_windows_path(parts_dir, key, self.hop_s, segment.first_window, segment.max_windows)


def _plan_segments(
    path: Path, parts_dir: Path, sample_rate: int, clip_s: float, hop_s: float, checkpoint_s: float,
    batch_size: int,
) -> _SegmentPlan:
    """The segments of ``path`` still to predict (see :func:`windows_per_chunk` for their length)."""
    try:
        windows, duration = windows_in(path, sample_rate, clip_s, hop_s)
    except AudioError:
        return _SegmentPlan(path, hop_s, [Segment(path)], [Segment(path)], 0.0)  # decoding names it
    ranges = chunk_ranges(windows, windows_per_chunk(checkpoint_s, hop_s, batch_size))
    if len(ranges) == 1:
        return _SegmentPlan(path, hop_s, [Segment(path)], [Segment(path)], duration)
    segments = [
        Segment(path, first, count, index, len(ranges)) for index, (first, count) in enumerate(ranges)
    ]
    plan = _SegmentPlan(path, hop_s, segments, [], duration)
    plan.to_run = [s for s in segments if not plan.saved(parts_dir, s).is_file()]
    return plan


def _assemble(plan: _SegmentPlan, parts_dir: Path) -> RecordingResult:
    """The whole recording's result from its saved segments."""
    from dawnchorus.io import outputs

    pieces = [outputs.read_probabilities(plan.saved(parts_dir, s)) for s in plan.segments]
    return RecordingResult(plan.path, pd.concat(pieces, ignore_index=True), plan.duration_s)


def run_prediction(
    model: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    hop_s: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threshold: float | None = None,
    formats: Sequence[str] | str = OUTPUT_FORMATS,
    merge_detections: bool = False,
    batch_function: BatchFunction | None = None,
    device: str | None = None,
    progress: Callable[[RecordingResult, int, int], None] | None = None,
    checkpoint_s: float = CHECKPOINT_S,
) -> PredictionSummary:
    """Predict every recording and write the requested outputs under ``out_dir``.

    Each recording's window table goes to ``out_dir/parts/<key>.parquet`` (atomically) the moment
    it is done, with its Raven/Audacity files; recordings with a part are skipped on a re-run. A
    recording longer than ``checkpoint_s`` is predicted in segments of that length, each saved as it
    is done (see :func:`saved_windows_path`), so a re-run after an interruption recomputes at most one
    segment. The combined tables (CSV, Parquet, BirdCLEF submissions) are rebuilt from the parts at
    the end. ``progress(result, recordings_done, recordings_total)`` is called after each recording
    and each segment.
    """
    from dawnchorus.io import outputs

    wanted = parse_formats(formats)
    out_dir = Path(out_dir)
    parts_dir = out_dir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(parts_dir)  # left by a run killed mid-write
    recordings = expand_inputs(inputs)
    if not recordings:
        raise PredictionError("no recordings found in the given inputs")
    thresholds = (
        model.class_thresholds if threshold is None else np.full(len(model.labels), threshold, np.float32)
    )
    todo = [p for p in recordings if not (parts_dir / f"{recording_key(p)}.parquet").is_file()]
    skipped = len(recordings) - len(todo)
    failed: list[tuple[str, str]] = []
    audio_seconds = 0.0
    windows = 0
    started = time.perf_counter()
    clip_s, sample_rate = model.config.audio.clip_s, model.config.audio.sample_rate
    hop = clip_s if hop_s is None else hop_s
    if hop <= 0:
        raise PredictionError(f"hop must be positive, got {hop_s}")
    if checkpoint_s <= 0:
        raise PredictionError(f"checkpoint length must be positive, got {checkpoint_s} s")
    plans = [_plan_segments(p, parts_dir, sample_rate, clip_s, hop, checkpoint_s, batch_size) for p in todo]
    done = 0

    def finish(result: RecordingResult, plan: _SegmentPlan) -> None:
        nonlocal done
        write_recording(result, model, thresholds, out_dir, wanted, merge_detections)
        if len(plan.segments) > 1:
            remove_saved_windows(parts_dir, recording_key(result.path))
        done += 1

    for plan in plans:  # every segment saved by an interrupted run: only the assembly is left
        if not plan.to_run:
            finish(_assemble(plan, parts_dir), plan)
    reuse_large_allocations()
    with torch_threads_kept():
        run = batch_function or batch_function_for(model, "torch", device=device, batch_size=batch_size)
        segments = [segment for plan in plans for segment in plan.to_run]
        by_path = {plan.path: plan for plan in plans}
        failed_paths: set[Path] = set()
        for result in iter_predictions(segments, run, model.labels, sample_rate, clip_s, hop, batch_size):
            if result.path in failed_paths:
                continue  # a later segment of a recording that already failed
            if result.error is not None:
                failed.append((str(result.path), result.error))
                failed_paths.add(result.path)
                done += 1
            else:
                audio_seconds += result.duration_s
                windows += len(result.frame)
                plan = by_path[result.path]
                if result.segment is None:
                    finish(result, plan)
                else:
                    outputs.write_probabilities_parquet(result.frame, plan.saved(parts_dir, result.segment))
                    if result.segment.index == plan.to_run[-1].index:
                        finish(_assemble(plan, parts_dir), plan)
            if progress is not None:
                progress(result, done, len(todo))
    written = write_combined(model, recordings, out_dir, thresholds, wanted)
    error_file = out_dir / "errors.csv"
    atomic_write(
        error_file, lambda tmp: pd.DataFrame(failed, columns=["file", "error"]).to_csv(tmp, index=False)
    )
    written["errors"] = error_file
    wall = time.perf_counter() - started  # end to end: decoding to the last combined table
    return PredictionSummary(
        out_dir=out_dir,
        recordings=len(recordings),
        predicted=len(todo) - len(failed),
        skipped=skipped,
        failed=failed,
        audio_seconds=audio_seconds,
        wall_seconds=wall,
        windows=windows,
        outputs=written,
    )


def write_recording(
    result: RecordingResult,
    model: LoadedModel,
    thresholds: np.ndarray,
    out_dir: Path,
    formats: list[str],
    merge: bool,
) -> None:
    """Write one recording's files: Raven/Audacity detections, then its part (which marks it done)."""
    from dawnchorus.io import outputs

    key = recording_key(result.path)
    if "raven" in formats or "audacity" in formats:
        found = outputs.detections(result.frame, model.labels, thresholds, merge=merge)
        if "raven" in formats:
            outputs.write_raven_table(found, out_dir / "raven" / f"{key}.selections.txt")
        if "audacity" in formats:
            outputs.write_audacity_labels(found, out_dir / "audacity" / f"{key}.txt")
    # The part is written last: its presence marks the recording complete.
    outputs.write_probabilities_parquet(result.frame, out_dir / "parts" / f"{key}.parquet")


def write_combined(
    model: LoadedModel, recordings: Sequence[Path], out_dir: Path, thresholds: np.ndarray, formats: list[str]
) -> dict[str, Path]:
    """Rebuild the combined tables (CSV, Parquet, BirdCLEF submissions) from the parts of ``recordings``."""
    from dawnchorus.io import outputs

    parts = [out_dir / "parts" / f"{recording_key(p)}.parquet" for p in recordings]
    frames = [outputs.read_probabilities(p) for p in parts if p.is_file()]
    columns = ["file", "start_s", "end_s", *model.labels]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    written: dict[str, Path] = {}
    if "csv" in formats:
        written["csv"] = out_dir / "predictions.csv"
        outputs.write_probabilities_csv(table, written["csv"])
    if "parquet" in formats:
        written["parquet"] = out_dir / "predictions.parquet"
        outputs.write_probabilities_parquet(table, written["parquet"])
    if "birdclef" in formats:
        scored = model.scored_labels or model.labels
        index = [model.labels.index(label) for label in scored]
        sub22 = outputs.birdclef2022_submission(table, scored, thresholds[index])
        sub23 = outputs.birdclef2023_submission(table, model.labels)
        written["birdclef2022"] = out_dir / "submission_2022.csv"
        written["birdclef2023"] = out_dir / "submission_2023.csv"
        atomic_write(written["birdclef2022"], lambda tmp: sub22.to_csv(tmp, index=False))
        atomic_write(written["birdclef2023"], lambda tmp: sub23.to_csv(tmp, index=False))
    if "raven" in formats:
        written["raven"] = out_dir / "raven"
    if "audacity" in formats:
        written["audacity"] = out_dir / "audacity"
    return written


def describe(summary: PredictionSummary) -> dict[str, Any]:
    """A JSON-friendly summary of a prediction run."""
    return {
        "recordings": summary.recordings,
        "predicted": summary.predicted,
        "skipped_complete": summary.skipped,
        "failed": len(summary.failed),
        "audio_hours": round(summary.audio_seconds / 3600, 4),
        "wall_seconds": round(summary.wall_seconds, 2),
        "realtime_factor": round(summary.realtime_factor, 1),
        "windows": summary.windows,
    }


def labelled_soundscapes(
    folder: str | Path, labels_file: str | Path | None = None
) -> tuple[list[Path], Path]:
    """Recordings and label CSV of a labelled set: a BirdCLEF data set or a folder of soundscapes."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: labelled set not found")
    audio_dir = folder / "test_soundscapes" if (folder / "test_soundscapes").is_dir() else folder
    candidates = (
        [Path(labels_file)] if labels_file else [folder / "test_labels.csv", *sorted(folder.glob("*.csv"))]
    )
    label_path = next((p for p in candidates if p.is_file()), None)
    if label_path is None:
        raise FileNotFoundError(f"{folder}: no label CSV (test_labels.csv) found; pass --labels")
    recordings = expand_inputs([audio_dir])
    if not recordings:
        raise FileNotFoundError(f"{audio_dir}: no recordings found")
    return recordings, label_path


def tune_model_thresholds(
    model: LoadedModel,
    folder: str | Path,
    labels_file: str | Path | None = None,
    min_support: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, Any]:
    """Predict a labelled set, choose global and per-class F1-maximising thresholds, set them on ``model``.

    The caller saves the model (``model.save()``). Returns the thresholds and macro F1 before/after.
    """
    from dawnchorus.evaluate.metrics import (
        align_predictions,
        birdclef2022_score,
    )
    from dawnchorus.evaluate.thresholds import tune_thresholds
    from dawnchorus.io.annotations import read_birdclef_labels

    recordings, label_path = labelled_soundscapes(folder, labels_file)
    table = predict_frame(model, recordings, batch_size=batch_size, raise_errors=False).reset_index()
    aligned, truth = align_predictions(table, read_birdclef_labels(label_path))
    y_score = aligned[model.labels].to_numpy(dtype=np.float64)
    y_true = np.column_stack(
        [
            truth[label].to_numpy() if label in truth.columns else np.zeros(len(truth))
            for label in model.labels
        ]
    ).astype(int)
    before = birdclef2022_score(y_true, (y_score >= model.class_thresholds[None, :]).astype(int))["f1_macro"]
    global_threshold, per_class = tune_thresholds(y_true, y_score, min_support=min_support)
    after = birdclef2022_score(y_true, (y_score >= per_class[None, :]).astype(int))["f1_macro"]
    model.thresholds = {"global": float(global_threshold), "per_class": [float(t) for t in per_class]}
    support = y_true.sum(axis=0)
    return {
        "global": float(global_threshold),
        "per_class": dict(zip(model.labels, map(float, per_class), strict=True)),
        "n_own": int((support >= min_support).sum()),
        "n_windows": int(len(y_true)),
        "f1_before": float(before),
        "f1_after": float(after),
        "labels_file": str(label_path),
    }
