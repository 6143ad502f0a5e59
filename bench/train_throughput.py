"""Training throughput: clips per second, first epoch (decoding) vs later epochs (decode cache).

Writes a synthetic training set (clips of 1-30 s at 22.05-48 kHz, as OGG/Vorbis: decoding and
resampling to 32 kHz is real work), then:

1. **data only**: the training DataLoader of ``dawnchorus.training.run`` (random crops, waveform
   augmentation, the configured workers) iterated twice over a fresh decode cache, no model: the
   first pass decodes, resamples and fills the cache, the second reads memory-mapped arrays;
2. **training**: ``dawnchorus.training.run.train`` for a few epochs with the default configuration
   (efficientnet_b0, random weights since tests and benches never download). Clips/s per epoch as
   logged by the run (``train/clips_per_s``; the epoch's wall time includes its validation pass).

The machine is shared: the load average at the start is printed; timings taken under load are noisy.

    python bench/train_throughput.py --quick
    python bench/train_throughput.py --clips 400 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import run_in_work_dir
from torch.utils.data import DataLoader

from dawnchorus.config import Config, build_config
from dawnchorus.data.datasets import AudioCache
from dawnchorus.data.layouts import load_training_set
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.datamodule import build_datasets
from dawnchorus.training.run import train

QUICK = {"clips": 64, "epochs": 2}
FULL = {"clips": 320, "epochs": 3}
SPECIES = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['clips']} clips, {QUICK['epochs']} epochs")
    parser.add_argument("--clips", type=int, default=None, help="training clips in the set")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--backbone", default=None, help="timm backbone (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: one per core)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data and runs here (default: a temporary folder, deleted)")
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace, epochs: int, cache_dir: Path) -> Config:
    overrides = {
        "model.pretrained": False,
        "model.backbone": args.backbone,
        "train.batch_size": args.batch_size,
        "train.epochs": epochs,
        "train.num_workers": args.workers,
        "train.cache_dir": str(cache_dir),
    }
    return build_config({}, overrides)


def data_only_rates(data: Path, config: Config, cache_dir: Path) -> list[float]:
    """Clips/s of two passes of the training DataLoader over a fresh cache (no model)."""
    training_set = load_training_set(data)
    train_set, *_ = build_datasets(training_set, config, AudioCache(cache_dir, config.audio.sample_rate))
    workers = config.train.num_workers if config.train.num_workers >= 0 else min(8, os.cpu_count() or 1)
    loader = DataLoader(train_set, batch_size=config.train.batch_size, shuffle=True, num_workers=workers)
    rates = []
    for _ in range(2):
        started, clips = time.perf_counter(), 0
        for batch in loader:
            clips += len(batch["audio"])
        rates.append(clips / (time.perf_counter() - started))
    return rates


def render(data_rates: list[float], epochs: list[dict[str, float]], config: Config) -> str:
    lines = [
        f"{'pass':<34}{'clips':>7}{'seconds':>9}{'clips/s':>9}",
        "-" * 59,
        f"{'data only, 1st pass (decode)':<34}{'':>7}{'':>9}{data_rates[0]:>9.1f}",
        f"{'data only, 2nd pass (cache)':<34}{'':>7}{'':>9}{data_rates[1]:>9.1f}",
    ]
    for entry in epochs:
        note = "decode + cache" if entry["epoch"] == 0 else "cached"
        label = f"train epoch {int(entry['epoch'])} ({note})"
        rate = entry["clips"] / max(entry["seconds"], 1e-9)
        lines.append(f"{label:<34}{int(entry['clips']):>7}{entry['seconds']:>9.1f}{rate:>9.1f}")
    first = epochs[0]["clips"] / epochs[0]["seconds"]
    later = [e["clips"] / e["seconds"] for e in epochs[1:]]
    if later:
        mean_later = sum(later) / len(later)
        lines.append(f"cached epochs vs first: {mean_later / first:.2f}x "
                     f"({config.model.backbone}, batch {config.train.batch_size})")
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> None:
    preset = QUICK if args.quick else FULL
    clips, epochs = args.clips or preset["clips"], args.epochs or preset["epochs"]
    data = work / "data"
    if not (data / "train_metadata.csv").is_file():
        summary = make_dataset(data, species=SPECIES, soundscapes=0, seed=0,
                               clips_per_species=(2, clips), total_clips=clips)
        print(f"data: {summary.n_clips} clips ({summary.train_seconds / 60:.1f} min of audio, "
              f"OGG at 22.05-48 kHz), written in {summary.elapsed_s:.0f} s")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    data_config = bench_config(args, epochs, work / "cache_data_only")
    data_rates = data_only_rates(data, data_config, work / "cache_data_only")
    config = bench_config(args, epochs, work / "cache_train")
    result = train(data, work / "run", config, progress_bar=False)
    print()
    print(render(data_rates, result.throughput, config))


def main(argv: list[str] | None = None) -> None:
    run_in_work_dir(run, parse_args(argv), prefix="dawnchorus_throughput_")


if __name__ == "__main__":
    main()
