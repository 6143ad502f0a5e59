"""The prediction pipeline both runners share: decode -> batch -> classify -> order -> table.

A decoding thread (:func:`prefetched`) streams each :class:`~dawnchorus.inference.windows.Segment`
window by window (soundfile, soxr) into batches (:func:`batches`), at most a few batches ahead;
``lanes`` threads each turn a batch into log-mel spectrograms and probabilities (a
:class:`~dawnchorus.inference.engines.StagedBatchFunction`: one single-threaded engine call per lane
keeps every core busy without intra-op synchronisation; soundfile, soxr, torch and onnxruntime
release the GIL); the caller's thread puts the batches back in order and builds each segment's
window table (:func:`window_table`). Memory is bounded by the batches in flight whatever the
recording length. :func:`iter_predictions` is the whole pipeline; the single-process runner feeds it
every segment of a run, a Dask task one chunk.

Choosing and building engines is ``engines.py``'s job; planning segments ``windows.py``'s; writing
files the runners'.
"""

from __future__ import annotations

import collections
import ctypes
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dawnchorus.errors import PredictionError
from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE, BatchFunction, StagedBatchFunction
from dawnchorus.inference.windows import Segment
from dawnchorus.io.audio import AudioError, info, iter_windows

# glibc malloc: blocks below this come from the heap and are reused, and free heap is kept. By
# default blocks above 32 MB (and in dask workers, which start with MALLOC_TRIM_THRESHOLD_=65536,
# above 128 KiB) are mmapped, page-faulted and unmapped again for every batch. Measured here
# (efficientnet_b0): dask tasks 3.2 -> 1.9 CPU-s per 5 min of audio; single process 2-5 % faster.
MALLOC_THRESHOLD_BYTES = 256 << 20


@dataclass
class RecordingResult:
    """Per-window probabilities of one recording, or why it failed."""

    path: Path
    frame: pd.DataFrame | None
    duration_s: float
    error: str | None = None
    segment: Segment | None = None  # set when the result covers one segment of several only


