"""``dawnchorus data ...``: the training-set commands (``data check``). Reading and checking live in data/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import console, fail
from dawnchorus.errors import DatasetError

data_app = typer.Typer(help="Inspect and validate training sets.", no_args_is_help=True)


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="BirdCLEF layout (train_metadata.csv) or folder per class.")],
) -> None:
    """Summarise a training set and list every problem; exits 1 when there are problems."""
    from dawnchorus.data.check import render_summary, summarize
    from dawnchorus.data.layouts import load_training_set

    if not root.exists():
        fail(f"{root}: not found")
    try:
        training_set = load_training_set(root, on_problem="keep")
    except DatasetError as exc:  # a set with problems is this command's answer: exit 1, not 2
        fail(str(exc), code=1)
    summary = summarize(training_set)
    render_summary(summary, console)
    if summary.problems:
        raise typer.Exit(1)
