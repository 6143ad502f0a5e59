"""How fast is ``dawnchorus predict`` end to end on long 32 kHz OGG field recordings?

Writes (or takes, ``--inputs``) hours of 32 kHz OGG soundscapes, makes an efficientnet_b0 model file
with batch-norm statistics calibrated on that audio (or takes ``--model``), then runs the whole
prediction chain of each engine: decode, resample, log-mel, CNN and every output format. Each run is a
fresh process; engines are interleaved over ``--repeats`` rounds and the table gives medians:
audio seconds per wall second (x real time), windows per second and peak RSS. Model loading and the
one-off ONNX export are not timed (they are printed separately). A last run on one ``--long-hours``
recording samples the process RSS while it runs, to show memory stays flat whatever the length.

    python bench/infer_throughput.py                          # quick: 0.5 h in 6 files, 2 h long file
    python bench/infer_throughput.py --hours 4 --repeats 5 --long-hours 24   # the full run
    python bench/infer_throughput.py --repeats 0 --long-hours 24             # only the 24-h memory run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE

SAMPLE_RATE = 32000
ENGINES = {
    "torch": {"engine": "torch", "include_frontend": True},
    "onnx": {"engine": "onnx", "include_frontend": False},
    "onnx-graph": {"engine": "onnx", "include_frontend": True},
    "onnx-int8": {"engine": "onnx-int8", "include_frontend": False},
}
ENGINE_NOTES = {
    "torch": "eager torch: log-mel, then channels-last CNN",
    "onnx": "log-mel in numpy (no torch), CNN in onnxruntime",
    "onnx-graph": "log-mel and CNN in one onnxruntime graph",
    "onnx-int8": "log-mel in numpy (no torch), CNN int8 in onnxruntime (calibrated on the inputs)",
}
DEFAULT_DATA = Path(tempfile.gettempdir()) / "dawnchorus-bench"


# --- test audio --------------------------------------------------------------------------------------


def noise_bank() -> list[np.ndarray]:
    """Real bird-free field backgrounds (rain, wind, streams) at 32 kHz, when the shared set is here."""
    from dawnchorus.io.audio import load

    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    root = Path(os.environ.get("DAWNCHORUS_REAL_DATA", beside_repo))
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return []
    import pandas as pd

    table = pd.read_csv(manifest)
    quiet = table[(table["kind"] == "background") & (table["contains_birds"] == "no")]
    return [load(root / path, SAMPLE_RATE) for path in quiet["path"]]


def minute_blocks(count: int, seed: int) -> list[np.ndarray]:
    """``count`` distinct one-minute field backgrounds with bird-like whistles (float32, 32 kHz)."""
    from dawnchorus.synth.soundscapes import soundscape_background

    bank = noise_bank()
    rng = np.random.default_rng(seed)
    n = 60 * SAMPLE_RATE
    length = int(0.4 * SAMPLE_RATE)
    tau = np.arange(length) / SAMPLE_RATE
    blocks = []
    for _ in range(count):
        block = 0.05 * soundscape_background(n, rng, bank)
        for start in rng.integers(0, n - length, size=20):
            f0 = rng.uniform(2000, 7000)
            call = np.sin(2 * np.pi * (f0 * tau + 800 * np.sin(2 * np.pi * 6 * tau) / 6))
            block[start : start + length] += rng.uniform(0.01, 0.2) * call * np.hanning(length)
        blocks.append(np.clip(block, -1, 1).astype(np.float32))
    return blocks


def write_soundscape(path: Path, minutes: int, blocks: list[np.ndarray], seed: int) -> None:
    """A 32 kHz mono OGG of ``minutes`` minutes built from ``blocks`` in random order and gain; written
    minute by minute (memory stays small for a 24-hour file; one huge write can crash libsndfile)."""
    rng = np.random.default_rng(seed)
    temporary = path.with_name(f".{path.name}.tmp")
    with sf.SoundFile(str(temporary), "w", SAMPLE_RATE, 1, format="OGG", subtype="VORBIS") as handle:
        for _ in range(minutes):
            block = blocks[int(rng.integers(len(blocks)))] * float(rng.uniform(0.5, 1.5))
            handle.write(np.clip(block, -1, 1))
    os.replace(temporary, path)


def ensure_soundscapes(folder: Path, hours: float, file_minutes: int, seed: int = 0) -> list[Path]:
    """``hours`` of soundscapes in files of ``file_minutes`` minutes under ``folder`` (reused if there)."""
    count = max(1, round(hours * 60 / file_minutes))
    paths = [folder / f"soundscape_{file_minutes}min_{index:03d}.ogg" for index in range(count)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {len(missing)} soundscape(s) of {file_minutes} min to {folder}", file=sys.stderr)
        blocks = minute_blocks(8, seed)
        for path in missing:
            write_soundscape(path, file_minutes, blocks, seed=zlib.crc32(path.name.encode()))
    return paths


# --- the model ---------------------------------------------------------------------------------------


def ensure_model(path: Path, calibration_files: list[Path], backbone: str = "efficientnet_b0") -> Path:
    """An untrained ``backbone`` model file whose batch-norm statistics come from the benchmark audio
    (random statistics leave activations near zero, which flatters the CNN)."""
    if path.is_file():
        return path
    import torch

    from dawnchorus.config import build_config
    from dawnchorus.io.audio import iter_windows
    from dawnchorus.models.classifier import SpectrogramClassifier, build_model
    from dawnchorus.models.features import LogMel
    from dawnchorus.models.modelfile import save_model_file

    config = build_config({"model": {"backbone": backbone, "pretrained": False}})
    torch.manual_seed(0)
    labels = [f"species{index:02d}" for index in range(21)]
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, len(labels))
    )
    windows = [w.samples for f in calibration_files[:4] for w in iter_windows(f, SAMPLE_RATE, 5.0, 30.0)]
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    network.train()
    with torch.no_grad():
        for begin in range(0, min(len(windows), 64), 16):
            network(torch.from_numpy(np.stack(windows[begin : begin + 16])))
    network.eval()
    return save_model_file(path, network, labels, config)


# --- one measured run (a child process) -------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter() - self._start, self.rss_mb()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    model_path: Path,
    inputs: list[Path],
    engine: str,
    threads: int,
    batch_size: int,
    out_dir: Path,
    sample_rss: bool = False,
) -> dict[str, Any]:
    """Run one engine over ``inputs`` writing every output format; time only the prediction run."""
    import torch

    from dawnchorus.config import PredictSettings
    from dawnchorus.inference.engines import batch_function_for, describe_engine
    from dawnchorus.inference.run import run_prediction
    from dawnchorus.models.modelfile import load_model

    setup_started = time.perf_counter()
    torch.set_num_threads(threads)
    model = load_model(model_path)
    settings = ENGINES[engine]
    run = batch_function_for(
        model, settings["engine"], batch_size=batch_size, threads=threads,
        include_frontend=settings["include_frontend"],
    )
    setup_s = time.perf_counter() - setup_started
    rss_before = RssSampler.rss_mb()
    sampler = RssSampler(interval=1.0)
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    with sampler if sample_rss else contextlib.nullcontext():
        summary = run_prediction(
            model, inputs, out_dir, PredictSettings(batch_size=batch_size), batch_function=run
        )
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    if summary.failed:
        raise RuntimeError(f"prediction failed on {summary.failed}")
    return {
        "engine": engine,
        "audio_s": summary.audio_seconds,
        "wall_s": wall,
        "cpu_s": cpu,
        "windows": summary.windows,
        "setup_s": setup_s,
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_samples": sampler.samples,
        "described": describe_engine(run),
    }


def run_child(args: list[str], cores: list[int] | None) -> dict[str, Any]:
    """Run ``measure`` in a fresh interpreter (own peak RSS, no warm caches from other engines)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--engine", choices=list(ENGINES), required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sample-rss", action="store_true")
    parser.add_argument("inputs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    result = measure(
        args.model, args.inputs, args.engine, args.threads, args.batch_size, args.out, args.sample_rss
    )
    print(json.dumps(result))
    return 0


