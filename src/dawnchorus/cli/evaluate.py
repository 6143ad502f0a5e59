"""``dawnchorus evaluate`` and ``tune-thresholds``: score predictions, store tuned thresholds.

Scoring lives in evaluate/, threshold tuning on soundscapes in inference/. Errors reach the user
through the one handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import console, fail, load_model_or_fail, print_skipped


def evaluate(
    predictions: Annotated[Path, typer.Argument(help="predictions.csv or .parquet from predict.")],
    labels: Annotated[Path, typer.Argument(help="BirdCLEF label CSV, a Raven table, or a folder of tables.")],
    model_path: Annotated[
        Path | None, typer.Option("--model", help="Use this model's thresholds and scored labels.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="One threshold for every class.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON to this file.")] = None,
) -> None:
    """Score predictions against labelled soundscapes (BirdCLEF 2022, 2023 and 2024/25 metrics)."""
    import json

    from dawnchorus.evaluate.metrics import evaluate_files
    from dawnchorus.io.files import atomic_write_text

    model = load_model_or_fail(model_path) if model_path else None
    try:
        result = evaluate_files(predictions, labels, model=model, threshold=threshold)
    except FileNotFoundError as exc:  # a missing input file is a usage error
        fail(str(exc))
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
    if json_out:
        print(json.dumps(result, indent=2))
        return
    from dawnchorus.report.html import render_evaluation

    render_evaluation(result, console)


def tune_thresholds_command(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file to update.")],
    labelled: Annotated[
        Path, typer.Argument(help="Folder with soundscapes and a label CSV (or a BirdCLEF data set).")
    ],
    labels_file: Annotated[
        Path | None, typer.Option("--labels", help="Label CSV (default: the folder's test_labels.csv).")
    ] = None,
    min_support: Annotated[int, typer.Option(help="Positives a class needs for its own threshold.")] = 3,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the tuned model here (default: in place).")
    ] = None,
) -> None:
    """Choose global and per-class thresholds maximising F1 on labelled soundscapes; store them."""
    from dawnchorus.inference.run import tune_model_thresholds

    model = load_model_or_fail(model_path)
    try:
        result = tune_model_thresholds(model, labelled, labels_file, min_support=min_support)
    except FileNotFoundError as exc:  # no labelled set, label CSV or recordings: a usage error
        fail(str(exc))
    print_skipped(result["skipped"])
    written = model.save(out or model_path)
    skipped = f"; {len(result['skipped'])} unreadable soundscape(s) skipped" if result["skipped"] else ""
    console.print(
        f"[green]thresholds stored in[/] {written}: global {result['global']:.2f}; "
        f"{result['n_own']} of {len(model.labels)} classes have their own; "
        f"macro F1 {result['f1_before']:.3f} -> {result['f1_after']:.3f} on {result['n_windows']} windows"
        f"{skipped}"
    )
