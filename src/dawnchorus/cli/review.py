"""``dawnchorus review``: review a predict run in the browser, or export its verified selections.

The app, the items and the exports live in review/, the verdict store in io/verdicts.py. Errors reach
the user through the one handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dawnchorus.cli.console import console, fail, load_model_or_fail

INSTALL_HINT = 'pip install "dawnchorus[review]"'


def review(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR", help="A predict output folder.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback needs the printed token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 8765,
    reviewer: Annotated[
        str | None, typer.Option(help="Name saved with verdicts (default: your user name).")
    ] = None,
    audio: Annotated[
        list[Path] | None,
        typer.Option(
            "--audio",
            help="Folder to look for recordings in, when not where predict read them (run.json says where).",
        ),
    ] = None,
    model_path: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A model file whose per-species thresholds to use (default: those the run applied, from "
            "RESULTS_DIR/run.json, else 0.5).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Threshold for every species (default: --model's, else the run's, else 0.5)."),
    ] = None,
    export_format: Annotated[
        str | None, typer.Option("--export", help="raven or csv: write the verified selections, no server.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="With --export: the file to write.")] = None,
) -> None:
    """Review the detections of a predict run in the browser; verdicts go to RESULTS_DIR/reviews.sqlite.

    Prints the URL and serves until Ctrl-C, then the verdicts per species. With --export raven|csv
    --out PATH: writes the verified selections (verdict present, or another species) and exits.
    """
    from dawnchorus.io.verdicts import REVIEWS_FILE, VerdictStore, read_verdicts
    from dawnchorus.review.items import open_run

    thresholds = None
    if model_path is not None and threshold is None:  # else open_run takes run.json's
        model = load_model_or_fail(model_path, build_network=False)
        # float32 in the file: shown as 0.3, not 0.30000001
        cutoffs = [round(float(t), 6) for t in model.class_thresholds]
        thresholds = dict(zip(model.labels, cutoffs, strict=True))
    source = str(model_path)

    if export_format is not None:
        from dawnchorus.review.export import EXPORT_FORMATS, export

        if export_format not in EXPORT_FORMATS:
            fail(f"--export must be one of {', '.join(EXPORT_FORMATS)}, not {export_format!r}")
        if out is None:
            fail("--export needs --out PATH: the file to write")
        run = open_run(results_dir, audio, threshold, thresholds, source)
        written, count = export(run, read_verdicts(results_dir), export_format, out)
        console.print(f"[green]exported[/] {count} verified selection(s) to {written}", soft_wrap=True)
        return
    if out is not None:
        fail("--out goes with --export raven|csv")
    try:
        from dawnchorus.review.app import create_app, is_loopback, new_token, serve
    except ImportError as exc:
        fail(f"dawnchorus review needs {exc.name or 'starlette and uvicorn'}: {INSTALL_HINT}")
    run = open_run(results_dir, audio, threshold, thresholds, source)
    store = VerdictStore(results_dir / REVIEWS_FILE)
    token = None if is_loopback(host) else new_token()
    app = create_app(run, store, reviewer if reviewer is not None else _user(), token)
    missing = [run.files[rid] for rid, path in run.recordings.items() if path is None]
    if missing:
        console.print(
            f"[yellow]warning:[/] {len(missing)} recording(s) not found (e.g. {missing[0]}); "
            "their windows are listed without sound: give --audio DIR", soft_wrap=True, highlight=False,
        )

    def ready(bound: int) -> None:
        shown = host if ":" not in host else f"[{host}]"
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        console.print(
            f"reviewing {run.pairs} item(s) of {escape(str(results_dir))}; thresholds: "
            f"{escape(run.threshold_source)}", soft_wrap=True, highlight=False,
        )
        console.print(f"open {escape(url)}  (Ctrl-C to stop)", soft_wrap=True, highlight=False)
        sys.stdout.flush()

    serve(app, host, port, ready)
    _print_summary(store.frame())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _print_summary(verdicts) -> None:
    """The verdicts per species, one line each."""
    if verdicts.empty:
        console.print("no verdicts given")
        return
    console.print(f"[green]done:[/] {len(verdicts)} verdict(s)", highlight=False)
    for label, group in verdicts.groupby("label"):
        counts = group["verdict"].value_counts()
        text = ", ".join(f"{counts[v]} {v}" for v in ("present", "absent", "unsure", "other") if v in counts)
        console.print(f"  {label}: {text}", soft_wrap=True, highlight=False)