# --- the benchmark ------------------------------------------------------------------------------------


def run_engine(
    engine: str, model: Path, inputs: list[Path], args: argparse.Namespace, work: Path, tag: str,
    sample_rss: bool = False,
) -> dict[str, Any]:
    out = work / f"out-{engine}-{tag}"
    child_args = [
        "--model", str(model), "--engine", engine, "--threads", str(args.threads),
        "--batch-size", str(args.batch_size), "--out", str(out), *map(str, inputs),
    ]
    if sample_rss:
        child_args.append("--sample-rss")
    return run_child(child_args, args.cores)


def prepare_onnx(model: Path, engines: list[str], inputs: list[Path]) -> dict[str, str]:
    """Export the ONNX graphs (or find them cached) before timing, the int8 graph calibrated on
    ``inputs`` as ``predict --engine onnx-int8`` would; says what happened per engine."""
    from dawnchorus.inference.export import cached_onnx_path, onnx_path_beside
    from dawnchorus.inference.quantise import cached_int8_path, int8_path_beside

    done = {}
    for engine in engines:
        settings = ENGINES[engine]
        if settings["engine"] == "onnx-int8":
            graph = int8_path_beside(model)
            before = graph.stat().st_mtime_ns if graph.is_file() else None
            started = time.perf_counter()
            path = cached_int8_path(model, calibration=inputs)
            seconds = time.perf_counter() - started
            made = path != graph or before != path.stat().st_mtime_ns
            done[engine] = f"{'calibrated' if made else 'cached'} {path.name} ({seconds:.1f} s)"
        elif settings["engine"] == "onnx":
            graph = onnx_path_beside(model, settings["include_frontend"])
            before = graph.stat().st_mtime_ns if graph.is_file() else None
            started = time.perf_counter()
            path = cached_onnx_path(model, include_frontend=settings["include_frontend"])
            seconds = time.perf_counter() - started
            exported = path != graph or before != path.stat().st_mtime_ns
            done[engine] = f"{'exported' if exported else 'cached'} {path.name} ({seconds:.1f} s)"
    return done


