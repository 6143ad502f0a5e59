"""Per-window embeddings of long recordings from a pretrained backbone (``dawnchorus embed``).

:func:`run_embedding` streams every recording through the prediction pipeline
(:func:`~dawnchorus.inference.pipeline.iter_predictions`: one decoding thread, bounded batches) with a
backbone of :mod:`dawnchorus.embed` in place of a classifier, and writes each recording's table
(``file, start_s, end_s, e0 .. e{D-1}``, float32) atomically the moment it is done, so a killed run
resumes where it stopped. Recordings longer than ``checkpoint_s`` are saved segment by segment, as
``predict`` does (windows planned by :mod:`dawnchorus.inference.windows`, saved-window names from
:mod:`dawnchorus.inference.run`). :func:`embedding_frame` is the in-memory variant.

The run folder::

    OUT/parts/<tag>/<recording>.parquet   one per recording; <tag> = backbone name, version, weights
                                          SHA-256 (12 digits), window, hop, pooling, sub-windows
    OUT/embeddings.parquet                every recording's windows, in input order (rebuilt at the end)
    OUT/embeddings.json                   the backbone record (BackboneInfo) and the settings
    OUT/errors.csv                        every recording that could not be read, with the reason

Parts are keyed by everything that changes them (the tag), never by the recording alone: a run with
another backbone, weights file, window, hop or pooling into the same folder computes its own parts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dawnchorus.embed.base import (
    POOLINGS,
    EmbeddingModel,
    Pooling,
    embedding_columns,
    sub_window_starts,
    window_embeddings,
)
from dawnchorus.errors import PredictionError
from dawnchorus.inference.pipeline import RecordingResult, RunTally, consume_results, iter_predictions
from dawnchorus.inference.postprocess import write_errors
from dawnchorus.inference.run import part_path, remove_saved_windows, saved_windows_path
from dawnchorus.inference.windows import (
    RecordingPlan,
    Segment,
    find_recordings,
    plan_recordings,
    recording_key,
    whole_recording,
)
from dawnchorus.io.audio import AudioError
from dawnchorus.io.files import atomic_write, atomic_write_text, output_folder, remove_stale_temporaries

EmbeddingProgress = Callable[[RecordingResult, int, int], None]

# Windows decoded per batch. BirdNET's throughput is flat from 8 windows per interpreter call up
# (measured 28-38 windows/s on this 2-core machine); the backbone splits larger calls itself.
DEFAULT_EMBED_BATCH = 16


@dataclass(frozen=True)
class EmbedSettings:
    """How windows are cut and pooled.

    ``window_s``: seconds per output row (None: the backbone's window); ``hop_s``: seconds between
    window starts (None: the window); ``pooling`` / ``sub_windows``: how a window longer than the
    backbone's is embedded (see :func:`dawnchorus.embed.base.window_embeddings`); ``batch_size``:
    windows decoded per batch; ``checkpoint_s``: longer recordings are saved segment by segment.
    """

    window_s: float | None = None
    hop_s: float | None = None
    pooling: Pooling = "mean"
    sub_windows: int | None = None
    batch_size: int = DEFAULT_EMBED_BATCH
    checkpoint_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("window_s", "hop_s", "checkpoint_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise PredictionError(f"{name.removesuffix('_s')} must be positive seconds, got {value}")
        if self.pooling not in POOLINGS:
            raise PredictionError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.batch_size < 1:
            raise PredictionError(f"batch size must be at least 1, got {self.batch_size}")
        if self.sub_windows is not None and self.sub_windows < 1:
            raise PredictionError(f"sub-windows must be at least 1, got {self.sub_windows}")

    def window_for(self, model: EmbeddingModel) -> float:
        """Seconds per output window with ``model``."""
        return float(model.window_s if self.window_s is None else self.window_s)

    def hop_for(self, model: EmbeddingModel) -> float:
        """Seconds between window starts with ``model``."""
        return self.window_for(model) if self.hop_s is None else float(self.hop_s)

    def sub_window_count(self, model: EmbeddingModel) -> int:
        """Backbone windows embedded per output window with ``model``."""
        return len(sub_window_starts(self.window_for(model), model.window_s, self.sub_windows))


@dataclass
class EmbeddingSummary:
    """What an embedding run did."""

    out_dir: Path
    table: Path
    recordings: int
    embedded: int
    skipped: int
    failed: list[tuple[str, str]]
    audio_seconds: float
    wall_seconds: float
    windows: int
    parts_dir: Path

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio embedded per second of wall time."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def run_tag(model: EmbeddingModel, settings: EmbedSettings) -> str:
    """The name of the parts folder of ``model`` with ``settings``: everything that changes a part."""
    window_ms = round(settings.window_for(model) * 1000)
    hop_ms = round(settings.hop_for(model) * 1000)
    return (
        f"{model.name}-{model.version}-{model.weights_sha256[:12]}-w{window_ms}ms-h{hop_ms}ms-"
        f"{settings.pooling}-n{settings.sub_window_count(model)}"
    )


def embedding_schema(size: int) -> pa.Schema:
    """The Arrow schema of an embedding table: file, start_s, end_s (float64), e0.. (float32)."""
    keys = [pa.field("file", pa.string()), pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())]
    return pa.schema(keys + [pa.field(column, pa.float32()) for column in embedding_columns(size)])


def batch_embedder(model: EmbeddingModel, settings: EmbedSettings) -> Callable[[np.ndarray], np.ndarray]:
    """The pipeline's batch function: audio windows ``(B, T)`` at the model's rate -> ``(B, D)``."""
    window_s = settings.window_for(model)

    def embed(batch: np.ndarray) -> np.ndarray:
        return window_embeddings(model, batch, window_s, settings.pooling, settings.sub_windows).embeddings

    return embed


def run_embedding(
    model: EmbeddingModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    settings: EmbedSettings | None = None,
    *,
    progress: EmbeddingProgress | None = None,
) -> EmbeddingSummary:
    """Embed every recording of ``inputs`` (files, folders, .txt lists) window by window into ``out_dir``.

    Each recording's table is written to ``out_dir/parts/<tag>/`` the moment it is done; recordings
    with a part are skipped on a re-run with the same backbone and settings. A recording that cannot
    be read is listed in ``errors.csv`` and the run goes on. ``progress(result, done, total)`` is called
    after each recording and each saved segment. Raises :class:`PredictionError` when the inputs hold
    no recording.
    """
    settings = settings or EmbedSettings()
    started = time.perf_counter()
    out_dir = output_folder(out_dir)
    parts_dir = output_folder(out_dir / "parts" / run_tag(model, settings), "folder of finished recordings")
    remove_stale_temporaries(parts_dir)  # left by a run killed mid-write
    found = find_recordings(inputs)  # broken links, unreadable folders: listed, never skipped silently
    recordings = found.recordings
    if not recordings and not found.unreadable:
        raise PredictionError("no recordings found in the given inputs")
    todo = [path for path in recordings if not part_path(parts_dir, recording_key(path)).is_file()]
    window_s, hop_s = settings.window_for(model), settings.hop_for(model)
    schema = embedding_schema(model.embedding_size)
    planned, _ = plan_recordings(
        todo, model.sample_rate, window_s, hop_s, settings.checkpoint_s, settings.batch_size
    )
    by_path = {plan.path: plan for plan in planned}
    plans = [by_path.get(path) or whole_recording(path) for path in todo]  # decoding names the problem
    by_path = {plan.path: plan for plan in plans}

    def saved(segment: Segment) -> Path:
        key = recording_key(segment.path)
        return saved_windows_path(parts_dir, key, hop_s, segment.first_window, segment.max_windows)

    to_run = {
        plan.path: [s for s in plan.segments if not plan.split or not saved(s).is_file()] for plan in plans
    }
    tally = RunTally(failed=[(str(path), reason) for path, reason in found.unreadable])

    def finish(plan: RecordingPlan, table: pa.Table) -> None:
        _write_table(table, part_path(parts_dir, plan.key))  # its presence marks the recording done
        if plan.split:
            remove_saved_windows(parts_dir, plan.key)
        tally.done += 1

    def assemble(plan: RecordingPlan) -> pa.Table:
        return pa.concat_tables([_read_table(saved(segment), schema) for segment in plan.segments])

    def as_table(result: RecordingResult) -> pa.Table:
        return pa.Table.from_pandas(result.frame, schema=schema, preserve_index=False)

    for plan in plans:  # every segment saved by an interrupted run: only the assembly is left
        if not to_run[plan.path]:
            finish(plan, assemble(plan))
    segments = [segment for plan in plans for segment in to_run[plan.path]]
    labels = embedding_columns(model.embedding_size)
    embed = batch_embedder(model, settings)
    consume_results(
        iter_predictions(segments, embed, labels, model.sample_rate, window_s, hop_s, settings.batch_size),
        {path: pending[-1] if pending else None for path, pending in to_run.items()},
        finish_whole=lambda result: finish(by_path[result.path], as_table(result)),
        save_segment=lambda result: _write_table(as_table(result), saved(result.segment)),
        finish_assembled=lambda path: finish(by_path[path], assemble(by_path[path])),
        tally=tally,
        progress=progress,
        total=len(todo),
    )
    failed = tally.failed
    parts = [part_path(parts_dir, recording_key(path)) for path in recordings]
    table_path = write_combined_embeddings(parts, out_dir / "embeddings.parquet", schema)
    write_errors(failed, out_dir)
    manifest = {
        "backbone": model.info().as_dict(),
        "settings": asdict(settings) | {"window_s": window_s, "hop_s": hop_s},
        "sub_windows": settings.sub_window_count(model),
        "parts": str(parts_dir.relative_to(out_dir)),
        "columns": ["file", "start_s", "end_s", f"e0..e{model.embedding_size - 1}"],
    }
    atomic_write_text(out_dir / "embeddings.json", json.dumps(manifest, indent=2) + "\n")
    return EmbeddingSummary(
        out_dir=out_dir,
        table=table_path,
        recordings=len(recordings),
        embedded=len(todo) - (len(failed) - len(found.unreadable)),
        skipped=len(recordings) - len(todo),
        failed=failed,
        audio_seconds=tally.audio_seconds,
        wall_seconds=time.perf_counter() - started,
        windows=tally.windows,
        parts_dir=parts_dir,
    )


def write_combined_embeddings(parts: Sequence[Path], path: Path, schema: pa.Schema) -> Path:
    """One Parquet file of every existing part, in order, written part by part (memory: one part)."""

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            writer.write_table(schema.empty_table())
            for part in parts:
                if part.is_file():
                    writer.write_table(_read_table(part, schema))

    return atomic_write(path, write)


def embedding_frame(
    model: EmbeddingModel,
    paths: Sequence[str | Path] | str | Path,
    settings: EmbedSettings | None = None,
    *,
    raise_errors: bool = True,
) -> pd.DataFrame:
    """Python API: the embedding table (``file, start_s, end_s, e0..``) of ``paths``; nothing is
    written. A recording that cannot be read raises :class:`AudioError` (``raise_errors``) or is left
    out."""
    settings = settings or EmbedSettings()
    if isinstance(paths, str | Path):
        paths = [paths]
    labels = embedding_columns(model.embedding_size)
    found = find_recordings(paths)
    if found.unreadable and raise_errors:
        raise AudioError(*found.unreadable[0])
    frames = []
    for result in iter_predictions(
        found.recordings,
        batch_embedder(model, settings),
        labels,
        model.sample_rate,
        settings.window_for(model),
        settings.hop_for(model),
        settings.batch_size,
    ):
        if result.error is not None:
            if raise_errors:
                raise AudioError(result.path, result.error)
            continue
        frames.append(result.frame)
    if not frames:
        return embedding_schema(model.embedding_size).empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def describe(summary: EmbeddingSummary) -> dict[str, Any]:
    """A JSON-friendly summary of an embedding run."""
    return {
        "recordings": summary.recordings,
        "embedded": summary.embedded,
        "skipped_complete": summary.skipped,
        "failed": len(summary.failed),
        "windows": summary.windows,
        "audio_hours": round(summary.audio_seconds / 3600, 4),
        "wall_seconds": round(summary.wall_seconds, 2),
        "realtime_factor": round(summary.realtime_factor, 1),
    }


# --- helpers -----------------------------------------------------------------------------------------


def _write_table(table: pa.Table, path: Path) -> Path:
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path).select(schema.names).cast(schema)
