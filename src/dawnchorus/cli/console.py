"""What every command shares: the consoles, the one way to print an error, and loading a model file.

Owns the output side of the command line (stdout ``console``, stderr ``err_console``) and
:func:`fail`. It does not catch errors: :mod:`dawnchorus.cli.app` catches every
:class:`~dawnchorus.errors.DawnchorusError` once, for all commands, and prints it with :func:`print_error`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel

# The exit status of a run that finished but could not use every recording (README, exit codes).
PARTIAL_FAILURE_EXIT = 1

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr, unwrapped (long paths stay whole); square brackets in the
    message are text, not markup (``pip install "dawnchorus[birdnet]"`` stays whole)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_failures(failed: Iterable[tuple[str, str]]) -> None:
    """One unwrapped ``failed: FILE: REASON`` line on stderr per recording a run could not use."""
    for file, reason in failed:
        err_console.print(f"[red]failed:[/] {escape(f'{file}: {reason}')}", highlight=False, soft_wrap=True)


def print_skipped(skipped: Iterable[tuple[str, str]]) -> None:
    """One unwrapped ``skipped: FILE: REASON`` line on stderr per input a run left out and went on."""
    for file, reason in skipped:
        line = escape(f"{file}: {reason}")
        err_console.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)


def print_summary(line: str, outputs: Mapping[str, Path]) -> None:
    """A run's ``done:`` line (rich markup allowed) and where each output went, unwrapped."""
    console.print(f"[green]done:[/] {line}", highlight=False, soft_wrap=True)
    for name, path in outputs.items():
        console.print(f"  {name:13s} {escape(str(path))}", highlight=False, soft_wrap=True)


def require_inputs(inputs: Sequence[Path]) -> None:
    """A mistyped input argument is a usage error (exit 2); a missing file in a list: the run reports it."""
    for item in inputs:
        if not item.exists() and not item.is_symlink():
            fail(f"{item}: input not found (no such file or folder)")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error and exit non-zero (2: bad input or usage, 1: a failed run)."""
    print_error(message)
    raise typer.Exit(code)


def load_model_or_fail(path: Path, *, build_network: bool = True) -> LoadedModel:
    """Load a model file; a missing file is a usage error (exit 2), not a traceback.

    ``build_network=False``: the timm network is built on first use (see
    :func:`dawnchorus.models.modelfile.load_model`)."""
    from dawnchorus.models.modelfile import load_model

    try:
        return load_model(path, build_network=build_network)
    except FileNotFoundError as exc:  # load_model raises the builtin for a missing file
        fail(str(exc))
