"""``dawnchorus report`` and ``demo``: build the HTML report, run the whole method on synthetic data.

The report lives in report/, the demo in demo.py. Errors reach the user through the one handler in
:mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import console, fail


def report(
    run_dir: Annotated[Path, typer.Argument(help="A demo folder or a training run folder.")],
) -> None:
    """Write RUN_DIR/report.html (plots, metrics, detection timelines) with its images beside it."""
    from dawnchorus.report.html import build_report

    written = build_report(run_dir)
    console.print(f"[green]report written:[/] {written}")


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, model, predictions, report.")] = Path(
        "dawnchorus_demo"
    ),
    noise_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder of your background recordings: mixed into the synthetic soundscapes and into "
            "training clips (default: synthetic wind, rain, stream, insects)."
        ),
    ] = None,
    species: Annotated[int, typer.Option(help="Number of synthetic species.")] = 8,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (default: the demo's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    backbone: Annotated[
        str | None, typer.Option(help="timm backbone, trained from scratch (default: test_efficientnet).")
    ] = None,
) -> None:
    """The whole method on a small synthetic set: data, training, prediction, evaluation, report."""
    from dawnchorus.demo import run_demo

    if noise_dir is not None and not noise_dir.is_dir():
        fail(f"--noise-dir {noise_dir}: folder not found")
    run_demo(
        out,
        noise_dir=noise_dir,
        species=species,
        epochs=epochs,
        seed=seed,
        console=console,
        backbone=backbone,
    )
