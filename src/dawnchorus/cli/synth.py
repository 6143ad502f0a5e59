"""``dawnchorus synth``: write a synthetic data set. Parses options and prints; generation lives in synth/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import console, fail


def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    species: Annotated[int, typer.Option(help="Number of species.")] = 12,
    soundscapes: Annotated[int, typer.Option(help="Number of 60-s labelled test soundscapes.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    noise_dir: Annotated[
        Path | None, typer.Option(help="Folder of background recordings mixed into soundscapes.")
    ] = None,
    clean_copies: Annotated[bool, typer.Option(help="Also write noise-free soundscape copies.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a data set already in OUT.")] = False,
    bouts: Annotated[
        bool,
        typer.Option(
            help="Fill the soundscapes with song bouts: each bird sings for 10-60 s, starting anywhere "
            "relative to the 5-s windows, so a species is labelled in runs of neighbouring windows "
            "(as at dawn; what --smoothing and --overlap-average of predict rely on). Listed in "
            "test_bouts.csv. Default: independent calls per window."
        ),
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Write a synthetic data set in the BirdCLEF 2022 layout (the same seed, the same data)."""
    from rich.progress import Progress

    from dawnchorus.synth.soundscapes import make_dataset

    if noise_dir is not None and not noise_dir.is_dir():
        fail(f"--noise-dir {noise_dir}: folder not found")
    with Progress(console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        summary = make_dataset(
            out,
            species=species,
            soundscapes=soundscapes,
            seed=seed,
            noise_dir=noise_dir,
            clean_copies=clean_copies,
            progress=report,
            overwrite=overwrite,
            workers=workers,
            bouts=bouts,
        )
    console.print(
        f"[green]wrote[/] {summary.n_clips} clips of {len(summary.species)} species "
        f"({summary.train_seconds / 60:.1f} min) and {len(summary.soundscape_ids)} soundscapes"
        f"{' of song bouts' if bouts else ''} "
        f"to {out} in {summary.elapsed_s:.1f} s"
    )
