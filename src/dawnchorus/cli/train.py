"""``dawnchorus train`` and ``augment-preview``: parse options into a Config and print the outcome.

Training itself lives in training/, the preview in augment/. Errors reach the user through the one
handler in :mod:`dawnchorus.cli.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dawnchorus.cli.console import console, err_console, fail, load_model_or_fail, require_inputs
from dawnchorus.errors import DatasetError


def train(
    data: Annotated[Path, typer.Argument(help="Training set: BirdCLEF layout or folder per class.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder (model.pt, config.yaml, logs).")] = Path(
        "run"
    ),
    config: Annotated[Path | None, typer.Option(help="YAML settings file (any subset).")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="timm backbone name (fine-tuned), or a pretrained bird-sound backbone: birdnet or "
            "perch-v2 (frozen; a head is trained on its embeddings)."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per batch.")] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on fold K (K-fold).")] = None,
    noise_dir: Annotated[Path | None, typer.Option(help="Background-noise bank folder.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Local pretrained backbone weights (timm, or the birdnet / perch-v2 file)."),
    ] = None,
    pretrained: Annotated[
        bool | None, typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights.")
    ] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (e.g. 2, or auto).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes for multi-node training.")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue from RUN/checkpoints/last.ckpt; with --unlabelled/--pseudo: keep the finished "
            "rounds and continue the interrupted one (refused when settings, data or recordings changed)."
        ),
    ] = False,
    unlabelled: Annotated[
        list[Path] | None,
        typer.Option(help="Unlabelled recordings (file, folder, .txt list; repeatable): noisy-student."),
    ] = None,
    pseudo: Annotated[
        Path | None, typer.Option(help="A pseudo-label folder (dawnchorus pseudo-label) to train round 1 on.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Noisy-student rounds (selftrain.rounds).")] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="Start from this teacher model instead of training one on DATA.")
    ] = None,
    teacher_weights: Annotated[
        list[Path] | None,
        typer.Option(
            "--teacher-weights",
            metavar="FILE",
            help="A --teacher on a frozen backbone (birdnet, perch-v2): the backbone's weights file, "
            "SHA-256 checked as for predict --weights (default: the file it was trained with, else the "
            "backbone's own).",
        ),
    ] = None,
    student_model: Annotated[
        str | None, typer.Option(help="timm backbone of the students (distillation), e.g. efficientnet_b0.")
    ] = None,
    reviewed: Annotated[
        list[Path] | None,
        typer.Option(
            help="A reviewed predict folder (dawnchorus review; repeatable): its verified windows join the "
            "training items (confirmed species positive, rejected ones negative, unsure left out)."
        ),
    ] = None,
) -> None:
    """Train a multi-label classifier and write one self-contained model file.

    --backbone birdnet trains a head on BirdNET 2.4's frozen embeddings (every clip embedded under
    noise-bank mixes, cached; seconds to train). Needs pip install "dawnchorus\\[birdnet]". The BirdNET
    model is licensed CC BY-NC-SA 4.0 (non-commercial, share-alike); it is never copied into the model
    file, which records its name, version and SHA-256.
    """
    from dawnchorus.config import load_config
    from dawnchorus.embed.registry import is_embedding_model, suggest_zoo_backbone

    frozen = backbone is not None and is_embedding_model(backbone)
    if backbone is not None and not frozen:
        suggest_zoo_backbone(backbone)
    overrides = {
        "embedding.backbone" if frozen else "model.backbone": backbone,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.fold": fold,
        "augment.noise_dir": str(noise_dir) if noise_dir else None,
        "embedding.weights" if frozen else "model.weights": str(weights) if weights else None,
        "model.pretrained": pretrained,
        "train.devices": int(devices) if devices and devices.isdigit() else devices,
        "train.strategy": strategy,
        "train.num_nodes": num_nodes,
        "selftrain.rounds": rounds,
        "selftrain.student_backbone": student_model,
    }
    settings = load_config(config, overrides)
    if not data.exists():
        fail(f"{data}: training data not found")
    if reviewed and (unlabelled or pseudo is not None):
        fail("--reviewed trains one model on DATA; it does not combine with --unlabelled or --pseudo")
    if unlabelled or pseudo is not None:
        _self_train(data, out, settings, unlabelled, pseudo, teacher, resume, teacher_weights)
        return
    if teacher is not None or teacher_weights or rounds is not None or student_model is not None:
        fail("--teacher, --teacher-weights, --rounds and --student-model need --unlabelled DIR or "
             "--pseudo PL")
    from dawnchorus.training.run import train as run_training

    windows = None
    if reviewed:
        from dawnchorus.training.reviewed import reviewed_window_items

        windows, judged = reviewed_window_items(reviewed, data, settings)
        console.print(f"reviewed: {judged.describe()}", highlight=False, soft_wrap=True)
    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    try:
        result = run_training(data, out, settings, resume=resume, windows=windows, log=say)
    except DatasetError as exc:  # training stops on a bad set with exit 1, as `data check` does
        fail(str(exc), code=1)
    for problem in result.dropped_problems:
        err_console.print(f"[yellow]skipped:[/] {problem}", highlight=False)
    score = "n/a" if result.best_score is None else f"{result.best_score:.4f}"
    console.print(
        f"[green]model written:[/] {result.model_path}  (best {result.monitor} = {score}, "
        f"{result.epochs_run} epochs)"
    )


def _self_train(
    data: Path,
    out: Path,
    settings,
    unlabelled: list[Path] | None,
    pseudo: Path | None,
    teacher: Path | None,
    resume: bool,
    teacher_weights: list[Path] | None = None,
) -> None:
    """``train --unlabelled/--pseudo``: the noisy-student rounds, one line per round (``resume``: keep
    the finished ones; ``teacher_weights``: the frozen backbone weights of ``teacher``)."""
    from dawnchorus.training.rounds import self_train

    if unlabelled:
        require_inputs(unlabelled)
    if teacher is not None:
        load_model_or_fail(teacher, build_network=False)
    if pseudo is not None and not pseudo.is_dir():
        fail(f"{pseudo}: pseudo-label folder not found")

    def say(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    try:
        result = self_train(
            data, out, settings, unlabelled=unlabelled or None, pseudo=pseudo, teacher=teacher,
            teacher_weights=teacher_weights, resume=resume, progress_bar=True, log=say,
        )
    except DatasetError as exc:  # training stops on a bad set with exit 1, as `data check` does
        fail(str(exc), code=1)
    best = max(result.rounds, key=lambda row: (row.roc_auc == row.roc_auc, row.roc_auc))
    console.print(
        f"[green]model written:[/] {result.model_path}  (round {result.rounds[-1].round}; rounds in "
        f"{result.rounds_csv}; best validation ROC-AUC: round {best.round})",
        highlight=False, soft_wrap=True,
    )


def augment_preview(
    clip: Annotated[Path, typer.Argument(help="An audio clip.")],
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("augmentations.png"),
    config: Annotated[Path | None, typer.Option(help="YAML settings file.")] = None,
    noise_dir: Annotated[Path | None, typer.Option(help="Background-noise bank folder.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a PNG grid of one clip under each augmentation."""
    from dawnchorus.augment.preview import preview_augmentations
    from dawnchorus.config import load_config

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
    except ValueError as exc:  # augmentations reject a bad range with a plain ValueError
        fail(str(exc))
    console.print(f"[green]wrote[/] {written}")
