"""The ``dawnchorus`` command line: a thin layer over the modules (no logic lives here)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

app = typer.Typer(
    help="Train bird-sound classifiers on short clips and find species in long field recordings.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate training sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a clear error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the data set into.")],
    species: Annotated[int, typer.Option(help="Number of species.")] = 12,
    soundscapes: Annotated[int, typer.Option(help="Number of 60-s labelled test soundscapes.")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
    noise_dir: Annotated[
        Path | None, typer.Option(help="Folder of background recordings mixed into soundscapes.")
    ] = None,
    clean_copies: Annotated[bool, typer.Option(help="Also write noise-free soundscape copies.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a data set already in OUT.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Write a synthetic data set in the BirdCLEF 2022 layout."""
    from rich.progress import Progress

    from dawnchorus.io.audio import AudioError
    from dawnchorus.synth.soundscapes import SynthError, make_dataset

    if noise_dir is not None and not noise_dir.is_dir():
        fail(f"--noise-dir {noise_dir}: folder not found")
    with Progress(console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            summary = make_dataset(
                out,
                species=species,
                soundscapes=soundscapes,
                seed=seed,
                noise_dir=noise_dir,
                clean_copies=clean_copies,
                progress=report,
                overwrite=overwrite,
                workers=workers,
            )
        except (SynthError, AudioError) as exc:
            fail(str(exc))
    console.print(
        f"[green]wrote[/] {summary.n_clips} clips of {len(summary.species)} species "
        f"({summary.train_seconds / 60:.1f} min) and {len(summary.soundscape_ids)} soundscapes "
        f"to {out} in {summary.elapsed_s:.1f} s"
    )


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="BirdCLEF layout (train_metadata.csv) or folder per class.")],
) -> None:
    """Summarise a training set and list every problem; exits 1 when there are problems."""
    from dawnchorus.data.datasets import DatasetError, load_training_set, render_summary, summarize

    if not root.exists():
        fail(f"{root}: not found")
    try:
        training_set = load_training_set(root, on_problem="keep")
    except DatasetError as exc:
        fail(str(exc), code=1)
    summary = summarize(training_set)
    render_summary(summary, console)
    if summary.problems:
        raise typer.Exit(1)


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Training set: BirdCLEF layout or folder per class.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (model.pt, config.yaml, logs).")] = Path(
        "run"
    ),
    config: Annotated[Path | None, typer.Option(help="YAML settings file (any subset).")] = None,
    backbone: Annotated[str | None, typer.Option(help="timm backbone name.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per batch.")] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on fold K (K-fold).")] = None,
    noise_dir: Annotated[Path | None, typer.Option(help="Background-noise bank folder.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local pretrained backbone weights.")] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights.")
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (e.g. 2, or auto).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes for multi-node training.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN/checkpoints/last.ckpt.")] = False,
) -> None:
    """Train a multi-label classifier and write one self-contained model file."""
    from dawnchorus.config import ConfigError, load_config
    from dawnchorus.data.datasets import DatasetError

    overrides = {
        "model.backbone": backbone,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.fold": fold,
        "augment.noise_dir": str(noise_dir) if noise_dir else None,
        "model.weights": str(weights) if weights else None,
        "model.pretrained": pretrained,
        "train.devices": int(devices) if devices and devices.isdigit() else devices,
        "train.strategy": strategy,
        "train.num_nodes": num_nodes,
    }
    try:
        settings = load_config(config, overrides)
    except ConfigError as exc:
        fail(str(exc))
    if not data.exists():
        fail(f"{data}: training data not found")
    from dawnchorus.training.run import TrainingError
    from dawnchorus.training.run import train as run_training

    try:
        result = run_training(data, out, settings, resume=resume)
    except (DatasetError, TrainingError) as exc:
        fail(str(exc), code=1)
    for problem in result.dropped_problems:
        err_console.print(f"[yellow]skipped:[/] {problem}", highlight=False)
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    console.print(
        f"[green]model written:[/] {result.model_path}  (best {result.monitor} = {score}, "
        f"{result.epochs_run} epochs)"
    )


