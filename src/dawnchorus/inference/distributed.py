"""Prediction scaled out with dask.distributed: a local cluster, a running scheduler, or SLURM.

:func:`run_distributed_prediction` writes exactly the files :func:`dawnchorus.inference.run.run_prediction`
writes, with the work spread over dask workers; it shares that runner's run folder
(:class:`~dawnchorus.inference.run.RunFolder`), window plans (:mod:`dawnchorus.inference.windows`)
and pipeline (:func:`dawnchorus.inference.pipeline.iter_predictions`, one chunk per task):

- work is split per recording, and a recording longer than ``settings.chunk_s`` into chunks of whole
  windows;
  a chunk decodes from a little before its first window (``audio.iter_windows(first_window=...)``),
  so its windows equal the single-process ones (same start times; samples to float rounding);
- each worker loads the model once (a per-process cache keyed by the model file), not once per task;
- a recording's outputs are written atomically by the worker that runs its final task (which, for a
  chunked recording, depends on the chunk tasks); the part file ``parts/<tag>/<key>.parquet`` marks
  it done, so a re-run with the same model file and settings skips it, like the single-process run
  (``<tag>``: :func:`~dawnchorus.inference.run.run_tag`);
- a worker that dies has its tasks rerun elsewhere by the scheduler; a bad recording, or one that
  kills workers repeatedly, is reported in ``errors.csv`` and does not end the run.

The output folder, the model file and the recordings must be visible to every worker at the same
paths (a shared file system on a cluster). The optional extra ``dawnchorus[distributed]`` provides
dask.distributed and dask-jobqueue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dawnchorus.config import ClusterSettings, PredictSettings
from dawnchorus.errors import ClusterError, PredictionError
from dawnchorus.inference.engines import (
    BatchFunction,
    batch_function_for,
    cuda_device_count,
    load_for_prediction,
    onnx_available,
    resolve_batch_size,
    resolve_engine,
    set_threads,
    torch_batch_function,
)
from dawnchorus.inference.ensemble import Ensemble, check_member_file, combine, ensemble_of, predictor_of
from dawnchorus.inference.pipeline import RecordingResult, iter_predictions, reuse_large_allocations
from dawnchorus.inference.run import PredictionSummary, RunFolder, saved_windows_path, write_recording
from dawnchorus.inference.smoothing import check_recipe, finish_table
from dawnchorus.inference.windows import RecordingPlan, Segment, plan_recordings
from dawnchorus.io.files import usable_cores
from dawnchorus.io.outputs import read_probabilities, write_probabilities_parquet

if TYPE_CHECKING:
    from distributed import Client

    from dawnchorus.models.modelfile import LoadedModel

ProgressCallback = Callable[[RecordingResult, int, int], None]


# --- where to run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value: ``local[:N]``, ``tcp://HOST:PORT`` (or ``tls://``) or ``slurm``."""

    kind: str  # "local", "address" or "slurm"
    workers: int | None = None
    address: str | None = None


def parse_cluster(text: str) -> ClusterSpec:
    """Parse a ``--cluster`` value; raise :class:`ClusterError` saying what is accepted."""
    value = text.strip()
    if value == "slurm":
        return ClusterSpec("slurm")
    if re.fullmatch(r"(tcp|tls)://[^\s:/]+:\d+", value):
        return ClusterSpec("address", address=value)
    match = re.fullmatch(r"local(?::(\d+))?", value)
    if match:
        workers = int(match.group(1)) if match.group(1) else None
        if workers == 0:
            raise ClusterError("--cluster local:N needs at least one worker (N >= 1)")
        return ClusterSpec("local", workers=workers)
    raise ClusterError(
        f"--cluster {text!r} is not understood; use local, local:N, tcp://HOST:PORT or slurm"
    )


