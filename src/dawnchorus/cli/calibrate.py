"""``dawnchorus calibrate``: per-species precision, thresholds and calibration from a reviewed run.

The numbers come from :mod:`dawnchorus.evaluate.verified` (over
:mod:`dawnchorus.evaluate.calibration`); this module parses, prints the table and saves the model.
Errors reach the user through the one handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dawnchorus.cli.console import console, fail, load_model_or_fail

if TYPE_CHECKING:
    from rich.table import Table

    from dawnchorus.evaluate.verified import SpeciesReview


def calibrate(
    results_dir: Annotated[
        Path, typer.Argument(metavar="RESULTS_DIR", help="A predict --out folder, reviewed."),
    ],
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="The model that predicted the run: fit thresholds and calibration and store them in it. "
            "Without it, the model RESULTS_DIR/run.json names (when its file is unchanged since the run) is "
            "fitted and shown but written only with --out; without either, the precision table only.",
        ),
    ] = None,
    target_precision: Annotated[
        float, typer.Option(min=0.01, max=1.0, help="Precision each species' threshold must reach.")
    ] = 0.9,
    min_verdicts: Annotated[
        int, typer.Option(min=1, help="Random-sample verdicts a threshold needs at or above it.")
    ] = 10,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0,
            help="Report precision at this threshold (default: the model's, else the run's, else 0.5).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the calibrated model here (default: in place, with --model)."),
    ] = None,
) -> None:
    """Per-species precision (95 % interval, from the random-sample verdicts) of a reviewed run; with
    --model, the threshold reaching --target-precision and a logistic calibration (score -> probability
    of a true detection) per species, written into the model file (predict --calibrated reports them)."""
    from dawnchorus.evaluate.verified import (
        fitted_model_settings,
        read_reviewed_run,
        review_species,
        scores_were_calibrated,
    )

    model_given = model_path is not None
    if model_path is None:
        model_path = _model_of_run(results_dir)
    if out is not None and model_path is None:
        fail("--out needs --model (the model file to calibrate)")
    table, verdicts = read_reviewed_run(results_dir)
    model = load_model_or_fail(model_path) if model_path is not None else None
    if model is not None and scores_were_calibrated(results_dir):
        fail(
            f"{results_dir}: its scores are calibrated ones (predict --calibrated); fit a calibration on "
            "a run predicted without --calibrated"
        )
    run_labels = [c for c in table.columns if c not in ("file", "start_s", "end_s")]
    if model is not None:
        missing = [label for label in run_labels if label not in model.labels]
        if missing:
            fail(
                f"{results_dir}: predicted labels the model {model_path} lacks ({', '.join(missing[:5])}); "
                "give the model that predicted this run"
            )
        own = dict(zip(model.labels, model.class_thresholds.tolist(), strict=True))
    else:  # the thresholds the run applied
        from dawnchorus.io.runinfo import read_run_info

        info = read_run_info(results_dir)
        own = dict(info.thresholds) if info is not None else {}
    thresholds = {label: threshold if threshold is not None else own.get(label, 0.5) for label in run_labels}
    target = target_precision if model is not None else None
    reviews = review_species(table, verdicts, thresholds, target=target, min_count=min_verdicts)
    if not reviews:
        fail(f"{results_dir}: no verdict names a label of the run's table")
    console.print(_table(reviews, target))
    if model is None:
        return
    per_class, calibration = fitted_model_settings(
        reviews, model.labels, model.class_thresholds.tolist(), model.calibration, target
    )
    if not model_given and out is None:  # a model file is never rewritten unless the user named it
        from rich.markup import escape

        console.print(
            f"[yellow]not written:[/] give --model {escape(str(model_path))} to store this fit in it, "
            "or --out PATH for a calibrated copy",
            highlight=False, soft_wrap=True,
        )
        return
    model.thresholds = {"global": float(model.thresholds.get("global", 0.5)), "per_class": per_class}
    model.calibration = calibration
    written = model.save(out or model_path)
    reached = sum(1 for r in reviews if r.choice is not None and r.choice.reached)
    fitted = sum(1 for r in reviews if r.calibration is not None)
    console.print(
        f"[green]calibrated:[/] {written}: {reached} of {len(reviews)} species reached precision "
        f"{target_precision:g} (the others keep their threshold); {fitted} calibrated",
        highlight=False, soft_wrap=True,
    )


def _model_of_run(results_dir: Path) -> Path | None:
    """The model run.json names, when its file is unchanged since the run and the run's scores are
    not calibrated ones (said on the console); else None (and why, when there is a run.json)."""
    from rich.markup import escape

    from dawnchorus.io.runinfo import read_run_info, unchanged_model

    info = read_run_info(results_dir)
    if info is None:
        return None
    path, why = unchanged_model(info)
    if path is not None and info.settings.get("calibrated"):
        path, why = None, f"{info.path}: the run's scores are calibrated ones"
    if path is None:
        console.print(f"[yellow]note:[/] {escape(why)}; give --model to fit thresholds and a calibration",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"model: {escape(str(path))} (named by {escape(str(info.path))})",
                      highlight=False, soft_wrap=True)
    return path


def _table(reviews: Sequence[SpeciesReview], target: float | None) -> Table:
    """The per-species table: verdicts, precision at the threshold, and with a target the fit."""
    from rich.table import Table

    table = Table(title="per-species precision from the review (95 % Wilson interval, stratified sample)")
    for name in ("species", "verified", "random", "threshold", "precision", "95 % interval"):
        table.add_column(name, justify="left" if name == "species" else "right")
    if target is not None:
        table.add_column(f"threshold for {target:g}", justify="right")
        table.add_column("precision there", justify="right")
        table.add_column("slope", justify="right")
        table.add_column("intercept", justify="right")
    for review in reviews:
        estimate = review.precision
        row = [
            review.label, str(review.n_verdicts), str(review.n_random), f"{review.threshold:.3f}",
            "-" if estimate.precision is None else f"{estimate.precision:.3f}",
            f"{estimate.low:.3f}-{estimate.high:.3f}",
        ]
        if target is not None:
            choice = review.choice
            if choice is not None and choice.reached:
                row += [f"{choice.threshold:.3f}", f"{choice.precision:.3f}"]
            else:
                row += [f"not reached: {choice.reason if choice else ''}", "-"]
            if review.calibration is not None:
                row += [f"{review.calibration.slope:.3f}", f"{review.calibration.intercept:.3f}"]
            else:
                row += [f"none: {review.calibration_problem}", "-"]
        table.add_row(*row)
    return table
