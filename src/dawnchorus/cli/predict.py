"""``dawnchorus predict`` and ``export``: parse options, show progress, print where outputs went.

Prediction lives in inference/ (runners, engines, ONNX export). Errors reach the user through the one
handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dawnchorus.cli.console import (
    PARTIAL_FAILURE_EXIT,
    console,
    fail,
    load_model_or_fail,
    print_failures,
    print_summary,
    require_inputs,
)
from dawnchorus.errors import ExportError

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel


def predict(
    ctx: typer.Context,
    model_path: Annotated[
        Path, typer.Argument(metavar="MODEL...", help="Model file(s) written by train; several: an ensemble.")
    ],
    inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", help="Files, folders, or .txt lists.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("predictions"),
    hop: Annotated[
        float | None, typer.Option(help="Seconds between window starts (default: clip length).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Windows per batch (default: 4 on CPU, 64 on a GPU).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Detection threshold (default: the model's per-class ones).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="Comma-separated: csv,parquet,birdclef,raven,audacity.")
    ] = "csv,parquet,birdclef,raven,audacity",
    merge: Annotated[bool, typer.Option(help="Merge consecutive detections of a species.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (default: best available).")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="Run on dask: local, local:N, tcp://HOST:PORT, or slurm (see --config)."),
    ] = None,
    chunk: Annotated[
        float, typer.Option(help="With --cluster: seconds per chunk that long recordings are split into.")
    ] = 600.0,
    config_path: Annotated[
        Path | None, typer.Option("--config", help="YAML settings; its cluster: section sets up SLURM jobs.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="auto (onnx on CPU when the 'onnx' extra is installed, else torch), torch, onnx "
            "(exported once and cached beside the model), or onnx-int8 (CPU: the CNN quantised to int8, "
            "calibrated once on the given recordings or by 'export --int8'; ~40% less CNN CPU on the "
            "default network; measured against fp32 there macro ROC-AUC +0.0002 +- 0.0029 (at most "
            "0.0071) and padded cmAP -0.0001 +- 0.0021 (at most 0.0037): see bench/README.md)."
        ),
    ] = "auto",
    smoothing: Annotated[
        str | None,
        typer.Option(
            help="Smooth each species over neighbouring windows with this kernel (odd length, "
            "normalised), e.g. 0.1,0.2,0.4,0.2,0.1; none: off (the default)."
        ),
    ] = None,
    overlap_average: Annotated[
        bool,
        typer.Option(
            help="With --hop dividing the window (e.g. 2.5 for 5-s windows): average overlapping "
            "windows back onto the non-overlapping window grid."
        ),
    ] = False,
    max_scaling: Annotated[
        float | None,
        typer.Option(
            help="Per-recording max scaling A in (0, 1]: p * (1 - A + A * max over the recording of "
            "that species); off by default."
        ),
    ] = None,
    calibrated: Annotated[
        bool,
        typer.Option(
            help="Report calibrated scores (probability of a true detection) from the calibration "
            "'dawnchorus calibrate' stored in the model."
        ),
    ] = False,
    ensemble_weights: Annotated[
        str | None,
        typer.Option(
            "--ensemble-weights",
            help="With several models: one weight per model, e.g. 0.6,0.4 (default: equal).",
        ),
    ] = None,
    weights: Annotated[
        list[str] | None,
        typer.Option(
            "--weights",
            metavar="FILE",
            help="A model on a frozen backbone: the backbone's weights file (birdnet .tflite, perch-v2 "
            ".onnx), checked against the SHA-256 its model file records; repeatable (an ensemble's "
            "members each take the file that fits). Default: the file it was trained with if still "
            "there, else the backbone's own. A list of numbers (0.6,0.4) weighs an ensemble as "
            "--ensemble-weights does.",
        ),
    ] = None,
) -> None:
    """Predict species per window in long recordings; resumable, bad files reported and skipped.

    Several leading model files (ending .pt) make an ensemble: their probabilities are averaged per
    window (weights: --ensemble-weights), and its detection thresholds are the members' per-class
    ones, averaged alike.

    A model trained on a frozen backbone (train --backbone birdnet / perch-v2) holds the backbone's
    name and SHA-256, not its weights: give the weights file with --weights FILE when it is not where
    it was at training (or for perch-v2 set DAWNCHORUS_PERCH_V2_ONNX).

    Exit status: 0 every recording predicted, 1 some could not be (listed and in errors.csv), 2 bad
    input or usage (nothing predicted).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dawnchorus.config import load_predict_settings
    from dawnchorus.inference.engines import load_for_prediction
    from dawnchorus.inference.ensemble import (
        check_member_file,
        describe_predictor,
        looks_like_model_file,
        predictor_batch_function,
        predictor_of,
    )
    from dawnchorus.inference.run import run_prediction
    from dawnchorus.inference.windows import expand_inputs

    # Every leading model file is an ensemble member; the first argument that is not one starts the inputs.
    members = [model_path]
    while inputs and looks_like_model_file(inputs[0]):
        members.append(inputs.pop(0))
    if not inputs:
        fail("no recordings given after the model file(s)")
    require_inputs(inputs)
    for member in members:
        check_member_file(member)
    # The timm network is built only if the engine runs it (not the ONNX engine on a cached graph,
    # whose record gives the model without torch: load_for_prediction).
    try:
        loaded = [load_for_prediction(member) for member in members]
    except FileNotFoundError as exc:  # load_model raises the builtin for a missing file
        fail(str(exc))
    backbone_files, numbers = _split_weights(weights or [])
    if numbers is not None:  # --weights 0.6,0.4: ensemble weights, as before --ensemble-weights
        if ensemble_weights is not None:
            fail("ensemble weights given twice (--weights and --ensemble-weights)")
        ensemble_weights = numbers
    if backbone_files:
        from dawnchorus.inference.frozen import use_backbone_weights

        use_backbone_weights(loaded, backbone_files)  # each file's SHA-256 checked against the models
    # The --config file gives the settings; options typed on the command line override it.
    options = {
        "hop_s": ("hop", hop),
        "batch_size": ("batch_size", batch_size),
        "threshold": ("threshold", threshold),
        "formats": ("output_format", output_format),
        "merge": ("merge", merge),
        "device": ("device", device),
        "chunk_s": ("chunk", chunk),
        "engine": ("engine", engine),
        "smoothing": ("smoothing", smoothing),
        "overlap_average": ("overlap_average", overlap_average),
        "max_scaling": ("max_scaling", max_scaling),
        "calibrated": ("calibrated", calibrated),
        "ensemble_weights": ("ensemble_weights", ensemble_weights),
    }
    overrides = {
        field: value
        for field, (name, value) in options.items()
        if config_path is None or _typed(ctx, name) or (field == "ensemble_weights" and numbers is not None)
    }
    settings = load_predict_settings(config_path, overrides)
    model = predictor_of(loaded, settings.ensemble_weights)  # checks an ensemble's labels and windows
    if settings.engine == "onnx-int8":  # calibrated on these recordings unless a graph is cached
        from dawnchorus.inference.quantise import prepare_int8

        try:
            prepare_int8(loaded, inputs)
        except ExportError as exc:
            fail(str(exc))
    batch_function = None
    if cluster is None:
        from dawnchorus.inference.engines import resolve_batch_size

        windows_per_batch = resolve_batch_size(settings.batch_size, settings.device)
        try:  # builds (and checks) the network where the engine needs it, before any output
            batch_function = predictor_batch_function(
                model, settings.engine, device=settings.device, batch_size=windows_per_batch
            )
        except ExportError as exc:  # an engine that cannot be used here is a usage error: exit 2
            fail(str(exc))
    elif any(member.backbone is not None for member in loaded):
        from dawnchorus.inference.frozen import model_backbone

        for member in (m for m in loaded if m.backbone is not None):
            model_backbone(member, threads=1)  # its weights found and checked before any output
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
        audio_s = 0.0
        started = time.perf_counter()

        def report(result, done: int, todo: int) -> None:
            nonlocal audio_s
            audio_s += result.duration_s
            elapsed = time.perf_counter() - started
            rate = f"{audio_s / 3600 / max(elapsed, 1e-9):.2f} audio-h/s"
            progress.update(task, total=todo, completed=done, rate=rate)

        if batch_function is not None:
            progress.console.print(_engine_line(describe_predictor(batch_function)), highlight=False)
            summary = run_prediction(
                model, inputs, out, settings, batch_function=batch_function, progress=report
            )
        else:
            from dawnchorus.inference.distributed import run_distributed_prediction

            summary = run_distributed_prediction(
                members, inputs, out, settings, cluster=cluster, progress=report,
                backbone_weights=backbone_files,
            )
    print_failures(summary.failed)
    print_summary(
        f"{summary.predicted} recordings predicted, {summary.skipped} already complete, "
        f"{len(summary.failed)} failed; {summary.audio_seconds / 3600:.3f} h of audio in "
        f"{summary.wall_seconds:.1f} s ({summary.realtime_factor:.0f}x real time)",
        summary.outputs,
    )
    if summary.failed:  # listed above and in errors.csv; a run that lost recordings never exits 0
        raise typer.Exit(PARTIAL_FAILURE_EXIT)