def summarise(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "x_real_time": statistics.median(r["audio_s"] / r["wall_s"] for r in runs),
        "windows_per_s": statistics.median(r["windows"] / r["wall_s"] for r in runs),
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "spread": (
            min(r["audio_s"] / r["wall_s"] for r in runs), max(r["audio_s"] / r["wall_s"] for r in runs)
        ),
        "setup_s": statistics.median(r["setup_s"] for r in runs),
        "cpu_s_per_audio_h": statistics.median(r["cpu_s"] / r["audio_s"] * 3600 for r in runs),
    }


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def long_file_memory(engine: str, model: Path, path: Path, args: argparse.Namespace, work: Path) -> None:
    result = run_engine(engine, model, [path], args, work, "long", sample_rss=True)
    samples = result["rss_samples"]
    if not samples:
        return
    duration = samples[-1][0]
    marks = []
    for fraction in (0.1, 0.25, 0.5, 0.75, 1.0):
        t, rss = min(samples, key=lambda s: abs(s[0] - fraction * duration))
        marks.append((f"{fraction:.0%}", f"{t:.0f}", f"{rss:.0f}"))
    hours = result["audio_s"] / 3600
    print_table(
        f"memory over one {hours:.1f}-hour recording ({engine}; "
        f"{result['audio_s'] / result['wall_s']:.0f}x real time, {result['windows']} windows; "
        f"RSS after model load {result['rss_before_mb']:.0f} MB, peak {result['peak_rss_mb']:.0f} MB)",
        marks,
        ("progress", "wall s", "RSS MB"),
    )


