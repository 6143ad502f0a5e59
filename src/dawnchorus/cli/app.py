"""The ``dawnchorus`` command line: the Typer ``app``, its one error handler, and ``main()``.

Each command lives in the module of its group (synth.py, data.py, train.py, predict.py,
evaluate.py, report.py) as a plain function; this module registers them on ``app`` in the order
``--help`` lists them. Commands parse, call and print; no logic lives in cli/.

Every :class:`~dawnchorus.errors.DawnchorusError` a command lets through is caught here, once, by
the click group class ``app`` is built with (so the console script, ``python -m dawnchorus`` and
``CliRunner().invoke(app, ...)`` all go through it): ``error: MESSAGE`` on stderr, no traceback, exit
with the error's ``exit_code`` (2 bad input or usage, 1 a failed run). Any other exception is a bug
and surfaces as one.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from typer.core import TyperGroup

from dawnchorus.cli.calibrate import calibrate
from dawnchorus.cli.console import fail
from dawnchorus.cli.data import data_app
from dawnchorus.cli.embed import embed
from dawnchorus.cli.evaluate import evaluate, tune_thresholds_command
from dawnchorus.cli.predict import export, predict
from dawnchorus.cli.pseudo import pseudo_label
from dawnchorus.cli.report import demo, report
from dawnchorus.cli.review import review
from dawnchorus.cli.synth import synth
from dawnchorus.cli.train import augment_preview, train
from dawnchorus.errors import DawnchorusError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class DawnchorusGroup(TyperGroup):
    """The top-level command group: runs the chosen command and turns a DawnchorusError into its exit."""

    def invoke(self, ctx: typer.Context) -> Any:
        """Run the subcommand; print a DawnchorusError as one line and exit with its code."""
        try:
            return super().invoke(ctx)
        except DawnchorusError as exc:
            fail(str(exc), code=exc.exit_code)


app = typer.Typer(
    cls=DawnchorusGroup,
    help="Train bird-sound classifiers on short clips and find species in long field recordings.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
app.command()(synth)
app.command()(train)
app.command("augment-preview")(augment_preview)
app.command()(predict)
app.command()(embed)
app.command("pseudo-label")(pseudo_label)
app.command()(evaluate)
app.command("tune-thresholds")(tune_thresholds_command)
app.command()(calibrate)
app.command()(export)
app.command()(report)
app.command()(review)
app.command()(demo)


def main() -> None:
    """Entry point for ``python -m dawnchorus``."""
    app()
