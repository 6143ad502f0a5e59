"""Prediction on dask: window sub-ranges, planning, SLURM job scripts, and whole runs on a local
cluster that must write what the single-process run writes - also when a worker is killed mid-run."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dawnchorus.config import ClusterSettings, PredictSettings, build_predict_settings
from dawnchorus.errors import AudioError, ClusterError, ConfigError
from dawnchorus.inference import distributed as dist
from dawnchorus.inference.distributed import (
    ClusterSpec,
    connect,
    parse_cluster,
    run_distributed_prediction,
    slurm_cluster,
)
from dawnchorus.inference.engines import describe_engine, resolve_engine
from dawnchorus.inference.pipeline import prefetched
from dawnchorus.inference.run import run_prediction, run_tag
from dawnchorus.inference.windows import chunk_ranges, plan_recordings, whole_recording
from dawnchorus.io.annotations import read_audacity_labels, read_raven_table
from dawnchorus.io.audio import iter_windows, write_audio
from dawnchorus.io.outputs import read_probabilities
from dawnchorus.io.runinfo import read_run_info
from dawnchorus.models.modelfile import load_model
from tests.conftest import write_model_file

distributed = pytest.importorskip("distributed", reason="needs the 'distributed' extra (dask.distributed)")

KEYS = ["file", "start_s", "end_s"]
LABELS = ["aaa", "bbb", "ccc"]
CHUNK_S = 20.0  # 4 windows of 5 s: the long recordings below are split into several chunks
SAMPLE_TOLERANCE = 1e-6
# A chunk's resampler restarts on the same sample grid (samples equal to SAMPLE_TOLERANCE), which moves the
# shared model's probabilities by up to ~2e-6; a window one sample off moves them by ~2e-3 (up to 8e-3).
PROBABILITY_TOLERANCE = 1e-5
# The reference ran eager torch: cluster runs that must match it within SAMPLE_TOLERANCE run torch too.
ON_CLUSTER = PredictSettings(threshold=0.5, chunk_s=CHUNK_S, engine="torch")


def warbling(sample_rate: int, seconds: float, seed: int) -> np.ndarray:
    """A frequency-modulated tone switching on and off, in noise: windows differ from each other."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * (900 + 500 * np.sin(0.7 * t + seed)) * t) * (np.sin(1.3 * t) > 0)
    return (tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def recordings(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short and long recordings at three sample rates, one unreadable file, a model, and the
    single-process run's outputs on them (the reference every cluster run must reproduce)."""
    root = tmp_path_factory.mktemp("distributed")
    folder = root / "recordings"
    write_audio(folder / "short.ogg", warbling(32000, 23.0, 1), 32000)
    write_audio(folder / "resampled.flac", warbling(48000, 12.5, 2), 48000)
    write_audio(folder / "long_44k.ogg", warbling(44100, 95.3, 3), 44100)  # 5 chunks, resampled
    write_audio(folder / "long_32k.wav", warbling(32000, 61.0, 4), 32000)  # 4 chunks, no resampling
    (folder / "notes.ogg").write_text("field notes, not audio\n" * 20)
    model = root / "model.pt"  # a copy: the ONNX graph exported beside it is this module's
    shutil.copy2(model_file, model)
    reference = root / "single"
    run_prediction(load_model(model), [folder], reference, PredictSettings(threshold=0.5, engine="torch"))
    return {"root": root, "folder": folder, "model": model, "reference": reference}


def assert_same_outputs(reference: Path, candidate: Path, atol: float = PROBABILITY_TOLERANCE) -> None:
    """Same rows and files as the single-process run; probabilities within ``atol``."""
    expected = pd.read_parquet(reference / "predictions.parquet")
    found = pd.read_parquet(candidate / "predictions.parquet")
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    np.testing.assert_allclose(found[LABELS].to_numpy(), expected[LABELS].to_numpy(), rtol=0, atol=atol)
    assert expected[LABELS].to_numpy().std() > 1e-3  # the comparison is not between constants
    csv = pd.read_csv(candidate / "predictions.csv")
    np.testing.assert_allclose(csv[LABELS].to_numpy(), expected[LABELS].to_numpy(), rtol=0, atol=atol + 1e-6)
    # parts/<tag>/<key>.parquet: the candidate's parts of the reference's model and settings
    tags = [folder.name for folder in (reference / "parts").iterdir()]
    parts = sorted(p.relative_to(reference) for tag in tags for p in (reference / "parts" / tag).iterdir())
    assert sorted(
        p.relative_to(candidate) for tag in tags for p in (candidate / "parts" / tag).iterdir()
    ) == parts
    for folder in ("raven", "audacity"):
        names = sorted(p.name for p in (reference / folder).iterdir())
        assert sorted(p.name for p in (candidate / folder).iterdir() if not p.name.startswith(".")) == names
    for name in sorted(p.name for p in (reference / "raven").iterdir()):
        want, got = read_raven_table(reference / "raven" / name), read_raven_table(candidate / "raven" / name)
        columns = ["Begin Time (s)", "End Time (s)", "Species Code", "Begin Path"]
        pd.testing.assert_frame_equal(got[columns], want[columns])
        np.testing.assert_allclose(got["Confidence"], want["Confidence"], atol=1.01e-4)
    for name in sorted(p.name for p in (reference / "audacity").iterdir()):
        want, got = read_audacity_labels(reference / "audacity" / name), read_audacity_labels(
            candidate / "audacity" / name
        )
        assert len(got) == len(want)
    for name in ("errors.csv",):
        assert (candidate / name).read_text() == (reference / name).read_text()
    for name in ("submission_2022.csv", "submission_2023.csv"):
        want, got = pd.read_csv(reference / name), pd.read_csv(candidate / name)
        assert list(got["row_id"]) == list(want["row_id"])
    # run.json: the Dask runner closes the run folder as the single-process one does
    want_run, got_run = read_run_info(reference), read_run_info(candidate)
    assert want_run is not None and got_run is not None
    for field in ("labels", "thresholds", "recordings", "tag"):
        assert getattr(got_run, field) == getattr(want_run, field), field
    # the same model file's content; a test may have copied it elsewhere
    assert [(m.sha256, m.weight) for m in got_run.models] == [(m.sha256, m.weight) for m in want_run.models]


# --- window sub-ranges (audio.iter_windows first_window / max_windows) --------------------------


@pytest.mark.parametrize(("native_rate", "suffix"), [(32000, ".ogg"), (48000, ".flac"), (44100, ".wav")])
@pytest.mark.parametrize("hop_s", [5.0, 2.5, 3.3])
def test_window_subranges_equal_the_whole_file_windows(
    tmp_path: Path, native_rate: int, suffix: str, hop_s: float
) -> None:
    path = tmp_path / f"recording{suffix}"
    write_audio(path, warbling(native_rate, 41.3, 0), native_rate)
    whole = list(iter_windows(path, 32000, 5.0, hop_s, block_s=7.0))
    for first, count in [(0, 2), (1, 3), (4, 1), (5, 100), (len(whole) - 1, 4), (len(whole), 3)]:
        part = list(iter_windows(path, 32000, 5.0, hop_s, block_s=7.0, first_window=first, max_windows=count))
        expected = whole[first : first + count]
        assert [w.index for w in part] == [w.index for w in expected]
        assert [w.start_s for w in part] == [w.start_s for w in expected]
        for got, want in zip(part, expected, strict=True):
            if native_rate == 32000:  # no resampling: seeking is exact
                np.testing.assert_array_equal(got.samples, want.samples)
            else:  # the resampler restarted on the same sample grid: float rounding only
                np.testing.assert_allclose(got.samples, want.samples, rtol=0, atol=SAMPLE_TOLERANCE)


def test_window_subrange_rejects_negative_values(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_audio(path, warbling(32000, 6.0, 0), 32000)
    with pytest.raises(ValueError, match="first_window=-1"):
        list(iter_windows(path, 32000, 5.0, first_window=-1))
    with pytest.raises(ValueError, match="max_windows=-2"):
        list(iter_windows(path, 32000, 5.0, max_windows=-2))


def test_prefetched_keeps_order_raises_producer_errors_and_stops_early() -> None:
    assert list(prefetched(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        raise AudioError("x.ogg", "decoding failed mid-file")

    with pytest.raises(AudioError, match="decoding failed"):
        list(prefetched(failing()))
    produced: list[int] = []

    def counting():
        for value in range(1000):
            produced.append(value)
            yield value

    stream = prefetched(counting(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer leaves: the producer stops instead of decoding everything
    assert len(produced) < 10


# --- parsing and planning ---------------------------------------------------------------------------


def test_parse_cluster_accepts_the_documented_forms_and_names_bad_ones() -> None:
    assert parse_cluster("local") == ClusterSpec("local")
    assert parse_cluster("local:3") == ClusterSpec("local", workers=3)
    assert parse_cluster("tcp://10.1.2.3:8786") == ClusterSpec("address", address="tcp://10.1.2.3:8786")
    assert parse_cluster("slurm") == ClusterSpec("slurm")
    for bad in ("local:0", "local:x", "tcp://host", "kubernetes", ""):
        with pytest.raises(ClusterError, match="local"):
            parse_cluster(bad)


def test_chunk_ranges_cover_every_window_once() -> None:
    assert chunk_ranges(10, 4) == ((0, 4), (4, 4), (8, None))
    assert chunk_ranges(8, 4) == ((0, 4), (4, None))
    assert chunk_ranges(3, 4) == ((0, None),)
    with pytest.raises(ValueError, match="windows_per_chunk"):
        chunk_ranges(3, 0)


def test_plan_counts_windows_like_streaming_and_aligns_chunks_to_batches(recordings: dict[str, Path]) -> None:
    folder = recordings["folder"]
    paths = sorted(folder.iterdir())
    plans, failed = plan_recordings(paths, 32000, 5.0, 2.5, segment_s=CHUNK_S * 3, batch_size=16)
    assert [(p.name, "not decodable" in reason) for p, reason in failed] == [("notes.ogg", True)]
    for plan in plans:
        assert plan.windows == len(list(iter_windows(plan.path, 32000, 5.0, 2.5)))
        firsts = [segment.first_window for segment in plan.segments]
        assert all(first % 16 == 0 for first in firsts)  # 60 s / 2.5 s = 24 windows -> 16: whole batches
        assert plan.segments[-1].max_windows is None
        assert [s.index for s in plan.segments] == list(range(len(plan.segments)))
    long_plan = next(p for p in plans if p.path.name == "long_44k.ogg")
    assert len(long_plan.segments) == 3  # 38 windows in chunks of 16
    with pytest.raises(ValueError, match="chunk length"):
        plan_recordings(paths, 32000, 5.0, 5.0, segment_s=0)


# --- SLURM ---------------------------------------------------------------------------------------------


def test_slurm_settings_are_validated() -> None:
    assert build_predict_settings({"cluster": {"queue": "short"}}).cluster.cores == 8
    with pytest.raises(ConfigError, match="cluster.partition: unknown setting"):
        build_predict_settings({"cluster": {"partition": "short"}})
    with pytest.raises(ConfigError, match="cluster.cores"):
        build_predict_settings({"cluster": {"cores": 0}})
    with pytest.raises(ConfigError, match="processes .3. exceeds cores .2."):
        build_predict_settings({"cluster": {"cores": 2, "processes": 3}})


def fake_slurm_commands(folder: Path, refuse: bool = False) -> Path:
    """``sbatch`` that records the job script it is given (or refuses it), no-op ``scancel``/``squeue``."""
    folder.mkdir()
    (folder / "submitted").mkdir()
    accept = (
        'if [ "$1" = "--test-only" ]; then echo "sbatch: Job 1 to start at once" >&2; exit 0; fi\n'
        f'cp "$1" "{folder}/submitted/job-$$.sh"\necho "Submitted batch job $$"\n'
    )
    scripts = {
        "sbatch": "#!/bin/sh\n"
        + ('echo "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n' if refuse else accept),
        "scancel": "#!/bin/sh\nexit 0\n",
        "squeue": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        command = folder / name
        command.write_text(text)
        command.chmod(command.stat().st_mode | stat.S_IEXEC)
    return folder


SLURM_SETTINGS = ClusterSettings(**{
    "queue": "gpu",
    "account": "birds",
    "cores": 8,
    "memory": "32GB",
    "walltime": "02:00:00",
    "gpus": 2,
    "processes": 2,
    "jobs": 2,
    "job_extra": ["--constraint=a100"],
    "prologue": ["module load cuda"],
})


def test_slurm_job_script_carries_the_settings() -> None:
    pytest.importorskip("dask_jobqueue", reason="needs dask-jobqueue (the 'distributed' extra)")
    cluster = slurm_cluster(SLURM_SETTINGS)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for expected in (
        "#SBATCH -p gpu",
        "#SBATCH -A birds",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH -t 02:00:00",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --constraint=a100",
        "module load cuda",
        "--nworkers 2",
        "--nthreads 4",
        "--lifetime 6900s",  # retire 5 minutes before the walltime
    ):
        assert expected in script
    assert "#SBATCH --mem=" in script


def test_cluster_slurm_submits_its_jobs_or_says_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("dask_jobqueue", reason="needs dask-jobqueue (the 'distributed' extra)")
    system_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    with pytest.raises(ClusterError, match="no sbatch command"), connect("slurm", SLURM_SETTINGS):
        pass
    fake = fake_slurm_commands(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{system_path}")
    with connect("slurm", SLURM_SETTINGS) as (client, torch_threads):
        assert torch_threads == 1 and client.status == "running"
        client.cluster.sync(client.cluster._correct_state)  # wait for the submissions under way
    submitted = sorted((fake / "submitted").iterdir())
    assert len(submitted) == 2  # jobs: 2
    assert all("#SBATCH --gres=gpu:2" in path.read_text() for path in submitted)

    refusing = fake_slurm_commands(tmp_path / "refusing", refuse=True)
    monkeypatch.setenv("PATH", f"{refusing}{os.pathsep}{system_path}")
    refused = pytest.raises(ClusterError, match="sbatch refuses the job script.*invalid partition")
    with refused, connect("slurm", SLURM_SETTINGS):
        pass


# --- saved chunks: an interrupted run does not recompute them -----------------------------------------


def parts_of(out_dir: Path, model_path: Path, settings: PredictSettings | None = None) -> Path:
    """The parts folder of a run of ``model_path`` with ``settings`` into ``out_dir``."""
    return out_dir / "parts" / run_tag(load_model(model_path, build_network=False), settings or ON_CLUSTER)


def task_options(model_path: Path, out_dir: Path, engine: str = "torch") -> dist.TaskOptions:
    return dist.TaskOptions(
        model_path=str(model_path), model_stamp=dist.model_stamp(model_path), hop_s=5.0, batch_size=4,
        thresholds=(0.5,) * len(LABELS), out_dir=str(out_dir), parts_dir=str(parts_of(out_dir, model_path)),
        formats=("csv",), merge=False, device="cpu", torch_threads=1, engine=engine,
    )


def test_chunks_of_a_split_recording_are_saved_and_reused_then_removed(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    long_file = recordings["folder"] / "long_32k.wav"
    (plan,), _ = plan_recordings([long_file], 32000, 5.0, 5.0, segment_s=CHUNK_S, batch_size=4, absolute=True)
    assert len(plan.segments) == 4
    options = task_options(recordings["model"], tmp_path)
    parts = Path(options.parts_dir)
    parts.mkdir(parents=True)
    first = dist.predict_chunk(plan, plan.segments[0], options)  # what a run killed later leaves
    saved = dist.chunk_part(plan, plan.segments[0], options)
    assert not first.reused
    pd.testing.assert_frame_equal(read_probabilities(saved), first.frame)

    chunks = [dist.predict_chunk(plan, segment, options) for segment in plan.segments]
    assert [chunk.reused for chunk in chunks] == [True, False, False, False]  # the saved one is read
    done = dist.finish_recording(plan, options, *chunks)
    assert done.error is None and done.windows == 13
    reference = parts_of(recordings["reference"], recordings["model"])
    expected = read_probabilities(reference / f"{plan.key}.parquet")
    found = read_probabilities(parts / f"{plan.key}.parquet")
    pd.testing.assert_frame_equal(found[KEYS], expected[KEYS])
    np.testing.assert_allclose(found[LABELS], expected[LABELS], atol=PROBABILITY_TOLERANCE)
    assert found["file"].iloc[0] == str(long_file)  # the path as given, although workers open it absolute
    assert not list(parts.glob("*.windows-*"))


def test_a_recording_that_cannot_be_decoded_is_an_error_value(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    notes = recordings["folder"] / "notes.ogg"
    plan = whole_recording(notes)
    options = task_options(recordings["model"], tmp_path)
    done = dist.finish_recording(plan, options)
    assert done.windows == 0 and "not decodable" in done.error
    assert not (tmp_path / "parts").exists()


def test_workers_resolve_the_auto_engine_for_their_own_device(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    model_path = tmp_path / "model.pt"
    model_path.write_bytes(recordings["model"].read_bytes())
    model = load_model(model_path)
    dist.prepare_engine("torch", None, model_path, model)
    assert not model_path.with_suffix(".cnn.onnx").exists()  # torch workers need no graph
    dist.prepare_engine("auto", None, model_path, model)
    assert model_path.with_suffix(".cnn.onnx").is_file()  # exported once, before the workers start

    def engine_of(engine: str, device: str) -> str:
        options = task_options(model_path, tmp_path, engine)
        return describe_engine(dist.worker_batch_function(model, options, device))["engine"]

    assert engine_of("auto", "cpu") == "onnx"
    assert engine_of("torch", "cpu") == "torch"
    # Without a requested device, each worker takes one GPU by the number ending its name.
    assert dist.worker_device(None, gpus=2, worker="tcp://10.0.0.5:4000-3") == "cuda:1"
    assert dist.worker_device(None, gpus=2, worker="worker-4") == "cuda:0"
    assert dist.worker_device(None, gpus=0, worker="worker-4") is None
    assert dist.worker_device("cpu", gpus=2) == "cpu"
    assert resolve_engine("auto", dist.worker_device(None, gpus=1, worker="w-0")) == "torch"  # GPU: torch
    if torch.cuda.is_available():
        assert engine_of("auto", "cuda:0") == "torch"


# --- whole runs on a local cluster ---------------------------------------------------------------------


@pytest.mark.slow
def test_local_cluster_writes_what_the_single_process_run_writes(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cluster"
    progress: list[tuple[str, float, int, int]] = []
    summary = run_distributed_prediction(
        recordings["model"],
        [recordings["folder"]],
        out,
        ON_CLUSTER,
        cluster="local:2",
        progress=lambda result, done, total: progress.append(
            (Path(result.path).name, result.duration_s, done, total)
        ),
    )
    assert_same_outputs(recordings["reference"], out)
    assert summary.predicted == 4 and summary.skipped == 0
    assert [(Path(f).name, "not decodable" in e) for f, e in summary.failed] == [("notes.ogg", True)]
    assert summary.windows == len(pd.read_parquet(out / "predictions.parquet"))
    assert summary.audio_seconds == pytest.approx(23.0 + 12.5 + 95.3 + 61.0)
    # chunks of 4 windows: long_44k (20 windows) 5, long_32k (13) 4, short (5) 2, each recording
    # with a writing task; resampled.flac (3 windows) is one task
    assert summary.tasks == (5 + 4 + 2) + 3 + 1
    assert len(summary.model_loads) == 2 and set(summary.model_loads.values()) == {1}
    assert sorted(done for _, _, done, _ in progress) == [1, 2, 3, 4, 5]
    assert {total for *_, total in progress} == {5}
    assert sum(seconds for _, seconds, _, _ in progress) == pytest.approx(summary.audio_seconds)

    again = run_distributed_prediction(
        recordings["model"], [recordings["folder"]], out, ON_CLUSTER, cluster="local:2"
    )
    assert again.skipped == 4 and again.predicted == 0 and again.tasks == 0  # no cluster needed
    assert_same_outputs(recordings["reference"], out)


@pytest.mark.slow
def test_predict_command_with_cluster_local_2_and_onnx_matches_the_single_process_run(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    """The CLI's default engine on CPU is onnx: exported once by the client, run by each worker."""
    from typer.testing import CliRunner

    from dawnchorus.cli.app import app

    runner = CliRunner()
    out = tmp_path / "cli"
    arguments = [str(recordings["model"]), str(recordings["folder"]), "--out", str(out), "--threshold", "0.5"]
    command = ["predict", *arguments, "--cluster", "local:2", "--chunk", str(CHUNK_S), "--engine", "onnx"]
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output  # notes.ogg is not audio: listed, and the run says so
    assert "4 recordings predicted" in " ".join(result.output.split())
    assert "notes.ogg: not decodable audio" in result.stderr
    assert recordings["model"].with_suffix(".cnn.onnx").is_file()  # the graph the workers ran
    assert_same_outputs(recordings["reference"], out, atol=1e-4)  # the reference ran eager torch


@pytest.mark.slow
def test_killing_a_busy_worker_mid_run_still_gives_complete_outputs(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    )
    watcher = distributed.Client(cluster, set_as_default=False)
    killed: list[tuple[int, int, int]] = []

    def kill_a_busy_worker(result, done: int, total: int) -> None:
        if killed:
            return
        busy = {worker: len(keys) for worker, keys in watcher.processing().items() if keys}
        pids = watcher.run(os.getpid)
        worker = max(busy, key=busy.get) if busy else None
        if worker is not None:
            os.kill(pids[worker], signal.SIGKILL)
            killed.append((pids[worker], busy[worker], done))

    try:
        out = tmp_path / "killed"
        summary = run_distributed_prediction(
            recordings["model"],
            [recordings["folder"]],
            out,
            ON_CLUSTER,
            cluster=cluster.scheduler_address,
            progress=kill_a_busy_worker,
        )
    finally:
        watcher.close()
        cluster.close()
    assert killed, "no worker was busy after the first recording finished: nothing was killed"
    pid, tasks_in_flight, done = killed[0]
    assert tasks_in_flight >= 1 and done < 5
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert summary.predicted == 4
    assert_same_outputs(recordings["reference"], out)


@pytest.mark.slow
def test_a_cluster_rerun_with_a_retrained_model_or_another_hop_recomputes_and_one_alike_resumes(
    recordings: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model.pt"
    shutil.copy2(recordings["model"], model)
    inputs, out = [recordings["folder"]], tmp_path / "out"
    first = run_distributed_prediction(model, inputs, out, ON_CLUSTER, cluster="local:1")
    assert first.predicted == 4
    assert_same_outputs(recordings["reference"], out)

    write_model_file(model, seed=1)  # retrained: same labels, saved over the old file
    retrained = run_distributed_prediction(model, inputs, out, ON_CLUSTER, cluster="local:1")
    assert retrained.predicted == 4 and retrained.skipped == 0
    fresh = tmp_path / "fresh"
    run_prediction(load_model(model), inputs, fresh, PredictSettings(threshold=0.5, engine="torch"))
    assert_same_outputs(fresh, out)

    hop = ON_CLUSTER.model_copy(update={"hop_s": 2.5})
    other_hop = run_distributed_prediction(model, inputs, out, hop, cluster="local:1")
    assert other_hop.predicted == 4 and other_hop.skipped == 0
    fresh_hop = tmp_path / "fresh-hop"
    single = PredictSettings(threshold=0.5, engine="torch", hop_s=2.5)
    run_prediction(load_model(model), inputs, fresh_hop, single)
    assert_same_outputs(fresh_hop, out)
    assert not list(parts_of(out, model, hop).glob("*.windows-*"))  # chunks removed once assembled

    again = run_distributed_prediction(model, inputs, out, hop, cluster="local:1")
    assert again.skipped == 4 and again.predicted == 0 and again.tasks == 0
    assert_same_outputs(fresh_hop, out)
    assert len(list((out / "parts").iterdir())) == 3  # parts of other models and settings are left