def lanes_note(runs: dict[str, list[dict[str, Any]]]) -> str:
    """How the engines used the cores, e.g. '2 lanes x 1 thread'."""
    described = next(iter(runs.values()))[0]["described"]
    return f"{described['lanes']} lanes x {described['threads_per_lane']} thread(s)"


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=0.5, help="hours of audio per run (default 0.5)")
    parser.add_argument("--file-minutes", type=int, default=5, help="minutes per recording (default 5)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds (default 3; 0: only the long-recording run)")
    parser.add_argument("--long-hours", type=float, default=2.0,
                        help="length of the flat-memory recording; 0 skips it (default 2; full: 24)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated, from {', '.join(ENGINES)} (default all)")
    parser.add_argument("--inputs", type=Path, default=None,
                        help="folder of recordings to use instead of generated ones")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: an efficientnet_b0 with calibrated batch norm)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help=f"generated audio and model, kept for re-use (default {DEFAULT_DATA})")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: cores used)")
    parser.add_argument("--cores", type=str, default=None,
                        help="pin runs to these CPU ids, e.g. 0,1 (default: all cores of this process)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"windows per batch (default {DEFAULT_BATCH_SIZE}, as predict)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    available = sorted(os.sched_getaffinity(0))
    args.cores = [int(c) for c in args.cores.split(",")] if args.cores else available
    args.threads = args.threads or len(args.cores)
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_list if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    return args


def benchmark_inputs(args: argparse.Namespace) -> list[Path]:
    if args.inputs is None:
        return ensure_soundscapes(args.data_dir / "soundscapes", args.hours, args.file_minutes)
    from dawnchorus.inference.windows import expand_inputs

    found = expand_inputs([args.inputs])
    if not found:
        raise SystemExit(f"{args.inputs}: no recordings found")
    return found


def throughput_table(
    model: Path, inputs: list[Path], args: argparse.Namespace, work: Path, onnx_graphs: dict[str, str]
) -> None:
    """Interleaved rounds of every engine over ``inputs``, then the table of medians."""
    load_before = load_average()
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in args.engine_list}
    for repeat in range(args.repeats):
        for engine in args.engine_list:
            result = run_engine(engine, model, inputs, args, work, str(repeat))
            runs[engine].append(result)
            print(f"  round {repeat + 1}/{args.repeats} {engine:10s} "
                  f"{result['audio_s'] / result['wall_s']:6.0f}x real time", file=sys.stderr)
    audio_hours = runs[args.engine_list[0]][0]["audio_s"] / 3600
    rows = []
    for engine in args.engine_list:
        stats = summarise(runs[engine])
        rows.append((
            engine, f"{stats['x_real_time']:.0f}",
            f"{stats['spread'][0]:.0f}-{stats['spread'][1]:.0f}", f"{stats['windows_per_s']:.1f}",
            f"{stats['peak_rss_mb']:.0f}", f"{stats['cpu_s_per_audio_h']:.1f}",
            f"{3600 * len(args.cores) / stats['cpu_s_per_audio_h']:.0f}",
            f"{stats['setup_s']:.1f}", ENGINE_NOTES[engine],
        ))
    print_table(
        f"dawnchorus predict, {audio_hours:.2f} h of 32 kHz OGG in {len(inputs)} files, "
        f"model {model.name}; {len(args.cores)} cores, {lanes_note(runs)}, batch {args.batch_size}; "
        f"median of {args.repeats} interleaved runs; load average before: {load_before}",
        rows,
        ("engine", "audio-s per wall-s (x real time)", "min-max", "windows/s", "peak RSS MB",
         "CPU-s per audio-h", f"audio-s per CPU-s x {len(args.cores)} cores", "setup s", "what runs"),
    )
    if onnx_graphs:
        print("ONNX graphs, before timing: " + "; ".join(f"{e}: {s}" for e, s in onnx_graphs.items()))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    args = parse_args(argv)
    inputs = benchmark_inputs(args)
    model = args.model or ensure_model(args.data_dir / "efficientnet_b0_calibrated.pt", inputs)
    onnx_graphs = prepare_onnx(model, args.engine_list, inputs)
    with tempfile.TemporaryDirectory(prefix="dawnchorus-bench-") as folder:
        if args.repeats > 0:
            throughput_table(model, inputs, args, Path(folder), onnx_graphs)
        if args.long_hours > 0:
            long_path = ensure_soundscapes(
                args.data_dir / "long", args.long_hours, int(round(args.long_hours * 60))
            )[0]
            engine = "onnx" if "onnx" in args.engine_list else args.engine_list[0]
            long_file_memory(engine, model, long_path, args, Path(folder))
    print(f"load average after: {load_average()} (1, 5, 15 min; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
