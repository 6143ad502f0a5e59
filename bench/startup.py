"""Start-up of ``dawnchorus predict`` and ``dawnchorus --help`` as a user times them, for two source
trees side by side (e.g. a worktree of an older commit and this checkout).

Each round runs, for each tree in turn (interleaved, so both see the same machine load):

- ``python -X importtime -m dawnchorus predict MODEL REC --engine onnx``: the sum of the top-level
  import times (every module the run imports, once), and whether torch was among them;
- the same command timed as a whole process: wall seconds, seconds until its first output line
  (``engine: ...``), CPU seconds and peak RSS (``wait4``);
- ``python -m dawnchorus --help``: wall seconds.

The model is an ``efficientnet_b0`` (the default backbone until issue 16, calibrated batch norm)
with its ONNX graph already cached beside it; the input is one 10-s recording, so start-up
dominates. Prints medians of ``--rounds`` rounds and the load average before and after.

Peak RSS: Linux keeps a process's high-water mark across ``exec``, so a child of a large process
reports at least its parent's RSS (a bare ``python -c pass`` started by a process holding torch
reported 507 MB). The model and graph are therefore made in a child process of their own, and this
one stays small (numpy and the standard library).

    .venv/bin/python bench/startup.py --tree before=/tmp/old/src --tree after=src --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 32000


def ensure_inputs(folder: Path) -> tuple[Path, Path]:
    """(model file with its graph cached beside it, a folder with one 10-s recording)."""
    import soundfile
    from infer_throughput import ensure_model

    recordings = folder / "recordings"
    recording = recordings / "rec.wav"
    if not recording.is_file():
        recordings.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
        whistle = np.sin(2 * np.pi * (3000 + 500 * np.sin(6 * t)) * t)
        audio = 0.05 * rng.standard_normal(t.size) + 0.2 * whistle
        soundfile.write(recording, audio.astype(np.float32), SAMPLE_RATE)
    model = ensure_model(folder / "model.pt", [recording])
    from dawnchorus.inference.export import cached_onnx_path

    cached_onnx_path(model, include_frontend=False)
    return model, recordings


def timed(command: list[str], environment: dict[str, str]) -> dict[str, float]:
    """Wall, first-output-line and CPU seconds and peak RSS (MB) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first_line = float("nan")
    assert process.stdout is not None
    for line in process.stdout:
        if first_line != first_line and line.strip():
            first_line = time.perf_counter() - started
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return {
        "wall_s": wall,
        "first_line_s": first_line,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
    }


def import_seconds(command: list[str], environment: dict[str, str]) -> tuple[float, bool]:
    """Sum of the top-level cumulative times ``-X importtime`` reports (each module counted once),
    and whether torch was imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]], env=environment, capture_output=True, text=True,
        check=True,
    )
    total = 0
    torch_imported = False
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        torch_imported = torch_imported or parts[2].strip() == "torch"
        if not parts[2].startswith("  "):  # top level: not imported by another module's import
            total += int(parts[1])
    return total / 1e6, torch_imported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC",
                        help="a source tree to put on PYTHONPATH (repeat; first is the baseline)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dawnchorus-bench/startup"))
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # the child that makes them
    args = parser.parse_args(argv)
    if args.prepare:
        ensure_inputs(args.data_dir)
        return 0
    trees = dict(item.split("=", 1) for item in args.tree)
    subprocess.run([sys.executable, __file__, "--prepare", "--tree", "x=x", "--data-dir", str(args.data_dir)],
                   check=True)
    model, recordings = args.data_dir / "model.pt", args.data_dir / "recordings"
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    loads = [" ".join(f"{value:.2f}" for value in os.getloadavg())]
    with tempfile.TemporaryDirectory(prefix="dawnchorus-startup-") as scratch:
        for round_ in range(args.rounds):
            for name, source in trees.items():
                environment = {**os.environ, "PYTHONPATH": str(Path(source).resolve()), "HF_HUB_OFFLINE": "1",
                               "PYTHONUNBUFFERED": "1"}
                out = Path(scratch) / f"{name}-{round_}"
                predict = [sys.executable, "-m", "dawnchorus", "predict", str(model), str(recordings),
                           "--engine", "onnx", "--format", "csv"]
                imports, torch_imported = import_seconds([*predict, "--out", f"{out}-i"], environment)
                record: dict[str, Any] = {"imports_s": imports, "torch": float(torch_imported)}
                record.update(timed([*predict, "--out", str(out)], environment))
                help_run = timed([sys.executable, "-m", "dawnchorus", "--help"], environment)
                record["help_s"] = help_run["wall_s"]
                for key, value in record.items():
                    results[name].setdefault(key, []).append(value)
    loads.append(" ".join(f"{value:.2f}" for value in os.getloadavg()))
    columns = ("imports_s", "first_line_s", "wall_s", "cpu_s", "rss_mb", "help_s", "torch")
    print(f"load average before: {loads[0]}; after: {loads[1]}; medians of {args.rounds} interleaved rounds")
    print("| tree | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, values in results.items():
        cells = [f"{statistics.median(values[c]):.{0 if c in ('rss_mb', 'torch') else 2}f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, values in results.items():
        print(name, {c: [round(v, 2) for v in values[c]] for c in columns})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
