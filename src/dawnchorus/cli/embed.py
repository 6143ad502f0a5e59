"""``dawnchorus embed``: parse options, build the backbone, show progress, print where the table went.

Backbones live in :mod:`dawnchorus.embed`, the run in :mod:`dawnchorus.inference.embeddings`. Errors
reach the user through the one handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import (
    PARTIAL_FAILURE_EXIT,
    console,
    print_failures,
    print_summary,
    require_inputs,
)


def embed(
    backbone: Annotated[str, typer.Argument(metavar="BACKBONE", help="birdnet or perch-v2.")],
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", help="Files, folders, or .txt lists.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("embeddings"),
    window: Annotated[
        float | None, typer.Option(help="Seconds per row (default: the backbone's window, 3 s / 5 s).")
    ] = None,
    hop: Annotated[
        float | None, typer.Option(help="Seconds between window starts (default: the window).")
    ] = None,
    pooling: Annotated[
        str, typer.Option(help="mean or max: how a window longer than the backbone's pools its sub-windows.")
    ] = "mean",
    sub_windows: Annotated[
        int | None,
        typer.Option(help="Backbone windows per row when --window is longer (default: fewest covering it)."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Backbone weights file (perch-v2: its ONNX file; birdnet: a .tflite).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 16,
    threads: Annotated[int | None, typer.Option(help="Backbone threads (default: the usable cores).")] = None,
) -> None:
    """Per-window embeddings of long recordings to Parquet (file, start_s, end_s, e0...); resumable.

    birdnet: BirdNET 2.4 (48 kHz, 3 s, 1024-d), pip install "dawnchorus\\[birdnet]"; licence CC BY-NC-SA 4.0.

    perch-v2: Perch 2.0 (32 kHz, 5 s, 1536-d), Apache-2.0; give its file: --weights perch_v2.onnx.

    Bad files are listed in OUT/errors.csv; a re-run skips finished recordings.
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dawnchorus.embed.registry import create_embedding_model, embedding_model_spec
    from dawnchorus.inference.embeddings import EmbedSettings, run_embedding
    from dawnchorus.inference.windows import expand_inputs

    embedding_model_spec(backbone)  # an unknown name fails before anything is loaded
    settings = EmbedSettings(
        window_s=window, hop_s=hop, pooling=pooling, sub_windows=sub_windows, batch_size=batch_size
    )
    options = {"threads": threads} | ({"weights": weights} if weights is not None else {})
    model = create_embedding_model(backbone, **options)
    require_inputs(inputs)
    console.print(
        escape(f"backbone: {model.name} {model.version} ({model.weights_path.name}, SHA-256 "
        f"{model.weights_sha256[:12]}), licence {model.licence}; {settings.window_for(model):g}-s windows, "
        f"hop {settings.hop_for(model):g} s, {settings.sub_window_count(model)} sub-window(s), "
        f"{settings.pooling} pooling"),
        highlight=False,
    )
    total = len(expand_inputs(inputs))
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("recordings", total=total, rate="")
        started = time.perf_counter()
        audio_s = 0.0

        def report(result, done: int, todo: int) -> None:
            nonlocal audio_s
            audio_s += result.duration_s
            rate = f"{audio_s / max(time.perf_counter() - started, 1e-9):.0f}x real time"
            progress.update(task, total=todo, completed=done, rate=rate)

        summary = run_embedding(model, inputs, out, settings, progress=report)
    print_failures(summary.failed)
    print_summary(
        f"{summary.embedded} recordings embedded, {summary.skipped} already complete, "
        f"{len(summary.failed)} failed; {summary.windows} windows, {summary.audio_seconds / 3600:.3f} h of "
        f"audio in {summary.wall_seconds:.1f} s ({summary.realtime_factor:.0f}x real time)",
        {"embeddings": summary.table, "errors": summary.out_dir / "errors.csv"},
    )
    if summary.failed:  # listed above and in errors.csv: a run that lost recordings never exits 0
        raise typer.Exit(PARTIAL_FAILURE_EXIT)
