"""``dawnchorus pseudo-label``: parse options, show progress, print what was kept per species.

Pseudo-labelling lives in :mod:`dawnchorus.training.pseudo`. Errors reach the user through the one
handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import (
    PARTIAL_FAILURE_EXIT,
    console,
    load_model_or_fail,
    print_failures,
    print_summary,
    require_inputs,
)


def pseudo_label(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="The teacher: a model file.")],
    inputs: Annotated[
        list[Path], typer.Argument(metavar="RECORDINGS...", help="Unlabelled files, folders or .txt lists.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Pseudo-label folder (PL).")] = Path("pseudo"),
    keep: Annotated[
        float | None, typer.Option(help="Keep a window when its largest probability is >= this (0: all).")
    ] = None,
    floor: Annotated[float | None, typer.Option(help="Probabilities below this become 0.")] = None,
    power: Annotated[float | None, typer.Option(help="Soft targets p ** power (1: unchanged).")] = None,
    hop: Annotated[float | None, typer.Option(help="Seconds between windows (default: clip length).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML training settings; their selftrain.pseudo section is used.")
    ] = None,
    engine: Annotated[str, typer.Option(help="auto, torch or onnx (as for predict).")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: best available).")] = None,
    weights: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE",
            help="A teacher on a frozen backbone: the backbone's weights file (as for predict --weights).",
        ),
    ] = None,
) -> None:
    """Soft labels of a teacher model for every window of unlabelled recordings; resumable.

    Writes PL/pseudo_labels.parquet (file, start_s, end_s, one soft target per label; kept windows
    only), PL/pseudo_labels.json (settings, teacher SHA-256, counts) and the teacher's run in
    PL/teacher/ (a re-run resumes from it). Exit status 1 when some recordings could not be read
    (each named, and in PL/teacher/errors.csv).
    """
    from dawnchorus.config import build_predict_settings, load_config
    from dawnchorus.training.pseudo import TABLE_NAME
    from dawnchorus.training.pseudo import pseudo_label as run_pseudo_label

    require_inputs(inputs)
    teacher = load_model_or_fail(model_path, build_network=False)
    if weights:
        from dawnchorus.inference.frozen import use_backbone_weights

        use_backbone_weights([teacher], weights)  # the file's SHA-256 checked against the teacher's record
    overrides = {
        "selftrain.pseudo.keep": keep,
        "selftrain.pseudo.floor": floor,
        "selftrain.pseudo.power": power,
        "selftrain.pseudo.hop_s": hop,
    }
    settings = load_config(config, overrides).selftrain.pseudo
    predict_settings = build_predict_settings({"engine": engine, "device": device})
    with console.status("pseudo-labelling", spinner="dots") as status:

        def report(result, done: int, total: int) -> None:
            status.update(f"pseudo-labelling: {done}/{total} recordings")

        run = run_pseudo_label(teacher, inputs, out, settings, predict_settings, progress=report)
    for label, counts in run.per_label.items():
        console.print(
            f"  {label:20s} {counts['present']:7d} windows >= 0.5   soft sum {counts['soft']:10.1f}",
            highlight=False,
        )
    print_failures(run.failed)
    print_summary(
        f"{run.kept} of {run.windows} windows kept (keep {settings.keep:g}, floor {settings.floor:g}, "
        f"power {settings.power:g}); {run.predicted} recordings predicted, {run.skipped} already "
        f"complete, {len(run.failed)} failed",
        {"pseudo-labels": run.out_dir / TABLE_NAME},
    )
    if run.failed:
        raise typer.Exit(PARTIAL_FAILURE_EXIT)
