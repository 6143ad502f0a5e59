"""Prediction in one process, and the run folder both runners share.

:func:`run_prediction` predicts every recording through the shared pipeline
(:func:`dawnchorus.inference.pipeline.iter_predictions`) and writes each recording's outputs
atomically as soon as it is done, so an interrupted run resumes where it stopped; recordings longer
than ``settings.checkpoint_s`` are saved segment by segment. :class:`RunFolder` is the set-up and
tear-down of a run folder (``predict --out DIR``: parts, saved windows, stale temporaries,
``errors.csv``, combined outputs), used by this runner and the Dask one alike. :func:`predict_frame`
is the in-memory variant behind :func:`dawnchorus.predict`. Engines are built by
:mod:`dawnchorus.inference.engines`, windows planned by :mod:`dawnchorus.inference.windows`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dawnchorus.config import PredictSettings
from dawnchorus.errors import OutputError, PredictionError
from dawnchorus.inference.engines import (
    DEFAULT_BATCH_SIZE,
    BatchFunction,
    resolve_batch_size,
    torch_threads_kept,
)
from dawnchorus.inference.ensemble import Ensemble, ensemble_sha256, members_of, predictor_batch_function
from dawnchorus.inference.export import file_sha256
from dawnchorus.inference.pipeline import (
    RecordingResult,
    RunTally,
    consume_results,
    iter_predictions,
    reuse_large_allocations,
)
from dawnchorus.inference.postprocess import (
    calibration_for,
    class_thresholds,
    write_combined,
    write_detections,
    write_errors,
)
from dawnchorus.inference.smoothing import check_recipe, finish_table
from dawnchorus.inference.windows import (
    RecordingPlan,
    Segment,
    expand_inputs,
    find_recordings,
    plan_recordings,
    recording_key,
    whole_recording,
)
from dawnchorus.io.audio import AudioError
from dawnchorus.io.files import output_folder, remove_stale_temporaries
from dawnchorus.io.outputs import read_probabilities, write_probabilities_parquet
from dawnchorus.io.runinfo import RunInfo, RunModel, RunRecording, write_run_info

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

ProgressCallback = Callable[[RecordingResult, int, int], None]

# Threshold tuning predicts with eager torch in batches of 4, as it always has: tuned thresholds stay
# the same on the same labelled set.
TUNING_SETTINGS = PredictSettings(engine="torch", batch_size=DEFAULT_BATCH_SIZE)


@dataclass
class PredictionSummary:
    """What a prediction run did."""

    out_dir: Path
    recordings: int
    predicted: int
    skipped: int
    failed: list[tuple[str, str]]  # (recording, why): unreadable inputs first, then failed recordings
    audio_seconds: float
    wall_seconds: float
    windows: int
    outputs: dict[str, Path]

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def run_prediction(
    model: LoadedModel,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    settings: PredictSettings | None = None,
    *,
    batch_function: BatchFunction | None = None,
    progress: ProgressCallback | None = None,
) -> PredictionSummary:
    """Predict every recording and write the outputs ``settings.formats`` asks for under ``out_dir``.

    Each recording's window table goes to ``out_dir/parts/<tag>/<key>.parquet`` (atomically) the
    moment it is done, with its Raven/Audacity files, ``<tag>`` naming the model file and the settings
    that change a table (see :func:`run_tag`); recordings with a part of this tag are skipped on a
    re-run, and a run with another model file or other such settings computes its own. A
    recording longer than ``settings.checkpoint_s`` is predicted in segments of that length, each
    saved as it is done (see :func:`saved_windows_path`), so a re-run after an interruption
    recomputes at most one segment. The combined tables (CSV, Parquet, BirdCLEF submissions) are
    rebuilt from this tag's parts at the end. A recording's whole table (never a segment) is finished by
    ``settings.overlap_average`` and ``settings.smoothing`` (see
    :func:`dawnchorus.inference.smoothing.finish_table`) before it is written. ``batch_function``
    (default: the engine ``settings.engine`` on ``settings.device``) classifies batches.
    ``progress(result, recordings_done, recordings_total)`` is called after each recording and each segment.
    ``model`` may be an :class:`~dawnchorus.inference.ensemble.Ensemble`: its members' probabilities
    are averaged per window, and its run tag names every member and weight.
    """
    settings = settings or PredictSettings()
    check_recipe(settings, model.config.audio.clip_s)
    folder = RunFolder.open(model, inputs, out_dir, settings)
    clip_s, sample_rate = model.config.audio.clip_s, model.config.audio.sample_rate
    hop = clip_s if settings.hop_s is None else settings.hop_s
    batch_size = resolve_batch_size(settings.batch_size, settings.device)
    planned, _ = plan_recordings(folder.todo, sample_rate, clip_s, hop, settings.checkpoint_s, batch_size)
    by_path = {plan.path: plan for plan in planned}
    # A recording whose header cannot be read is tried whole: decoding names the problem in order.
    plans = [by_path.get(path) or whole_recording(path) for path in folder.todo]
    by_path = {plan.path: plan for plan in plans}
    to_run = {
        plan.path: [s for s in plan.segments if not plan.split or not folder.saved_windows(s, hop).is_file()]
        for plan in plans
    }
    tally = RunTally()

    def finish(plan: RecordingPlan, frame: pd.DataFrame) -> None:
        folder.write_recording(model, plan, frame, settings.merge)
        tally.done += 1

    with folder.stop_if_unwritable():
        for plan in plans:  # every segment saved by an interrupted run: only the assembly is left
            if not to_run[plan.path]:
                finish(plan, folder.assemble(plan, hop))
        reuse_large_allocations()
        with torch_threads_kept():
            run = batch_function or predictor_batch_function(
                model, settings.engine, device=settings.device, batch_size=batch_size
            )
            segments = [segment for plan in plans for segment in to_run[plan.path]]
            consume_results(
                iter_predictions(segments, run, model.labels, sample_rate, clip_s, hop, batch_size),
                {path: pending[-1] if pending else None for path, pending in to_run.items()},
                finish_whole=lambda result: finish(by_path[result.path], result.frame),
                save_segment=lambda result: write_probabilities_parquet(
                    result.frame, folder.saved_windows(result.segment, hop)
                ),
                finish_assembled=lambda path: finish(by_path[path], folder.assemble(by_path[path], hop)),
                tally=tally,
                progress=progress,
                total=len(folder.todo),
            )
        written = folder.close(model, tally.failed)
    wall = time.perf_counter() - folder.started  # end to end: decoding to the last combined table
    return PredictionSummary(
        out_dir=folder.out_dir,
        recordings=len(folder.recordings),
        predicted=len(folder.todo) - len(tally.failed),
        skipped=len(folder.recordings) - len(folder.todo),
        failed=folder.failures(tally.failed),
        audio_seconds=tally.audio_seconds,
        wall_seconds=wall,
        windows=tally.windows,
        outputs=written,
    )


def predict_frame(
    model: LoadedModel,
    paths: Sequence[str | Path] | str | Path,
    settings: PredictSettings | None = None,
    *,
    batch_function: BatchFunction | None = None,
    raise_errors: bool = True,
    on_error: Callable[[Path, str], None] | None = None,
) -> pd.DataFrame:
    """Python API: per-window probabilities indexed by (file, start_s, end_s); nothing is written.

    ``settings`` (default :class:`PredictSettings`) give the hop, batch size, engine and device; a
    recording that cannot be read (or a broken link, an unreadable folder among the inputs) raises
    :class:`AudioError` (``raise_errors``) or is left out, ``on_error(path, reason)`` called for
    each one left out. Each recording's table is finished by
    ``settings.overlap_average``, ``settings.smoothing`` and ``settings.max_scaling`` as in
    :func:`run_prediction`; ``model`` may be an :class:`~dawnchorus.inference.ensemble.Ensemble`.
    """
    settings = settings or PredictSettings()
    clip_s = model.config.audio.clip_s
    check_recipe(settings, clip_s)
    calibration = calibration_for(model, settings.calibrated)
    if isinstance(paths, str | Path):
        paths = [paths]
    found = find_recordings(paths)
    if found.unreadable and raise_errors:
        raise AudioError(*found.unreadable[0])
    for path, reason in found.unreadable if on_error is not None else ():
        on_error(Path(path), reason)
    recordings = found.recordings
    batch_size = resolve_batch_size(settings.batch_size, settings.device)
    frames = []
    with torch_threads_kept():
        run = batch_function or predictor_batch_function(
            model, settings.engine, device=settings.device, batch_size=batch_size
        )
        for result in iter_predictions(
            recordings,
            run,
            model.labels,
            model.config.audio.sample_rate,
            model.config.audio.clip_s,
            settings.hop_s,
            batch_size,
        ):
            if result.error is not None:
                if raise_errors:
                    raise AudioError(result.path, result.error)
                if on_error is not None:
                    on_error(Path(result.path), result.error)
                continue
            frames.append(
                finish_table(
                    result.frame,
                    model.labels,
                    clip_s,
                    clip_s if settings.hop_s is None else settings.hop_s,
                    settings.smoothing,
                    settings.overlap_average,
                    settings.max_scaling,
                    calibration,
                )
            )
    columns = ["file", "start_s", "end_s", *model.labels]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table.set_index(["file", "start_s", "end_s"])


# --- the run folder --------------------------------------------------------------------------------


@dataclass
class RunFolder:
    """A prediction run folder (``predict --out DIR``), as both runners set it up and finish it.

    :meth:`open` creates ``parts/<tag>/`` (``tag``: :func:`run_tag` of the model and settings),
    removes the temporaries a killed run left there, expands the inputs and finds the recordings
    whose part is missing (``todo``); :meth:`write_recording` writes one recording's outputs (its
    part last: the mark of a complete recording); :meth:`close` rebuilds the combined tables from
    this tag's parts and writes ``errors.csv`` and ``run.json`` (:meth:`run_info`). Parts of other
    tags (another model file, hop, smoothing or overlap averaging) are neither read nor removed.
    """

    out_dir: Path
    recordings: list[Path]
    todo: list[Path]
    thresholds: np.ndarray
    formats: list[str]
    started: float
    unreadable: list[tuple[Path, str]]  # seen among the inputs, cannot be read: see find_recordings
    settings: PredictSettings = field(default_factory=PredictSettings)  # hop and recipe of the run
    tag: str = ""  # run_tag(model, settings): the parts folder under out_dir/parts
    calibration: tuple[np.ndarray, np.ndarray] | None = None  # settings.calibrated: calibration_for

    @classmethod
    def open(
        cls, model: LoadedModel, inputs: Sequence[str | Path], out_dir: str | Path, settings: PredictSettings
    ) -> RunFolder:
        """Set up ``out_dir`` for a run over ``inputs``; raises :class:`PredictionError` when the
        inputs hold no recording and nothing that could not be read."""
        calibration = calibration_for(model, settings.calibrated)  # a missing one: refused before any output
        thresholds = class_thresholds(model, settings.threshold, settings.calibrated)
        out_dir = output_folder(out_dir)
        tag = run_tag(model, settings)
        parts_dir = output_folder(out_dir / "parts" / tag, "folder of finished recordings")
        remove_stale_temporaries(parts_dir)  # left by a run killed mid-write
        found = find_recordings(inputs)
        if not found.recordings and not found.unreadable:
            raise PredictionError("no recordings found in the given inputs")
        recordings = found.recordings
        todo = [p for p in recordings if not part_path(parts_dir, recording_key(p)).is_file()]
        started = time.perf_counter()
        formats = list(settings.formats)
        return cls(
            out_dir, recordings, todo, thresholds, formats, started, found.unreadable, settings, tag,
            calibration,
        )

    @property
    def parts_dir(self) -> Path:
        """Where this run's parts (and the saved windows of its split recordings) are."""
        return self.out_dir / "parts" / self.tag

    def saved_windows(self, segment: Segment, hop_s: float) -> Path:
        """Where ``segment`` of a split recording waits for the rest of it."""
        key = recording_key(segment.path)
        return saved_windows_path(self.parts_dir, key, hop_s, segment.first_window, segment.max_windows)

    def assemble(self, plan: RecordingPlan, hop_s: float) -> pd.DataFrame:
        """A split recording's table from its saved segments."""
        pieces = [read_probabilities(self.saved_windows(s, hop_s)) for s in plan.segments]
        return pd.concat(pieces, ignore_index=True)

    def write_recording(
        self, model: LoadedModel, plan: RecordingPlan, frame: pd.DataFrame, merge: bool
    ) -> None:
        """One recording's outputs from its whole ``frame``, finished by the run's overlap averaging
        and smoothing: see :func:`write_recording`."""
        clip_s = model.config.audio.clip_s
        hop_s = clip_s if self.settings.hop_s is None else self.settings.hop_s
        frame = finish_table(
            frame, model.labels, clip_s, hop_s, self.settings.smoothing, self.settings.overlap_average,
            self.settings.max_scaling, self.calibration,
        )
        write_recording(
            frame, plan.key, model.labels, self.thresholds, self.out_dir, self.formats, merge, plan.split,
            parts_dir=self.parts_dir,
        )

    def failures(self, failed: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Every (path, reason) of the run: the unreadable inputs, then the ``failed`` recordings."""
        return [(str(path), reason) for path, reason in self.unreadable] + list(failed)

    def close(self, model: LoadedModel, failed: Sequence[tuple[str, str]]) -> dict[str, Path]:
        """Rebuild the combined tables from every recording's part of this tag, and the Raven/Audacity
        files of the recordings skipped as complete (a run with another threshold, or one returning
        to earlier settings, must not keep those of other settings), and write ``errors.csv`` (the
        unreadable inputs and ``failed``), then ``run.json`` (:meth:`run_info`; a resumed run rewrites
        it); returns what was written, by format."""
        parts = [part_path(self.parts_dir, recording_key(p)) for p in self.recordings]
        todo = set(self.todo)
        for path, part in zip(self.recordings, parts, strict=True):
            if path not in todo and part.is_file():
                write_detections(
                    read_probabilities(part), model.labels, self.thresholds, self.out_dir,
                    recording_key(path), self.formats, self.settings.merge,
                )
        written = write_combined(model, parts, self.out_dir, self.thresholds, self.formats)
        written["errors"] = write_errors(self.failures(failed), self.out_dir)
        written["run"] = write_run_info(self.out_dir, self.run_info(model, parts))
        return written

    def run_info(self, model: LoadedModel | Ensemble, parts: Sequence[Path]) -> RunInfo:
        """What ``run.json`` records (see :mod:`dawnchorus.io.runinfo`): the model file(s) with their
        SHA-256 (an ensemble: every member and its weight), labels, the thresholds applied, the settings
        that shape the scores, and for each recording in the tables (``parts``: one per recording, those
        that exist) its ``file`` value there (as the run that predicted it spelt it: a resumed run may
        spell it otherwise), absolute path and size (a recording gone since it was predicted is left out)."""
        members = members_of(model)
        weights = model.weights if isinstance(model, Ensemble) else (1.0,)
        models = tuple(
            RunModel(None if m.path is None else str(Path(m.path).resolve()), model_sha256(m), float(w))
            for m, w in zip(members, weights, strict=True)
        )
        recordings = {}
        for path, part in zip(self.recordings, parts, strict=True):
            named = pd.read_parquet(part, columns=["file"])["file"] if part.is_file() else ()
            if not len(named):
                continue
            file, absolute = str(named.iloc[0]), path.resolve()
            try:
                recordings[file] = RunRecording(file, str(absolute), absolute.stat().st_size)
            except OSError:  # removed since it was predicted: review looks for it as before
                continue
        settings = self.settings
        recipe = {
            "hop_s": model.config.audio.clip_s if settings.hop_s is None else settings.hop_s,
            "smoothing": None if settings.smoothing is None else [float(w) for w in settings.smoothing],
            "overlap_average": settings.overlap_average,
            "max_scaling": settings.max_scaling,
            "calibrated": bool(getattr(settings, "calibrated", False)),
            "engine": settings.engine,
            "threshold": settings.threshold,
        }
        # float32 in the model file: written as 0.3, not 0.30000001192092896
        cutoffs = [round(float(t), 6) for t in self.thresholds]
        thresholds = dict(zip(model.labels, cutoffs, strict=True))
        return RunInfo(models, tuple(model.labels), thresholds, recipe, recordings, self.tag)

    @contextmanager
    def stop_if_unwritable(self) -> Iterator[None]:
        """Around a run's writes: an output that cannot be written (a full disk, a lost permission)
        stops the run with one :class:`OutputError` that names it and says the finished recordings
        are kept (their parts stay; a re-run resumes after them)."""
        try:
            yield
        except OutputError as exc:
            raise OutputError(
                f"{exc}; the recordings finished so far are kept in {self.out_dir}: "
                "run the same command again to resume"
            ) from None


def write_recording(
    frame: pd.DataFrame,
    key: str,
    labels: Sequence[str],
    thresholds: np.ndarray,
    out_dir: Path,
    formats: Sequence[str],
    merge: bool,
    split: bool = False,
    *,
    parts_dir: Path,
) -> None:
    """Write one recording's files: Raven/Audacity detections under ``out_dir``, then its part in
    ``parts_dir`` (which marks it done); then the saved windows of a ``split`` recording are not
    needed any more."""
    write_detections(frame, labels, thresholds, out_dir, key, formats, merge)
    # The part is written last: its presence marks the recording complete.
    write_probabilities_parquet(frame, part_path(parts_dir, key))
    if split:  # until the part exists, a re-run still finds its saved windows
        remove_saved_windows(parts_dir, key)


def run_tag(model: LoadedModel | Ensemble, settings: PredictSettings) -> str:
    """The name of a run's parts folder: everything that changes a recording's window table.

    That is the model file (the first 16 hex digits of its SHA-256: a retrained model, even with
    the same labels, gets its own parts; for an ensemble, ``e`` and the digits of
    :func:`model_sha256` over every member file and its weight, so adding, removing, reordering or
    reweighting a member computes afresh), the hop (``None``: the clip length, so ``--hop`` equal to
    the clip length resumes a run without it), the smoothing kernel (as normalised when applied),
    overlap averaging and, only when it is on, max scaling, e.g.
    ``m0123456789abcdef-h5000ms-nosmooth-noavg``. Not in it: the outputs,
    threshold and merging (rebuilt from the parts at the end of every run), batch size, chunk and
    checkpoint lengths (saved windows are named by their range), device and engine: torch and ONNX
    agree within 1e-4, and ``auto`` resolves by device (on a cluster, by each worker), so naming the
    engine would recompute everything when a run resumes on another machine, for no difference a
    threshold can see. Only ``onnx-int8``, whose scores differ from fp32's, adds ``-int8``; calibrated
    scores (``settings.calibrated``) add ``-cal``.
    """
    clip_s = model.config.audio.clip_s
    hop_s = clip_s if settings.hop_s is None else settings.hop_s
    smoothing = "nosmooth"
    if settings.smoothing is not None:
        kernel = np.asarray(settings.smoothing, dtype=np.float64)
        kernel = kernel / kernel.sum()
        text = json.dumps([round(float(w), 12) for w in kernel])
        smoothing = "smooth" + hashlib.sha256(text.encode()).hexdigest()[:8]
    average = "avg" if settings.overlap_average else "noavg"
    kind = "e" if isinstance(model, Ensemble) else "m"
    tag = f"{kind}{model_sha256(model)[:16]}-h{hop_s * 1000:g}ms-{smoothing}-{average}"
    if settings.max_scaling is not None:  # only when on: tags of runs without it stay as they were
        tag += f"-max{round(settings.max_scaling, 6):g}"
    if settings.calibrated:  # the calibration itself is in the model file, so in its SHA-256
        tag += "-cal"
    if settings.engine == "onnx-int8":  # int8 scores are not fp32's (bench/quantise.py): own parts
        tag += "-int8"
    return tag


def model_sha256(model: LoadedModel | Ensemble) -> str:
    """SHA-256 of the model's file (computed once per process for an unchanged file); for a model
    that has no file, of its labels, settings and weights; for an :class:`Ensemble`, over every
    member's and its weight (:func:`~dawnchorus.inference.ensemble.ensemble_sha256`)."""
    if isinstance(model, Ensemble):
        return ensemble_sha256([model_sha256(member) for member in model.members], model.weights)
    if model.path is not None and Path(model.path).is_file():
        return file_sha256(model.path)
    digest = hashlib.sha256(json.dumps(model.labels).encode())
    digest.update(model.config.model_dump_json().encode())
    state = model.stored_state if model.stored_state is not None else model.network.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def part_path(parts_dir: Path, key: str) -> Path:
    """The part of recording ``key``: its window table, whose presence marks it complete."""
    return parts_dir / f"{key}.parquet"


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


# --- thresholds tuned on a labelled set --------------------------------------------------------------


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
    settings: PredictSettings | None = None,
) -> dict[str, Any]:
    """Predict a labelled set, choose global and per-class F1-maximising thresholds, set them on ``model``.

    The caller saves the model (``model.save()``). Returns the thresholds and macro F1 before/after,
    and ``skipped``: ``(file, reason)`` of each recording that could not be read, left out of the
    tuning with its labelled windows (all of them unreadable: a :class:`PredictionError` naming the
    count and the first file). ``settings`` default to :data:`TUNING_SETTINGS`.
    """
    from dawnchorus.evaluate.metrics import (
        align_predictions,
        birdclef2022_score,
    )
    from dawnchorus.evaluate.thresholds import tune_thresholds
    from dawnchorus.io.annotations import match_recordings, read_birdclef_labels

    recordings, label_path = labelled_soundscapes(folder, labels_file)
    skipped: list[tuple[str, str]] = []
    table = predict_frame(
        model, recordings, settings or TUNING_SETTINGS, raise_errors=False,
        on_error=lambda path, reason: skipped.append((str(path), reason)),
    ).reset_index()
    if table.empty and skipped:
        file, reason = skipped[0]
        raise PredictionError(
            f"{folder}: none of the {len(recordings)} soundscape(s) could be read, nothing to tune on "
            f"(first: {file}: {reason})"
        )
    truth = read_birdclef_labels(label_path)
    audio_ids = truth.index.get_level_values("audio_id")
    unread = set(match_recordings([file for file, _ in skipped], audio_ids).values())
    aligned, truth = align_predictions(table, truth[~audio_ids.isin(unread)])
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
        "skipped": skipped,
    }