def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file written by train.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="ONNX file to write (default: model.onnx; with --int8 the cache beside MODEL)."
        ),
    ] = None,
    export_format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    frontend: Annotated[
        bool, typer.Option("--frontend/--no-frontend", help="Include the log-mel frontend in the graph.")
    ] = True,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="Write the CNN quantised to int8 (input: log-mel), calibrated on --calibration: the graph "
            "'predict --engine onnx-int8' runs. Measured against fp32 on the default network: macro "
            "ROC-AUC +0.0002 +- 0.0029 (at most 0.0071), padded cmAP -0.0001 +- 0.0021 (at most 0.0037) "
            "(bench/README.md).",
        ),
    ] = False,
    calibration: Annotated[
        list[Path] | None,
        typer.Option(
            "--calibration",
            help="With --int8: recordings or folders to calibrate on (training clips, or audio like "
            "what you will predict); repeatable.",
        ),
    ] = None,
) -> None:
    """Export a model file to ONNX (input: audio windows, or log-mel with --no-frontend or --int8)."""
    from dawnchorus.inference.export import export_onnx

    if export_format != "onnx":
        fail(f"unknown export format {export_format!r}; only onnx is supported")
    if calibration and not int8:
        fail("--calibration is for --int8 graphs only")
    model = load_model_or_fail(model_path)
    try:
        if int8:
            written = _export_int8(model, model_path, out, calibration or [])
        else:
            written = export_onnx(model, out or Path("model.onnx"), include_frontend=frontend)
    except ExportError as exc:  # the command has always exited 2 here (ExportError's own code is 1)
        fail(str(exc))
    console.print(f"[green]exported[/] {written}")