@app.command("augment-preview")
def augment_preview(
    clip: Annotated[Path, typer.Argument(help="An audio clip.")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("augmentations.png"),
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    noise_dir: Annotated[Path | None, typer.Option(help="Background-noise bank folder.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a PNG grid of one clip under each augmentation."""
    from dawnchorus.augment.waveform import preview_augmentations
    from dawnchorus.config import ConfigError, load_config
    from dawnchorus.io.audio import AudioError

    try:
        settings = load_config(config, {"augment.noise_dir": str(noise_dir) if noise_dir else None})
        written = preview_augmentations(
            clip,
            out,
            settings.augment,
            sample_rate=settings.audio.sample_rate,
            clip_s=settings.audio.clip_s,
            seed=seed,
            frontend=settings.frontend,
        )
    except (ConfigError, AudioError, ValueError) as exc:
        fail(str(exc))
    console.print(f"[green]wrote[/] {written}")


def _load_model_or_fail(path: Path):
    from dawnchorus.models.modelfile import ModelFileError, load_model

    try:
        return load_model(path)
    except (FileNotFoundError, ModelFileError) as exc:
        fail(str(exc))


def _engine_line(described: dict) -> str:
    """'engine: onnx (model.cnn.onnx, log-mel in torch), 2 lanes x 1 thread' for the user."""
    if described["engine"] == "onnx":
        what = f"onnx ({Path(described['graph']).name}, log-mel in {described['frontend']})"
    else:
        what = "torch"
    threads = described["threads_per_lane"]
    return f"engine: {what}, {described['lanes']} lane(s) x {threads} thread{'s' if threads > 1 else ''}"


@app.command()
def predict(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file written by train.")],
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
            help="auto (onnx on CPU when the 'onnx' extra is installed, else torch), torch, or onnx "
            "(exported once and cached beside the model)."
        ),
    ] = "auto",
) -> None:
    """Predict species per window in long recordings; resumable, bad files reported and skipped."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dawnchorus.inference.run import PredictionError, expand_inputs, run_prediction

    model = _load_model_or_fail(model_path)
    if batch_size is None:
        from dawnchorus.inference.export import default_batch_size

        batch_size = default_batch_size(device)
    slurm = None
    if config_path is not None:
        from dawnchorus.config import ConfigError, load_config

        try:
            slurm = load_config(config_path).cluster.model_dump()
        except ConfigError as exc:
            fail(str(exc))
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

        options = {
            "hop_s": hop,
            "batch_size": batch_size,
            "threshold": threshold,
            "formats": output_format,
            "merge_detections": merge,
            "device": device,
            "progress": report,
        }
        try:
            if cluster is None:
                from dawnchorus.inference.export import ExportError, batch_function_for, describe_engine

                try:
                    batch_function = batch_function_for(model, engine, device=device, batch_size=batch_size)
                except ExportError as exc:
                    fail(str(exc))
                progress.console.print(_engine_line(describe_engine(batch_function)), highlight=False)
                summary = run_prediction(model, inputs, out, batch_function=batch_function, **options)
            else:
                from dawnchorus.inference.distributed import run_distributed_prediction

                summary = run_distributed_prediction(
                    model_path, inputs, out, cluster=cluster, chunk_s=chunk, slurm=slurm, engine=engine,
                    **options,
                )
        except PredictionError as exc:
            fail(str(exc))
    for file, reason in summary.failed:
        err_console.print(f"[red]failed:[/] {file}: {reason}", highlight=False, soft_wrap=True)
    console.print(
        f"[green]done:[/] {summary.predicted} recordings predicted, {summary.skipped} already complete, "
        f"{len(summary.failed)} failed; {summary.audio_seconds / 3600:.3f} h of audio in "
        f"{summary.wall_seconds:.1f} s ({summary.realtime_factor:.0f}x real time)"
    )
    for name, path in summary.outputs.items():
        console.print(f"  {name:13s} {path}")


@app.command()
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

    from dawnchorus.evaluate.metrics import EvaluationError, evaluate_files
    from dawnchorus.io.outputs import OutputError

    model = _load_model_or_fail(model_path) if model_path else None
    try:
        result = evaluate_files(predictions, labels, model=model, threshold=threshold)
    except (EvaluationError, OutputError, FileNotFoundError) as exc:
        fail(str(exc))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    if json_out:
        print(json.dumps(result, indent=2))
        return
    from dawnchorus.report.html import render_evaluation

    render_evaluation(result, console)


@app.command("tune-thresholds")
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
    from dawnchorus.evaluate.metrics import EvaluationError
    from dawnchorus.inference.run import tune_model_thresholds

    model = _load_model_or_fail(model_path)
    try:
        result = tune_model_thresholds(model, labelled, labels_file, min_support=min_support)
    except (EvaluationError, FileNotFoundError) as exc:
        fail(str(exc))
    written = model.save(out or model_path)
    console.print(
        f"[green]thresholds stored in[/] {written}: global {result['global']:.2f}; "
        f"{result['n_own']} of {len(model.labels)} classes have their own; "
        f"macro F1 {result['f1_before']:.3f} -> {result['f1_after']:.3f} on {result['n_windows']} windows"
    )


@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="Model file written by train.")],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write.")] = Path("model.onnx"),
    export_format: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    frontend: Annotated[
        bool, typer.Option("--frontend/--no-frontend", help="Include the log-mel frontend in the graph.")
    ] = True,
) -> None:
    """Export a model file to ONNX (input: audio windows, or log-mel with --no-frontend)."""
    from dawnchorus.inference.export import ExportError, export_onnx

    if export_format != "onnx":
        fail(f"unknown export format {export_format!r}; only onnx is supported")
    model = _load_model_or_fail(model_path)
    try:
        written = export_onnx(model, out, include_frontend=frontend)
    except ExportError as exc:
        fail(str(exc))
    console.print(f"[green]exported[/] {written}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A demo folder or a training run folder.")],
) -> None:
    """Write RUN_DIR/report.html (plots, metrics, detection timelines) with its images beside it."""
    from dawnchorus.report.html import ReportError, build_report

    try:
        written = build_report(run_dir)
    except ReportError as exc:
        fail(str(exc))
    console.print(f"[green]report written:[/] {written}")


@app.command()
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
    from dawnchorus.demo import DemoError, run_demo

    if noise_dir is not None and not noise_dir.is_dir():
        fail(f"--noise-dir {noise_dir}: folder not found")
    try:
        run_demo(
            out,
            noise_dir=noise_dir,
            species=species,
            epochs=epochs,
            seed=seed,
            console=console,
            backbone=backbone,
        )
    except DemoError as exc:
        fail(str(exc))


def main() -> None:
    """Entry point for ``python -m dawnchorus``."""
    app()