def _local_cluster(workers: int | None) -> tuple[Any, int | None]:
    """A LocalCluster sharing out the cores: ``workers`` processes (default one per core, or one per
    GPU), each running ``cores // workers`` tasks at a time with one torch thread per task.

    One torch thread per task, parallel over tasks, measured here: a worker running one task with 2
    torch threads predicted at 23x real time, the same worker with 1 thread at 55-60x (2 busy cores).
    """
    from distributed import LocalCluster

    cores = usable_cores()
    gpus = cuda_device_count()
    count = workers or (gpus if gpus else cores)
    cluster = LocalCluster(
        n_workers=count,
        threads_per_worker=max(1, cores // count),
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return cluster, 1


def _walltime_seconds(walltime: str) -> int | None:
    """SLURM time ``[D-]HH:MM:SS`` / ``MM:SS`` / ``MM`` -> seconds (None when not in those forms)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(walltime).strip())
    if not match:
        return None
    days, first, second, third = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is not None:
        hours, minutes, seconds = first, second, third
    elif match.group(3) is not None:
        hours, minutes, seconds = (first, second, 0) if match.group(1) else (0, first, second)
    else:
        hours, minutes, seconds = (first, 0, 0) if match.group(1) else (0, first, 0)
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_cluster(settings: ClusterSettings | None = None) -> Any:
    """A dask-jobqueue ``SLURMCluster`` built from the cluster settings (no job is submitted yet).

    ``gpus`` becomes ``--gres=gpu:N``; workers retire 5 minutes before the walltime so their tasks
    move to other jobs instead of dying with the job.
    """
    merged = (settings or ClusterSettings()).model_dump()
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ClusterError(
            "--cluster slurm needs dask-jobqueue: pip install 'dawnchorus[distributed]'"
        ) from exc
    directives = [str(d) for d in merged["job_extra"]]
    if merged["gpus"]:
        directives.append(f"--gres=gpu:{merged['gpus']}")
    worker_args: list[str] = []
    seconds = _walltime_seconds(merged["walltime"])
    if seconds is not None and seconds > 1200:
        worker_args += ["--lifetime", f"{seconds - 300}s", "--lifetime-stagger", "2m"]
    return SLURMCluster(
        queue=merged["queue"],
        account=merged["account"],
        cores=merged["cores"],
        processes=merged["processes"],
        memory=merged["memory"],
        walltime=merged["walltime"],
        job_extra_directives=directives,
        job_script_prologue=[str(line) for line in merged["prologue"]],
        worker_extra_args=worker_args,
        local_directory=merged["local_directory"],
        interface=merged["interface"],
        python=merged["python"],
    )


def check_job_script(script: str) -> None:
    """Ask SLURM whether it would accept ``script`` (``sbatch --test-only``: nothing is submitted)."""
    if shutil.which("sbatch") is None:
        raise ClusterError("--cluster slurm: no sbatch command here; run on a SLURM login node")
    with tempfile.TemporaryDirectory(prefix="dawnchorus-slurm-") as folder:
        path = Path(folder) / "job.sh"
        path.write_text(script)
        answer = subprocess.run(
            ["sbatch", "--test-only", str(path)], capture_output=True, text=True, check=False
        )
    if answer.returncode != 0:
        reason = (answer.stderr.strip() or answer.stdout.strip() or f"exit code {answer.returncode}")
        raise ClusterError(f"--cluster slurm: sbatch refuses the job script ({reason})")


def _submitted_slurm_cluster(settings: ClusterSettings) -> Any:
    """A SLURMCluster with ``jobs`` jobs requested (kept at that number as jobs end), after SLURM
    has accepted its job script: a bad partition or account fails here, not in the background."""
    cluster = slurm_cluster(settings)
    try:
        check_job_script(cluster.job_script())
    except ClusterError:
        cluster.close()
        raise
    cluster.scale(jobs=settings.jobs)
    cluster.adapt(minimum_jobs=settings.jobs, maximum_jobs=settings.jobs)
    return cluster


@contextlib.contextmanager
def connect(
    cluster: str, slurm: ClusterSettings | None = None, worker_timeout_s: float = 300.0
) -> Iterator[tuple[Client, int | None]]:
    """A client on the requested cluster, and the torch threads each task should use (None: as is).

    ``local`` starts one worker process per core (per GPU when there are GPUs); ``local:N`` starts N
    processes, each running ``cores // N`` tasks at a time; tasks use one torch thread each.
    ``tcp://HOST:PORT`` connects to a running scheduler and waits up to ``worker_timeout_s`` for a
    worker (its workers' own thread settings are kept). ``slurm`` submits ``jobs`` SLURM jobs (kept
    at that number as jobs end) built from the ``slurm`` settings.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterError("--cluster needs dask.distributed: pip install 'dawnchorus[distributed]'") from exc
    spec = parse_cluster(cluster)
    owned = None
    if spec.kind == "local":
        owned, threads = _local_cluster(spec.workers)
        client = Client(owned)
    elif spec.kind == "slurm":
        owned, threads = _submitted_slurm_cluster(slurm or ClusterSettings()), 1
        client = Client(owned)
    else:
        threads = None
        try:
            client = Client(spec.address, timeout="30s")
        except OSError as exc:
            raise ClusterError(f"cannot reach the dask scheduler at {spec.address} ({exc})") from exc
        try:
            client.wait_for_workers(1, timeout=worker_timeout_s)
        except TimeoutError as exc:
            client.close()
            raise ClusterError(
                f"the dask scheduler at {spec.address} has no workers after {worker_timeout_s:.0f} s"
            ) from exc
    try:
        yield client, threads
    finally:
        client.close()
        if owned is not None:
            owned.close()


# --- what runs on the workers ----------------------------------------------------------------------


@dataclass(frozen=True)
class TaskOptions:
    """Everything a worker task needs besides its recording (small: sent with every task)."""

    model_path: str
    model_stamp: tuple[int, int]  # (size, mtime_ns): a replaced model file is loaded afresh
    hop_s: float
    batch_size: int
    thresholds: tuple[float, ...]
    out_dir: str
    parts_dir: str  # out_dir/parts/<tag>: this run's parts and saved chunks (RunFolder.parts_dir)
    formats: tuple[str, ...]
    merge: bool
    device: str | None
    torch_threads: int | None
    engine: str  # torch, onnx or auto (resolved by each worker for its device)
    smoothing: tuple[float, ...] | None = None  # PredictSettings.smoothing, applied to whole recordings
    overlap_average: bool = False
    max_scaling: float | None = None
    calibration: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # RunFolder.calibration
    # An ensemble: every member's (path, stamp), model_path being the first; weights normalised.
    ensemble: tuple[tuple[str, tuple[int, int]], ...] = ()
    ensemble_weights: tuple[float, ...] = ()
    backbone_weights: tuple[str, ...] = ()  # predict --weights: files for frozen backbones (absolute)


@dataclass
class ChunkResult:
    """The window table of one chunk of a recording (or why it failed), and who computed it."""

    frame: pd.DataFrame | None
    error: str | None
    worker: str
    model_loads: int
    reused: bool = False  # read back from the chunk an interrupted run saved, not computed


@dataclass
class RecordingDone:
    """What the final task of a recording reports back (the table itself stays on disk)."""

    path: str
    duration_s: float
    windows: int
    error: str | None = None
    model_loads: dict[str, int] = field(default_factory=dict)


_MODEL_LOADS: Counter[str] = Counter()
_MODEL_CACHE: dict[tuple[Any, ...], tuple[LoadedModel | Ensemble, BatchFunction]] = {}
_MODEL_LOCK = threading.Lock()


def worker_device(requested: str | None, gpus: int | None = None, worker: str | None = None) -> str | None:
    """The requested device, or one GPU per worker (by the number ending the worker's name) when
    there are ``gpus`` GPUs (default: as torch counts them here; worker: this dask worker's name)."""
    if requested is not None:
        return requested
    if gpus is None:
        gpus = cuda_device_count()  # 0 without importing torch where no GPU device node exists
    if not gpus:
        return None
    if worker is None:
        try:
            from distributed import get_worker

            worker = str(get_worker().name)
        except (ImportError, ValueError):
            return None
    number = re.search(r"(\d+)$", worker)
    index = int(number.group(1)) if number else 0
    return f"cuda:{index % gpus}"


def worker_model(options: TaskOptions) -> tuple[LoadedModel | Ensemble, BatchFunction]:
    """This process's copy of the model (or ensemble: every member) and its batch function, loaded on
    first use only."""
    key = (options.model_path, options.model_stamp, options.device, options.ensemble,
           options.ensemble_weights, options.backbone_weights)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            if options.torch_threads:
                set_threads(options.torch_threads)
            reuse_large_allocations()
            _MODEL_CACHE.clear()  # a new model file replaces the old one
            # The timm network is built only by the torch engine: an ONNX worker runs the graph the
            # client exported (checked against the model file's SHA-256) and never imports timm, nor
            # torch when the graph keeps the model file's record (load_for_prediction).
            device = worker_device(options.device)
            if options.ensemble:
                model = ensemble_of(
                    [load_for_prediction(path) for path, _ in options.ensemble], options.ensemble_weights
                )
                _use_backbone_weights(model.members, options.backbone_weights)
                run = combine([worker_batch_function(m, options, device) for m in model.members], model)
            else:
                model = load_for_prediction(options.model_path)
                _use_backbone_weights([model], options.backbone_weights)
                run = worker_batch_function(model, options, device)
            _MODEL_CACHE[key] = (model, run)
            _MODEL_LOADS[options.model_path] += 1
        return _MODEL_CACHE[key]


def _use_backbone_weights(members: Sequence[LoadedModel], files: Sequence[str]) -> None:
    if files:  # frozen backbones only: nothing is imported for a timm model
        from dawnchorus.inference.frozen import use_backbone_weights

        use_backbone_weights(members, files)


def worker_batch_function(model: LoadedModel, options: TaskOptions, device: str | None) -> BatchFunction:
    """The batch function a worker on ``device`` runs: ``options.engine`` resolved here, where the
    device is known (``auto``: torch on a GPU worker, onnx on a CPU one)."""
    engine = resolve_engine(options.engine, device)
    if engine == "torch":
        import torch  # noqa: F401 - imported first, so that set_threads sets its threads

        if options.torch_threads:
            set_threads(options.torch_threads)
        return torch_batch_function(model, device, batch_size=options.batch_size)
    # One lane: the worker's threads already share the cores with the other workers. onnx-int8 runs
    # the int8 graph the client calibrated (prepare_engine).
    return batch_function_for(model, engine, device=device, threads=options.torch_threads, lanes=1)


def chunk_part(plan: RecordingPlan, segment: Segment, options: TaskOptions) -> Path:
    """Where a chunk of a split recording is saved until the recording's part is written."""
    return saved_windows_path(
        Path(options.parts_dir), plan.key, options.hop_s, segment.first_window, segment.max_windows
    )


def predict_chunk(plan: RecordingPlan, segment: Segment, options: TaskOptions) -> ChunkResult:
    """Worker task: the window table of one chunk; a bad recording is an error value, not a raise.

    A chunk of a split recording is saved as soon as it is computed, and read back instead of
    computed again when an interrupted run is resumed. Windows are decoded and batched (and, for a
    staged batch function, turned into spectrograms) in a background thread while the CNN runs."""
    saved = chunk_part(plan, segment, options) if plan.split else None
    if saved is not None and saved.is_file():
        loads = _MODEL_LOADS[options.model_path]
        return ChunkResult(read_probabilities(saved), None, _worker_name(), loads, reused=True)
    model, run = worker_model(options)
    worker, loads = _worker_name(), _MODEL_LOADS[options.model_path]
    audio = model.config.audio
    try:
        (result,) = iter_predictions(
            [segment], run, model.labels, audio.sample_rate, audio.clip_s, options.hop_s,
            options.batch_size, prefetch=2,
        )
    except Exception as exc:  # noqa: BLE001 - one bad file (or engine hiccup) must not end a long run
        return ChunkResult(None, f"{type(exc).__name__}: {exc}", worker, loads)
    if result.error is not None:
        return ChunkResult(None, result.error, worker, loads)
    if saved is not None:
        write_probabilities_parquet(result.frame, saved)
    return ChunkResult(result.frame, None, worker, loads)


def finish_recording(plan: RecordingPlan, options: TaskOptions, *chunks: ChunkResult) -> RecordingDone:
    """Worker task: join a recording's chunks (or predict it whole when given none), finish the whole
    table (overlap averaging, smoothing: :func:`~dawnchorus.inference.smoothing.finish_table`) and
    write its outputs atomically: Raven/Audacity files first, the part file (the completion mark) last."""
    if not chunks:
        chunks = (predict_chunk(plan, plan.segments[0], options),)
    model, _ = worker_model(options)
    loads: dict[str, int] = {}
    for chunk in chunks:
        loads[chunk.worker] = max(loads.get(chunk.worker, 0), chunk.model_loads)
    loads[_worker_name()] = _MODEL_LOADS[options.model_path]
    failure = next((c.error for c in chunks if c.error is not None), None)
    if failure is not None:
        return RecordingDone(str(plan.path), 0.0, 0, failure, loads)
    frame = pd.concat([c.frame for c in chunks], ignore_index=True)
    clip_s, hop_s = model.config.audio.clip_s, options.hop_s
    calibration = None if options.calibration is None else tuple(np.asarray(c) for c in options.calibration)
    frame = finish_table(
        frame, model.labels, clip_s, hop_s, options.smoothing, options.overlap_average, options.max_scaling,
        calibration,
    )
    thresholds = np.asarray(options.thresholds, dtype=np.float32)
    write_recording(
        frame, plan.key, model.labels, thresholds, Path(options.out_dir), options.formats, options.merge,
        plan.split, parts_dir=Path(options.parts_dir),
    )
    return RecordingDone(str(plan.path), plan.duration_s, len(frame), None, loads)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid-{os.getpid()}"


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class DistributedSummary(PredictionSummary):
    """A prediction run on a cluster: the single-process summary plus where the work ran."""

    cluster: str = "local"
    tasks: int = 0
    model_loads: dict[str, int] = field(default_factory=dict)  # worker address -> model loads


def run_distributed_prediction(
    model_path: str | Path | Sequence[str | Path],
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    settings: PredictSettings | None = None,
    *,
    cluster: str = "local",
    progress: ProgressCallback | None = None,
    retries: int = 1,
    backbone_weights: Sequence[str | Path] = (),
) -> DistributedSummary:
    """Predict every recording on a dask cluster; write the files
    :func:`~dawnchorus.inference.run.run_prediction` writes with the same ``settings``.

    ``cluster`` is ``local``, ``local:N``, ``tcp://HOST:PORT`` or ``slurm`` (with
    ``settings.cluster``: queue, account, cores, memory, walltime, gpus, processes, jobs, ...).
    Recordings longer than ``settings.chunk_s`` are split into chunks predicted in parallel.
    ``progress(result, done, total)`` is called as each recording completes (``result.frame`` is
    None: the table is already on disk; ``result.duration_s`` counts audio done). ``retries`` reruns
    a task that raised; a task whose worker died is rerun by the scheduler (up to its
    ``allowed-failures``) whatever ``retries`` is. ``settings.engine`` ``auto`` is resolved by each
    worker for its device (see :func:`dawnchorus.inference.engines.resolve_engine`); the ONNX graph
    is exported here once, beside the model file, before any task starts. Several model files in
    ``model_path`` run as an :class:`~dawnchorus.inference.ensemble.Ensemble` (weights:
    ``settings.ensemble_weights``): each worker loads every member once and averages them per window.
    ``backbone_weights``: weights files of frozen backbones (see
    :func:`~dawnchorus.inference.frozen.use_backbone_weights`), checked here and used by every worker.
    """
    from dawnchorus.models.modelfile import load_model

    settings = settings or PredictSettings()
    paths = [Path(model_path)] if isinstance(model_path, str | Path) else [Path(p) for p in model_path]
    for path in paths:
        check_member_file(path)
    members = [load_model(path, build_network=False) for path in paths]  # built by prepare_engine
    backbone_files = tuple(str(Path(path).resolve()) for path in backbone_weights)
    _use_backbone_weights(members, backbone_files)
    model = predictor_of(members, settings.ensemble_weights)
    model_path = paths[0]
    audio = model.config.audio
    hop_s = audio.clip_s if settings.hop_s is None else settings.hop_s
    # Resolved here, as ``predict`` always has: the workers share one batch size (and chunk grid).
    batch_size = resolve_batch_size(settings.batch_size, settings.device)
    parse_cluster(cluster)  # a bad value fails before any header is read
    check_recipe(settings, audio.clip_s)
    for path, member in zip(paths, members, strict=True):
        prepare_engine(settings.engine, settings.device, path, member)
    folder = RunFolder.open(model, inputs, out_dir, settings)
    plans, unreadable = plan_recordings(
        folder.todo, audio.sample_rate, audio.clip_s, hop_s, settings.chunk_s, batch_size, absolute=True
    )
    failures = {str(path): reason for path, reason in unreadable}
    for done, (path, reason) in enumerate(unreadable, start=1):
        if progress is not None:
            progress(RecordingResult(path, None, 0.0, reason), done, len(folder.todo))
    finished: list[RecordingDone] = []
    tasks = 0
    model_loads: dict[str, int] = {}
    if plans:
        with connect(cluster, settings.cluster) as (client, torch_threads):
            options = TaskOptions(
                model_path=str(model_path.resolve()),
                model_stamp=model_stamp(model_path),
                hop_s=hop_s,
                batch_size=batch_size,
                thresholds=tuple(float(t) for t in folder.thresholds),
                out_dir=str(folder.out_dir.resolve()),
                parts_dir=str(folder.parts_dir.resolve()),
                formats=tuple(folder.formats),
                merge=settings.merge,
                device=settings.device,
                torch_threads=torch_threads,
                engine=settings.engine,
                smoothing=None if settings.smoothing is None else tuple(settings.smoothing),
                overlap_average=settings.overlap_average,
                max_scaling=settings.max_scaling,
                calibration=None if folder.calibration is None else tuple(
                    tuple(float(v) for v in c) for c in folder.calibration
                ),
                ensemble=tuple((str(p.resolve()), model_stamp(p)) for p in paths)
                if isinstance(model, Ensemble) else (),
                ensemble_weights=model.weights if isinstance(model, Ensemble) else (),
                backbone_weights=backbone_files,
            )
            final, tasks = _submit(client, plans, options, retries)
            finished = _collect(final, progress, len(unreadable), len(folder.todo))
    for outcome in finished:
        if outcome.error is not None:
            failures[outcome.path] = outcome.error
        for worker, loads in outcome.model_loads.items():
            model_loads[worker] = max(model_loads.get(worker, 0), loads)
    failed = [(str(p), failures[str(p)]) for p in folder.todo if str(p) in failures]
    with folder.stop_if_unwritable():
        written = folder.close(model, failed)
    wall = time.perf_counter() - folder.started  # end to end: planning to the last combined table
    succeeded = [o for o in finished if o.error is None]
    return DistributedSummary(
        out_dir=folder.out_dir,
        recordings=len(folder.recordings),
        predicted=len(folder.todo) - len(failed),
        skipped=len(folder.recordings) - len(folder.todo),
        failed=folder.failures(failed),
        audio_seconds=float(sum(o.duration_s for o in succeeded)),
        wall_seconds=wall,
        windows=int(sum(o.windows for o in succeeded)),
        outputs=written,
        cluster=cluster,
        tasks=tasks,
        model_loads=model_loads,
    )


def model_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a model file: workers load a replaced file afresh."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def prepare_engine(engine: str, device: str | None, model_path: Path, model: LoadedModel) -> None:
    """Export the ONNX graph CPU workers will load (once, before they start), or, where the workers
    run torch, build the network here so that a model this installation cannot build fails once,
    before any task, as the single-process run does.

    ``auto`` is resolved by each worker: the client cannot know whether the workers have GPUs. With
    ``auto`` (or ``onnx``) on CPU and a graph already cached for this model file, nothing is built:
    a GPU worker that then cannot build the network reports it for each of its recordings."""
    from dawnchorus.inference.export import ExportError, cached_onnx_path

    if model.backbone is not None:  # a head on a frozen backbone: each worker runs backbone + head
        from dawnchorus.inference.frozen import model_backbone

        model_backbone(model, threads=1)  # its weights found and checked once, before any task
        return
    if engine == "onnx-int8":  # the int8 graph must exist (predict calibrates it on its inputs)
        from dawnchorus.inference.quantise import cached_int8_path

        try:
            cached_int8_path(model_path, model)
        except ExportError as exc:
            raise PredictionError(str(exc)) from exc
        return
    wanted = engine == "onnx" or (engine == "auto" and onnx_available())
    if not wanted or (device is not None and device.startswith("cuda")):
        model.network  # noqa: B018 - built (and checked) now
        return
    try:
        cached_onnx_path(model_path, model, include_frontend=False)
    except ExportError as exc:
        raise PredictionError(str(exc)) from exc


def _submit(
    client: Client, plans: Sequence[RecordingPlan], options: TaskOptions, retries: int
) -> tuple[dict[Any, RecordingPlan], int]:
    """One task per short recording; chunk tasks plus a final writing task per long one.

    Returns each recording's final future (mapped to its plan) and the number of tasks submitted.
    """
    token = uuid.uuid4().hex[:8]
    whole = [p for p in plans if not p.split]
    split = [p for p in plans if p.split]
    final: dict[Any, RecordingPlan] = {}
    futures = client.map(
        finish_recording,
        whole,
        options=options,
        key=[f"dawnchorus-recording-{p.key}-{token}" for p in whole],
        retries=retries,
    )
    final.update(zip(futures, whole, strict=True))
    chunk_args = [(p, segment) for p in split for segment in p.segments]
    chunk_futures = client.map(
        predict_chunk,
        [plan for plan, _ in chunk_args],
        [segment for _, segment in chunk_args],
        options=options,
        key=[f"dawnchorus-chunk-{p.key}-{s.first_window}-{token}" for p, s in chunk_args],
        retries=retries,
    )
    position = 0
    for plan in split:
        mine = chunk_futures[position : position + len(plan.segments)]
        position += len(plan.segments)
        future = client.submit(
            finish_recording,
            plan,
            options,
            *mine,
            key=f"dawnchorus-recording-{plan.key}-{token}",
            retries=retries,
        )
        final[future] = plan
    return final, len(futures) + len(chunk_futures) + len(split)


def _collect(
    final: dict[Any, RecordingPlan], progress: ProgressCallback | None, done: int, total: int
) -> list[RecordingDone]:
    """Wait for every recording's final task; a task that failed (even by killing its workers
    repeatedly) becomes that recording's error."""
    from distributed import as_completed

    finished: list[RecordingDone] = []
    for future in as_completed(list(final)):
        plan = final.pop(future)
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker, a raise in writing: report, go on
            outcome = RecordingDone(str(plan.path), 0.0, 0, f"{type(exc).__name__}: {exc}")
        future.release()
        finished.append(outcome)
        done += 1
        if progress is not None:
            result = RecordingResult(plan.path, None, outcome.duration_s, outcome.error)
            progress(result, done, total)
    return finished