def _export_int8(model: LoadedModel, model_path: Path, out: Path | None, calibration: list[Path]) -> Path:
    """The int8 graph of ``model`` calibrated on ``calibration``: to ``out``, or into the cache
    beside the model file that ``predict --engine onnx-int8`` reads."""
    from dawnchorus.inference.quantise import calibration_windows, int8_path_beside, quantise_model

    if not calibration:
        fail("--int8 needs --calibration AUDIO (recordings or folders to calibrate the int8 graph on)")
    require_inputs(calibration)
    audio = model.config.audio
    windows = calibration_windows(calibration, audio.sample_rate, audio.clip_s)
    return quantise_model(model, out or int8_path_beside(model_path), windows)


def _split_weights(values: list[str]) -> tuple[list[Path], str | None]:
    """``--weights`` values as (backbone weights files, ensemble weights): a value that is no file
    and reads as a list of numbers (``0.6,0.4``) is the ensemble's weights (its meaning before
    backbone files), anything else a file."""
    files: list[Path] = []
    numbers: list[str] = []
    for value in values:
        if not Path(value).is_file() and re.fullmatch(r"[\d\s.,eE+-]*\d[\d\s.,eE+-]*", value):
            numbers.append(value)
        else:
            files.append(Path(value))
    if len(numbers) > 1:
        fail(f"--weights: one list of ensemble weights, got {len(numbers)} ({'; '.join(numbers)})")
    return files, numbers[0] if numbers else None


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left at its default."""
    source = ctx.get_parameter_source(name)  # an enum of the click Typer runs on
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _engine_line(described: dict) -> str:
    """'engine: onnx (model.cnn.onnx, log-mel in numpy), 2 lanes x 1 thread' for the user; for an
    ensemble, 'engine: ensemble of 2 (weights 0.5, 0.5): ...' and each member's line."""
    if described["engine"] == "ensemble":
        weights = ", ".join(f"{w:.3g}" for w in described["weights"])
        lines = [_engine_line(member).removeprefix("engine: ") for member in described["members"]]
        what = f"each {lines[0]}" if len(set(lines)) == 1 else "; ".join(lines)
        return f"engine: ensemble of {len(lines)} (weights {weights}), {what}"
    if described["engine"] == "onnx":
        what = f"onnx ({Path(described['graph']).name}, log-mel in {described['frontend']})"
    elif described["engine"] == "onnx-int8":
        calibrated = f"calibrated on {described['quantisation'].get('windows', '?')} windows"
        graph = Path(described["graph"]).name
        what = f"onnx-int8 ({graph}, {calibrated}, log-mel in {described['frontend']})"
    else:
        what = f"torch ({described['backbone']} + head)" if "backbone" in described else "torch"
    threads = described["threads_per_lane"]
    return f"engine: {what}, {described['lanes']} lane(s) x {threads} thread{'s' if threads > 1 else ''}"
