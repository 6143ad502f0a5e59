"""How does prediction scale over dask workers on this machine?

Writes ``--files`` 32 kHz OGG soundscapes of ``--minutes`` each (tones in coloured noise), a model
with calibrated batch-norm statistics (``--backbone``, random weights: throughput does not depend on
training), then predicts them three ways and prints a table: the single-process run
(``infer.run_prediction``), and ``--cluster local:1`` and ``local:2`` (``distributed``). For each:
audio hours, wall seconds (cluster start and model loading included), audio-hours per hour of wall
time (= x real time), and the steady rate between the first and the last recording finished (start-up
excluded). Outputs go to a temporary folder, deleted afterwards.

    python bench/scale_predict.py                      # 6 x 10 min, efficientnet_b0, 1 and 2 workers
    python bench/scale_predict.py --files 4 --minutes 5 --workers 1 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dawnchorus.config import ENGINES, PredictSettings, build_config
from dawnchorus.inference.distributed import run_distributed_prediction
from dawnchorus.inference.engines import DEFAULT_BATCH_SIZE, batch_function_for
from dawnchorus.inference.run import run_prediction
from dawnchorus.io.audio import write_audio
from dawnchorus.io.files import usable_cores
from dawnchorus.models.classifier import SpectrogramClassifier, build_model
from dawnchorus.models.features import LogMel
from dawnchorus.models.modelfile import load_model, save_model_file

SAMPLE_RATE = 32000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=6, help="soundscapes (default 6)")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes per soundscape (default 10)")
    parser.add_argument("--backbone", default="efficientnet_b0", help="timm backbone name")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local worker counts to try")
    parser.add_argument("--chunk-s", type=float, default=300.0, help="chunk length for long recordings")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--engine", default="auto", choices=ENGINES, help="as predict --engine")
    return parser.parse_args(argv)


def soundscape(seconds: float, seed: int) -> np.ndarray:
    """Warbling tones switching on and off in pink-ish noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tone = 0.2 * np.sin(2 * np.pi * (1500 + 800 * np.sin(0.9 * t + seed)) * t) * (np.sin(0.4 * t) > 0.3)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0))
    noise = np.fft.irfft(spectrum, n)
    return (tone + 0.05 * noise / noise.std()).astype(np.float32)


def calibrated_model(path: Path, backbone: str) -> Path:
    """Random weights with batch-norm statistics from a few training-mode passes (not near-zero)."""
    config = build_config({"model": {"backbone": backbone, "pretrained": False}})
    torch.manual_seed(0)
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, 20)
    )
    rng = np.random.default_rng(0)
    with torch.no_grad():
        network.train()
        for _ in range(3):
            batch = rng.uniform(-0.3, 0.3, (8, config.audio.clip_samples)).astype(np.float32)
            network(torch.from_numpy(batch))
    return save_model_file(path, network.eval(), [f"sp{i:02d}" for i in range(20)], config)


class Timeline:
    """Progress callback: when each recording finished, and how much audio it held."""

    def __init__(self) -> None:
        self.finished: list[tuple[float, float]] = []

    def __call__(self, result, done: int, total: int) -> None:
        self.finished.append((time.perf_counter(), result.duration_s))

    def steady_rate(self) -> float:
        """Audio seconds per wall second between the first and the last recording finished."""
        if len(self.finished) < 2:
            return float("nan")
        (first, _), (last, _) = self.finished[0], self.finished[-1]
        audio = sum(seconds for _, seconds in self.finished[1:])
        return audio / max(last - first, 1e-9)


def row(name: str, audio_s: float, wall_s: float, steady: float) -> str:
    realtime = audio_s / wall_s
    return f"| {name:22s} | {audio_s / 3600:7.2f} | {wall_s:7.1f} | {realtime:10.0f} | {steady:11.0f} |"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dawnchorus-scale-"))
    try:
        folder = root / "soundscapes"
        for index in range(args.files):
            write_audio(folder / f"scape{index:02d}.ogg", soundscape(args.minutes * 60, index), SAMPLE_RATE)
        model_path = calibrated_model(root / "model.pt", args.backbone)
        print(
            f"{args.files} x {args.minutes:g} min 32 kHz OGG, {args.backbone}, engine {args.engine}, "
            f"batch {args.batch_size}, "
            f"chunks of {args.chunk_s:g} s; {usable_cores()} cores; torch {torch.__version__}"
        )
        print("| run                    | audio h |  wall s | x realtime | steady x rt |")
        print("|------------------------|---------|---------|------------|-------------|")
        timeline = Timeline()
        started = time.perf_counter()
        model = load_model(model_path)
        engine = batch_function_for(model, args.engine, batch_size=args.batch_size)
        settings = PredictSettings(batch_size=args.batch_size, chunk_s=args.chunk_s, engine=args.engine)
        single = run_prediction(
            model, [folder], root / "single", settings, progress=timeline, batch_function=engine
        )
        wall = time.perf_counter() - started
        print(row("single process", single.audio_seconds, wall, timeline.steady_rate()), flush=True)
        for workers in args.workers:
            timeline = Timeline()
            started = time.perf_counter()
            summary = run_distributed_prediction(
                model_path, [folder], root / f"local{workers}", settings, cluster=f"local:{workers}",
                progress=timeline,
            )
            wall = time.perf_counter() - started
            name = f"--cluster local:{workers}"
            print(row(name, summary.audio_seconds, wall, timeline.steady_rate()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