@dataclass
class RunTally:
    """What a run over many recordings did so far: failures, audio seconds, windows, recordings done."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    windows: int = 0
    done: int = 0


def consume_results(
    results: Iterable[RecordingResult],
    last_segment: dict[Path, Segment | None],
    finish_whole: Callable[[RecordingResult], None],
    save_segment: Callable[[RecordingResult], None],
    finish_assembled: Callable[[Path], None],
    tally: RunTally,
    progress: Callable[[RecordingResult, int, int], None] | None = None,
    total: int = 0,
) -> None:
    """Hand each result of :func:`iter_predictions` to the runner that saves it, in one way for every
    runner (predict, embed): a failed recording is counted once (its later segments are dropped); a
    whole recording goes to ``finish_whole``; a segment to ``save_segment``, and after the recording's
    ``last_segment`` to ``finish_assembled(path)``. Finishers count ``tally.done`` themselves;
    ``progress(result, tally.done, total)`` follows every result."""
    failed_paths: set[Path] = set()
    for result in results:
        if result.path in failed_paths:
            continue  # a later segment of a recording that already failed
        if result.error is not None:
            tally.failed.append((str(result.path), result.error))
            failed_paths.add(result.path)
            tally.done += 1
        else:
            tally.audio_seconds += result.duration_s
            tally.windows += len(result.frame)
            if result.segment is None:
                finish_whole(result)
            else:
                save_segment(result)
                if result.segment.index == last_segment[result.path].index:
                    finish_assembled(result.path)
        if progress is not None:
            progress(result, tally.done, total)


@dataclass
class Batch:
    """A batch of windows of one segment (start/end in seconds, rounded to the millisecond), or the
    end or failure of that segment."""

    segment: Segment
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    inputs: Any = None  # the batch: audio (B, T), or what a StagedBatchFunction prepared from it
    last: bool = False
    error: str | None = None
    duration_s: float = 0.0


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
    :class:`StagedBatchFunction` is pipelined as its docstring says. A recording that cannot be read
    gives a result with ``error`` set; a failure of the batch function's ``prepare`` stage (an engine
    problem, not a recording's) is raised. A :class:`Segment` among ``paths`` yields the table of its
    windows only, with ``result.segment`` set when it is one part of several.
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
    decoded = _segment_batches(segments, sample_rate, clip_s, hop_s, batch_size, prepare_while_decoding)
    starts: list[float] = []
    ends: list[float] = []
    probs: list[np.ndarray] = []
    for batch, batch_probs in _classify_in_order(prefetched(decoded, prefetch), stages):
        part_of = None if batch.segment.count == 1 else batch.segment
        if batch.error is not None:
            starts, ends, probs = [], [], []
            yield RecordingResult(batch.segment.path, None, 0.0, batch.error, segment=part_of)
            continue
        if batch_probs is not None:
            probs.append(batch_probs)
            starts.extend(batch.starts)
            ends.extend(batch.ends)
        if batch.last:
            frame = window_table(batch.segment.path, starts, ends, probs, labels)
            starts, ends, probs = [], [], []
            yield RecordingResult(batch.segment.path, frame, batch.duration_s, segment=part_of)


def batches(
    windows: Iterable[Any], batch_size: int, prepare: Callable[[np.ndarray], Any] | None = None
) -> Iterator[tuple[list[float], list[float], Any]]:
    """Group windows into ``(starts, ends, inputs)`` batches of ``batch_size`` (the last may be
    smaller): start/end rounded to the millisecond, inputs the stacked samples or what ``prepare``
    makes of them. A failure in ``prepare`` is raised as :class:`PrepareFailed`."""
    starts: list[float] = []
    ends: list[float] = []
    pieces: list[np.ndarray] = []
    for window in windows:
        starts.append(round(window.start_s, 3))
        ends.append(round(window.end_s, 3))
        pieces.append(window.samples)
        if len(pieces) == batch_size:
            yield starts, ends, _stack(pieces, prepare)
            starts, ends, pieces = [], [], []
    if pieces:
        yield starts, ends, _stack(pieces, prepare)


class PrepareFailed(Exception):
    """The batch function's ``prepare`` stage failed: an engine problem, not a bad recording. The
    original exception is its ``__cause__``."""


_END = object()


def prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """The items of ``items``, produced in a background thread at most ``depth`` ahead.

    Decoding (soundfile, soxr) and torch release the GIL, so producing the next batch overlaps
    classifying this one. An exception in the producer is raised here; leaving early stops it.
    """
    pending: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                pending.put(item)
            pending.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            pending.put(exc)

    producer = threading.Thread(target=produce, daemon=True, name="dawnchorus-decoder")
    producer.start()
    try:
        while (item := pending.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop_producer(producer, pending, stop)


def stop_producer(producer: threading.Thread, items: queue.Queue, stop: threading.Event) -> None:
    """Ask a producer thread to stop, and drain its queue until it has (it may be blocked on a put)."""
    stop.set()
    while producer.is_alive():
        try:
            items.get_nowait()
        except queue.Empty:
            producer.join(timeout=0.05)


def window_table(
    path: Path, starts: list[float], ends: list[float], probs: list[np.ndarray], labels: Sequence[str]
) -> pd.DataFrame:
    """The table of a recording's windows: ``file`` (``path`` as given), ``start_s``, ``end_s``, one
    float32 probability column per label."""
    values = np.concatenate(probs) if probs else np.zeros((0, len(labels)), dtype=np.float32)
    frame = pd.DataFrame(values.astype(np.float32), columns=list(labels))
    frame.insert(0, "end_s", np.asarray(ends, dtype=np.float64))
    frame.insert(0, "start_s", np.asarray(starts, dtype=np.float64))
    frame.insert(0, "file", str(path))
    return frame


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


# --- helpers -----------------------------------------------------------------------------------------


def _stack(pieces: list[np.ndarray], prepare: Callable[[np.ndarray], Any] | None) -> Any:
    stacked = np.stack(pieces)
    if prepare is None:
        return stacked
    try:
        return prepare(stacked)
    except Exception as exc:
        raise PrepareFailed(str(exc)) from exc


def _segment_batches(
    segments: Iterable[Segment],
    sample_rate: int,
    clip_s: float,
    hop_s: float,
    batch_size: int,
    prepare: Callable[[np.ndarray], Any] | None,
) -> Iterator[Batch]:
    """Each segment's batches, then its end; a recording that cannot be decoded ends its segment with
    the reason (one bad file must not end a long run), a failure of ``prepare`` is raised."""
    for segment in segments:
        try:
            duration = segment.seconds(info(segment.opened).duration_s, hop_s)
            windows = iter_windows(segment.opened, sample_rate, clip_s, hop_s,
                                   first_window=segment.first_window, max_windows=segment.max_windows)
            ended = False
            for starts, ends, inputs in batches(windows, batch_size, prepare):
                ended = len(starts) < batch_size  # only the last batch can be short: it ends the segment
                yield Batch(segment, starts, ends, inputs, last=ended, duration_s=duration if ended else 0.0)
            if not ended:
                yield Batch(segment, last=True, duration_s=duration)
        except PrepareFailed as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except AudioError as exc:
            yield Batch(segment, last=True, error=exc.reason)
        except Exception as exc:  # noqa: BLE001 - one bad file must not end a long run
            yield Batch(segment, last=True, error=f"{type(exc).__name__}: {exc}")


def _classify_in_order(
    items: Iterator[Batch], stages: StagedBatchFunction
) -> Iterator[tuple[Batch, np.ndarray | None]]:
    """Each batch with its probabilities, in order; up to ``stages.lanes`` batches in flight."""
    if stages.lanes == 1:
        for batch in items:
            yield batch, None if batch.inputs is None else stages.classify(batch.inputs)
        return
    pending: collections.deque[tuple[Batch, Future | None]] = collections.deque()
    with ThreadPoolExecutor(stages.lanes, thread_name_prefix="dawnchorus-lane") as lanes:
        try:
            for batch in items:
                work = None if batch.inputs is None else lanes.submit(stages, batch.inputs)
                pending.append((batch, work))
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
