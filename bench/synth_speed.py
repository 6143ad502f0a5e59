"""How fast is the synthetic data set generator at BirdCLEF size?

Writes a data set with ``dawnchorus.synth.soundscapes.make_dataset`` (152 species, ~15,000 clips by
default, the
size of the BirdCLEF 2022 training set) and prints species, clips, hours of audio, bytes written,
wall seconds and clips per second. The output folder is a temporary one, deleted afterwards, unless
``--out`` is given.

    python bench/synth_speed.py --quick                      # 20 species, 500 clips
    python bench/synth_speed.py --species 152 --clips 15000 --workers 2 --out /tmp/synth_full
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from dawnchorus.io.files import usable_cores
from dawnchorus.synth.soundscapes import make_dataset

QUICK = {"species": 20, "clips": 500}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", type=int, default=152, help="species (default 152)")
    parser.add_argument("--clips", type=int, default=15000, help="training clips in total")
    parser.add_argument("--max-per-species", type=int, default=500,
                        help="clip cap for the commonest species (BirdCLEF 2022 used 500)")
    parser.add_argument("--soundscapes", type=int, default=8, help="60-s test soundscapes")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes (default: all {usable_cores()} cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, kept (default: a temporary folder, deleted)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small run: {QUICK['species']} species, {QUICK['clips']} clips")
    args = parser.parse_args(argv)
    if args.quick:
        args.species, args.clips = QUICK["species"], QUICK["clips"]
    return args


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report_progress(stage: str, done: int, total: int) -> None:
    """One line per tenth of each stage, on stderr."""
    step = max(1, total // 10)
    if done == total or (done and done % step == 0):
        print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="synth_bench_")) / "data" if temporary else args.out
    cpu_before = cpu_seconds()
    try:
        summary = make_dataset(
            out,
            species=args.species,
            soundscapes=args.soundscapes,
            seed=args.seed,
            clips_per_species=(1, args.max_per_species),
            total_clips=args.clips,
            workers=args.workers,
            progress=report_progress,
        )
        cpu = cpu_seconds() - cpu_before
        written = folder_bytes(out)
    finally:
        if temporary:
            shutil.rmtree(out.parent, ignore_errors=True)
    counts = sorted(summary.clips_per_species.values())
    rows = [
        ("species", f"{len(summary.species)}"),
        ("clips", f"{summary.n_clips}"),
        ("clips per species", f"min {counts[0]}, median {counts[len(counts) // 2]}, "
                              f"max {counts[-1]}"),
        ("hours of audio (train)", f"{summary.train_seconds / 3600:.2f}"),
        ("hours of audio (soundscapes)", f"{summary.soundscape_seconds / 3600:.2f}"),
        ("bytes written", f"{written:,} ({written / 2**30:.2f} GiB)"),
        ("workers", f"{args.workers or usable_cores()}"),
        ("wall seconds", f"{summary.elapsed_s:.1f}"),
        ("CPU seconds (all processes)", f"{cpu:.1f}"),
        ("clips/s", f"{summary.n_clips / summary.elapsed_s:.1f}"),
        ("audio x real time", f"{summary.train_seconds / summary.elapsed_s:.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
