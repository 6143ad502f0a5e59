"""The HTML report of a training run or a demo folder, and rich tables of an evaluation result.

:func:`build_report` writes ``RUN_DIR/report.html`` with its images in ``RUN_DIR/report_files/``:
one self-contained page (local CSS, no scripts, no fonts or anything else from the network) that
works opened from disk. It reads what it finds and skips, with a one-line note, what it does not:

- ``model.pt`` (in ``RUN_DIR`` or ``RUN_DIR/run``): labels, settings, thresholds, and the training
  set it was trained on (``metadata["trained_on"]``) for the class distribution and an example clip;
- ``logs/metrics.csv`` beside the model (Lightning's CSVLogger): training curves;
- ``evaluation.json`` in ``RUN_DIR``: one result of :func:`dawnchorus.evaluate.metrics.evaluate_files`, or
  ``{"noisy": result, "clean": result}`` as the demo writes it. Its ``predictions_path`` and
  ``labels_path`` give the precision-recall curves and the detection timelines;
- ``demo.json`` (demo folders): the demo's settings and stage times.

:func:`render_evaluation` prints an evaluation result as rich tables (``dawnchorus evaluate``). The
figures themselves (and :func:`~dawnchorus.report.figures.format_metric`) are
:mod:`dawnchorus.report.figures`; this module saves them and writes the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from dawnchorus.errors import ReportError
from dawnchorus.evaluate.verified import TABLES
from dawnchorus.io.files import atomic_write_text
from dawnchorus.io.verdicts import REVIEWS_FILE
from dawnchorus.report.figures import (
    CONDITION_TITLES,
    HEADLINE_METRICS,
    MAX_PR_CURVES,
    class_distribution_figure,
    clean_vs_noisy_figure,
    clip_figure,
    curves_figure,
    format_metric,
    pr_figure,
    reviewed_precision_figure,
    timeline_figure,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dawnchorus.config import AugmentSettings
    from dawnchorus.data.layouts import TrainingSet
    from dawnchorus.models.modelfile import LoadedModel

REPORT_NAME = "report.html"
ROUNDS_CSV = "rounds.csv"  # written by dawnchorus.training.rounds (not imported here: it pulls in torch)
IMAGES_DIR = "report_files"
MAX_TIMELINES = 3
MAX_TIMELINE_S = 120.0  # a timeline shows at most the first two minutes of a recording
DPI = 100
PER_CLASS_COLUMNS = {
    "support": "support",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "ap": "AP",
    "roc_auc": "ROC-AUC",
    "threshold": "threshold",
}


# --- the console view of an evaluation -----------------------------------------------------------


def _conditions(result: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """``{name: evaluate-result}`` from either one result or the demo's ``{"noisy": ..., ...}``."""
    if not isinstance(result, dict):
        raise ReportError(f"{source}: expected a JSON object, got {type(result).__name__}")
    if "per_class" in result:
        return {"": result}
    nested = {
        name: value for name, value in result.items() if isinstance(value, dict) and "per_class" in value
    }
    if not nested:
        raise ReportError(
            f"{source}: not an evaluation result (no 'per_class' table; write one with "
            "`dawnchorus evaluate ... --out evaluation.json`)"
        )
    return nested


def render_evaluation(result: dict[str, Any], console: Console, title: str | None = None) -> None:
    """Print an evaluation result (:func:`dawnchorus.evaluate.metrics.evaluate_files`) as rich tables: the
    headline scores, then one row per scored class. A ``{"noisy": ..., "clean": ...}`` mapping of
    results prints each in turn."""
    for name, single in _conditions(result, "evaluation result").items():
        condition = CONDITION_TITLES.get(name, name)
        heading = f"{title}: {condition}" if title and condition else title or condition or "evaluation"
        _render_single(single, console, heading)


def _render_single(result: dict[str, Any], console: Console, title: str) -> None:
    headline = Table(title=f"Scores: {title}", title_justify="left", show_header=False)
    headline.add_column("metric")
    headline.add_column("value", justify="right", style="bold")
    for key, label in HEADLINE_METRICS.items():
        headline.add_row(label, format_metric(result.get(key)))
    headline.add_row("windows scored", format_metric(result.get("n_windows")))
    headline.add_row("recordings", format_metric(result.get("n_recordings")))
    if result.get("threshold_source"):
        headline.add_row("thresholds from", str(result["threshold_source"]))
    console.print(headline)
    per_class = Table(title="Per class", title_justify="left")
    per_class.add_column("label")
    for label in PER_CLASS_COLUMNS.values():
        per_class.add_column(label, justify="right")
    for row in result.get("per_class", []):
        per_class.add_row(str(row.get("label")), *(format_metric(row.get(key)) for key in PER_CLASS_COLUMNS))
    console.print(per_class)
    unscored = result.get("unscored_truth_labels") or []
    if unscored:
        console.print(f"labelled in the truth but not scored: {', '.join(unscored)}", style="dim")


# --- finding what a folder holds -------------------------------------------------------------------


@dataclass
class RunFolder:
    """The files of a training run or demo folder that the report uses (None when absent)."""

    root: Path
    model_path: Path | None
    metrics_csv: Path | None
    config_yaml: Path | None
    evaluation_path: Path | None
    demo_summary_path: Path | None
    reviewed_runs: list[Path] = field(default_factory=list)  # predict folders holding reviews.sqlite

    @classmethod
    def find(cls, run_dir: str | Path) -> RunFolder:
        """Look for the model, logs, evaluation and demo summary in ``run_dir`` (or ``run_dir/run``)."""
        root = Path(run_dir)
        if not root.exists():
            raise ReportError(f"{root}: folder not found")
        if not root.is_dir():
            raise ReportError(f"{root}: not a folder (pass the run or demo folder)")
        model_dir = next((d for d in (root, root / "run") if (d / "model.pt").is_file()), None)
        log_dir = model_dir or next((d for d in (root, root / "run") if (d / "logs").is_dir()), root)
        found = cls(
            root=root,
            model_path=model_dir / "model.pt" if model_dir else None,
            metrics_csv=_file_or_none(log_dir / "logs" / "metrics.csv"),
            config_yaml=_file_or_none(log_dir / "config.yaml"),
            evaluation_path=_file_or_none(root / "evaluation.json"),
            demo_summary_path=_file_or_none(root / "demo.json"),
            reviewed_runs=_reviewed_runs(root),
        )
        if not (found.model_path or found.metrics_csv or found.evaluation_path or found.reviewed_runs):
            raise ReportError(
                f"{root}: no model.pt, logs/metrics.csv or evaluation.json here or in {root / 'run'}, "
                f"and no {REVIEWS_FILE}; pass a training run folder (dawnchorus train --out), a demo "
                "folder or a reviewed predict folder"
            )
        return found


def _reviewed_runs(root: Path) -> list[Path]:
    """``root`` and its sub-folders that are reviewed predict runs (a verdict store beside a table)."""
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [
        folder for folder in candidates
        if (folder / REVIEWS_FILE).is_file() and any((folder / name).is_file() for name in TABLES)
    ]


def _file_or_none(path: Path) -> Path | None:
    return path if path.is_file() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: cannot read it as JSON ({exc})") from None


# --- the page ---------------------------------------------------------------------------------------


@dataclass
class Section:
    """One titled part of the report."""

    title: str
    body: str = ""
    note: str | None = None  # set when the section has no data: shown instead of the body


class _Aligned(NamedTuple):
    """Predicted windows and their truth, row by row, for the scored labels."""

    windows: pd.DataFrame
    truth: pd.DataFrame
    labels: list[str]
    thresholds: np.ndarray


@dataclass
class _Builder:
    """What the sections read (each input loaded once) and where they put their images."""

    folder: RunFolder
    images_dir: Path
    model: LoadedModel | None = None
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    demo: dict[str, Any] = field(default_factory=dict)

    def save(self, figure: Figure | None, name: str, alt: str) -> str:
        """Write ``figure`` as ``report_files/<name>.png``; return its <img> tag."""
        if figure is None:
            return ""
        path = self.images_dir / f"{name}.png"
        figure.savefig(path, dpi=DPI, facecolor="white")
        return _img(path.name, alt)

    @property
    def main_condition(self) -> tuple[str, dict[str, Any]] | None:
        """The evaluation the per-class table, curves and timelines show (the noisy one in a demo)."""
        if not self.evaluation:
            return None
        name = "noisy" if "noisy" in self.evaluation else next(iter(self.evaluation))
        return name, self.evaluation[name]

    @cached_property
    def training_set(self) -> tuple[TrainingSet | None, str]:
        """The training set the model was trained on, or None and why it is not available."""
        from dawnchorus.data.layouts import load_training_set
        from dawnchorus.errors import DatasetError

        if self.model is None:
            return None, "no model.pt in this folder, so the training set is unknown."
        trained_on = self.model.metadata.get("trained_on")
        if not trained_on or not Path(trained_on).exists():
            where = trained_on or "not recorded in the model file"
            return None, f"the training set ({where}) is not on this machine."
        try:
            return load_training_set(trained_on, on_problem="drop", check_audio=False), ""
        except DatasetError as exc:
            return None, f"the training set at {trained_on} cannot be read: {str(exc).splitlines()[0]}"

    @cached_property
    def aligned(self) -> _Aligned | str:
        """The main evaluation's predictions and labels aligned by window, or why they are not."""
        from dawnchorus.errors import EvaluationError
        from dawnchorus.evaluate.metrics import align_predictions
        from dawnchorus.io.annotations import load_truth
        from dawnchorus.io.outputs import OutputError, read_probabilities

        if self.main_condition is None:
            return "no evaluation.json, so no labelled predictions to show."
        result = self.main_condition[1]
        predictions_path = Path(str(result.get("predictions_path", "")))
        labels_path = Path(str(result.get("labels_path", "")))
        if not predictions_path.is_file() or not labels_path.exists():
            return f"the predictions ({predictions_path}) or labels ({labels_path}) are not on this machine."
        labels = [str(row["label"]) for row in result["per_class"]]
        window_s = self.model.config.audio.clip_s if self.model is not None else 5.0
        try:
            predictions = read_probabilities(predictions_path)
            windows, truth = align_predictions(
                predictions, load_truth(labels_path, predictions, labels, window_s)
            )
        except (EvaluationError, OutputError) as exc:
            return f"{predictions_path} and {labels_path} cannot be matched ({exc})."
        for label in labels:
            if label not in truth.columns:
                truth[label] = 0
        thresholds = np.asarray([row.get("threshold") or 0.5 for row in result["per_class"]], dtype=float)
        return _Aligned(windows, truth, labels, thresholds)


def _img(name: str, alt: str) -> str:
    return f'<img src="{IMAGES_DIR}/{html.escape(name)}" alt="{html.escape(alt)}">'


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (images in ``run_dir/report_files/``) for a training run folder
    or a demo folder; returns the HTML path. Sections without data are skipped with a one-line note.
    Raises :class:`ReportError` for a missing folder, a folder with nothing to report, or unreadable
    inputs."""
    folder = RunFolder.find(run_dir)
    images_dir = folder.root / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    for old in images_dir.glob("*.png"):
        old.unlink()
    builder = _Builder(folder, images_dir)
    if folder.model_path is not None:
        from dawnchorus.models.modelfile import ModelFileError, load_model

        try:
            builder.model = load_model(folder.model_path)
        except ModelFileError as exc:
            raise ReportError(str(exc)) from None
    if folder.evaluation_path is not None:
        builder.evaluation = _conditions(_read_json(folder.evaluation_path), str(folder.evaluation_path))
    if folder.demo_summary_path is not None:
        builder.demo = _read_json(folder.demo_summary_path)
    sections = [make(builder) for make in SECTION_BUILDERS]
    if folder.reviewed_runs:  # only where someone reviewed a run: no empty section elsewhere
        sections.append(_reviewed_precision(builder))
    if (folder.root / ROUNDS_CSV).is_file():  # a self-training run (train --unlabelled / --pseudo)
        sections.append(_self_training_rounds(folder.root / ROUNDS_CSV))
    page = _page(builder, sections)
    target = folder.root / REPORT_NAME
    return atomic_write_text(target, page)


# --- sections -----------------------------------------------------------------------------------------


def _overview(builder: _Builder) -> Section:
    rows = _demo_facts(builder.demo) + _model_facts(builder)
    scores = ""
    if builder.evaluation:
        scores = "<h3>Scores</h3>" + _headline_table(builder.evaluation)
    body = (
        "<p>Audio is cut into 5-second windows, each window becomes a log-mel spectrogram, and a CNN "
        "image backbone scores every species in it (multi-label, sigmoid). A species is reported "
        "where its probability reaches its threshold. Training uses clean focal recordings; "
        "augmentation (background noise, coloured noise, gain, shift, mixup, SpecAugment) and "
        "oversampling of rare species prepare the model for noisy field recordings and a long tail.</p>"
        f"{_key_value_table(rows)}{scores}"
    )
    return Section("Overview", body)


def _demo_facts(demo: dict[str, Any]) -> list[tuple[str, str]]:
    if not demo:
        return []
    stages = ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in (demo.get("stage_seconds") or {}).items()
    )
    return [
        (
            "demo",
            f"{demo.get('species')} synthetic species, seed {demo.get('seed')}; "
            f"{demo.get('tune_soundscapes')} soundscapes to tune thresholds, "
            f"{demo.get('eval_soundscapes')} held out for evaluation",
        ),
        ("background noise", demo.get("noise_dir") or "synthetic ambience (wind, rain, stream, insects)"),
        ("wall time before this report", f"{format_metric(demo.get('wall_seconds'), 1)} s ({stages})"),
    ]


def _model_facts(builder: _Builder) -> list[tuple[str, str]]:
    model = builder.model
    if model is None:
        return []
    meta, config = model.metadata, model.config
    weights = "ImageNet weights" if config.model.pretrained else "from scratch"
    return [
        ("model file", str(builder.folder.model_path)),
        ("backbone", f"{config.model.backbone} ({config.model.head} head, {weights})"),
        ("labels", f"{len(model.labels)} ({len(model.scored_labels or model.labels)} scored)"),
        (
            "training clips",
            f"{meta.get('train_clips', 'n/a')} train, {meta.get('val_clips', 'n/a')} validation",
        ),
        ("epochs", str(config.train.epochs)),
        (f"best {meta.get('monitor', 'score')}", format_metric(meta.get("best_score"))),
        ("thresholds", _threshold_text(model)),
        ("trained on", str(meta.get("trained_on", "n/a"))),
    ]


def _threshold_text(model: LoadedModel) -> str:
    per_class = model.thresholds.get("per_class")
    text = f"global {float(model.thresholds.get('global', 0.5)):.2f}"
    if per_class:
        values = np.asarray(per_class, dtype=float)
        text += f"; per class {values.min():.2f} to {values.max():.2f}"
    return text


def _class_distribution(builder: _Builder) -> Section:
    title = "Training set: class distribution"
    training_set, missing = builder.training_set
    if training_set is None:
        return Section(title, note=f"Skipped: {missing}")
    counts = training_set.clips["primary_label"].value_counts()
    scored = set(training_set.scored_labels) if training_set.scored_labels else None
    image = builder.save(
        class_distribution_figure(counts, scored), "class_distribution", "training clips per species"
    )
    ratio = counts.max() / max(counts.min(), 1)
    legend = " Grey bars: species not scored." if scored and scored != set(counts.index) else ""
    body = (
        f"<p>Clips per species (primary label). The commonest has {counts.max()} clips, the rarest "
        f"{counts.min()}: a {ratio:.0f}:1 long tail. Rare species are oversampled to at least "
        f"{builder.model.config.imbalance.min_clips_per_class} clips per epoch.{legend}</p>{image}"
    )
    return Section(title, body)


def _example_clip(builder: _Builder) -> Section:
    from dawnchorus.io.audio import AudioError, load

    title = "Augmentation: one clip, and the same clip under each augmentation"
    training_set, missing = builder.training_set
    if training_set is None:
        return Section(title, note=f"Skipped: {missing}")
    clips = training_set.clips
    commonest = clips["primary_label"].value_counts().index[0]
    clip = clips[clips["primary_label"] == commonest].iloc[0]
    config = builder.model.config
    rate, clip_s = config.audio.sample_rate, config.audio.clip_s
    try:
        samples = load(clip["path"], rate, duration_s=clip_s)
    except AudioError as exc:
        return Section(title, note=f"Skipped: {exc}")
    name = Path(clip["path"]).name
    clip_image = builder.save(
        clip_figure(samples, rate, f"{commonest}: {name}", builder.model),
        "example_clip",
        f"waveform and mel spectrogram of {name}",
    )
    body = (
        f"<p>A training clip of <b>{html.escape(str(commonest))}</b> ({html.escape(name)}), first "
        f"{clip_s:g} s: waveform and log-mel spectrogram, the image the CNN sees.</p>{clip_image}"
        f"{_augmentation_grid(builder, Path(clip['path']))}"
    )
    return Section(title, body)


def _augmentation_grid(builder: _Builder, clip: Path) -> str:
    """The clip under each augmentation alone (augment.preview_augmentations), with its caption."""
    from dawnchorus.augment.preview import preview_augmentations
    from dawnchorus.io.audio import AudioError

    config = builder.model.config
    augment = _augment_settings(builder)
    preview = builder.images_dir / "augmentations.png"
    try:
        preview_augmentations(
            clip,
            preview,
            augment,
            config.audio.sample_rate,
            config.audio.clip_s,
            seed=0,
            frontend=config.frontend,
        )
    except (AudioError, ValueError) as exc:
        return f'<p class="note">Augmentation preview skipped: {html.escape(str(exc))}</p>'
    noise = "" if augment.noise_dir else " (no background-noise folder was used, so that step is absent)"
    return (
        f"<p>The same clip under each augmentation alone{noise}. In training each is drawn with its own "
        "probability, so the model meets clean calls buried in field noise, at other levels and "
        "positions, overlapped by other sounds, with parts masked.</p>"
        f"{_img(preview.name, 'the clip under each augmentation')}"
    )


def _augment_settings(builder: _Builder) -> AugmentSettings:
    """The run's augmentation settings, with its noise folder when that still exists."""
    from dawnchorus.config import ConfigError, load_config

    if builder.folder.config_yaml is not None:
        try:
            return load_config(builder.folder.config_yaml).augment
        except ConfigError:
            pass
    return builder.model.config.augment


def _training_curves(builder: _Builder) -> Section:
    title = "Training curves"
    if builder.folder.metrics_csv is None:
        return Section(title, note="Skipped: no logs/metrics.csv (Lightning CSV log) in this folder.")
    try:
        metrics = pd.read_csv(builder.folder.metrics_csv)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        return Section(title, note=f"Skipped: {builder.folder.metrics_csv} cannot be read ({exc}).")
    if "epoch" not in metrics.columns:
        return Section(title, note=f"Skipped: {builder.folder.metrics_csv} has no epoch column.")
    image = builder.save(curves_figure(metrics), "training_curves", "loss and validation scores per epoch")
    if not image:
        return Section(
            title, note=f"Skipped: {builder.folder.metrics_csv} holds no loss or validation scores."
        )
    body = (
        "<p>Left: training loss (on augmented clips) and validation loss (clean clips). Right: macro "
        "ROC-AUC and padded cmAP per epoch on held-back clips (<code>val/</code>, solid) and, when the "
        "training set has labelled soundscapes, on those (<code>val_soundscape/</code>, dashed). The gap "
        f"between the two is the domain shift.</p>{image}"
    )
    return Section(title, body)


def _evaluation(builder: _Builder) -> Section:
    title = "Evaluation: per-class metrics and precision-recall curves"
    if builder.main_condition is None:
        return Section(
            title,
            note="Skipped: no evaluation.json in this folder "
            "(write one with `dawnchorus evaluate ... --out RUN_DIR/evaluation.json`).",
        )
    name, result = builder.main_condition
    where = html.escape(str(result.get("labels_path", "")))
    condition = html.escape(CONDITION_TITLES.get(name, name) or "evaluation")
    body = (
        f"<p>Scores per 5-s window against <code>{where}</code> "
        f"({format_metric(result.get('n_windows'))} windows of {format_metric(result.get('n_recordings'))} "
        f"recordings; thresholds from {html.escape(str(result.get('threshold_source', 'n/a')))}); the "
        f"headline scores are in the overview.</p><h3>Per class ({condition})</h3>"
        "<p>Support counts windows where the species is present; AP and ROC-AUC need no threshold; "
        "precision, recall and F1 are at the threshold shown.</p>"
        f"{_per_class_table(result, name)}{_pr_curves(builder, result)}"
    )
    return Section(title, body)


def _pr_curves(builder: _Builder, result: dict[str, Any]) -> str:
    aligned = builder.aligned
    if isinstance(aligned, str):
        return f'<p class="note">Precision-recall curves skipped: {html.escape(aligned)}</p>'
    per_class = {row["label"]: row for row in result["per_class"]}
    figure = pr_figure(
        aligned.truth[aligned.labels].to_numpy(dtype=int),
        aligned.windows[aligned.labels].to_numpy(dtype=float),
        aligned.labels,
        per_class,
    )
    image = builder.save(figure, "precision_recall", "precision-recall curve per species")
    if not image:
        return '<p class="note">Precision-recall curves skipped: no species is present in the labels.</p>'
    shown = (
        f"the {MAX_PR_CURVES} species with the most positive windows"
        if len(aligned.labels) > MAX_PR_CURVES
        else "each species present in the labels"
    )
    return (
        f"<p>Precision-recall curve of {shown}: each point is one threshold; the dot is the "
        f"threshold in use.</p>{image}"
    )


def _timelines(builder: _Builder) -> Section:
    title = "Detection timelines"
    aligned = builder.aligned
    if isinstance(aligned, str):
        return Section(title, note=f"Skipped: {aligned}")
    files = list(dict.fromkeys(aligned.windows["file"]))[:MAX_TIMELINES]
    images = [_timeline(builder, aligned, file, index) for index, file in enumerate(files, start=1)]
    body = (
        "<p>Each soundscape's spectrogram above a grid of species by 5-s window: the blue shade is "
        'the predicted probability, a <span style="color:#2f855a"><b>green outline</b></span> marks '
        'where the species truly calls, and an <span style="color:#c05621"><b>orange dot</b></span> '
        "where it is detected (probability at or above its threshold). Outline with dot: found; "
        "outline alone: missed; dot alone: false alarm.</p>" + "".join(images)
    )
    return Section(title, body)


def _timeline(builder: _Builder, aligned: _Aligned, file: str, index: int) -> str:
    """One recording's timeline image (its first MAX_TIMELINE_S seconds), or a note why not."""
    from dawnchorus.io.audio import AudioError, load

    rate = builder.model.config.audio.sample_rate if builder.model is not None else 32000
    try:
        samples = load(file, rate, duration_s=MAX_TIMELINE_S)
    except AudioError as exc:
        return f'<p class="note">{html.escape(str(exc))}</p>'
    of_file = (aligned.windows["file"] == file).to_numpy()
    rows = of_file & (aligned.windows["start_s"] < MAX_TIMELINE_S).to_numpy()
    name = Path(file).name
    caption = f"{name} (first {MAX_TIMELINE_S:g} s)" if rows.sum() < of_file.sum() else name
    figure = timeline_figure(
        samples,
        rate,
        aligned.windows[rows],
        aligned.truth[rows],
        aligned.labels,
        aligned.thresholds,
        caption,
        builder.model,
    )
    return builder.save(figure, f"timeline_{index}", f"detection timeline of {name}")


def _clean_vs_noisy(builder: _Builder) -> Section:
    title = "Clean vs noisy: what the field background costs"
    if not {"clean", "noisy"} <= set(builder.evaluation):
        return Section(
            title, note="Skipped: evaluation.json does not hold both a clean and a noisy evaluation."
        )
    pair = {name: builder.evaluation[name] for name in ("noisy", "clean")}
    image = builder.save(clean_vs_noisy_figure(pair), "clean_vs_noisy", "headline scores, clean vs noisy")
    body = (
        "<p>The same held-out soundscapes scored twice: as recorded (calls in wind, insects and "
        "coloured noise) and as clean copies holding only the calls over a faint recorder floor.</p>"
        f"{image}<p>{_clean_vs_noisy_reading(pair)}</p>"
    )
    return Section(title, body)


def _clean_vs_noisy_reading(pair: dict[str, dict[str, Any]]) -> str:
    """One sentence saying which way the comparison went, and what that means."""
    noisy, clean = pair["noisy"].get("cmap_padded"), pair["clean"].get("cmap_padded")
    if noisy is None or clean is None:
        return "Padded cmAP is missing for one of the two, so they cannot be compared."
    scores = f"padded cmAP {format_metric(clean)} clean vs {format_metric(noisy)} noisy"
    if clean >= noisy:
        return (
            f"The clean copies score higher ({scores}): the difference is what the field background still "
            "costs after noise augmentation."
        )
    return (
        f"Here the clean copies score lower ({scores}). The model was trained on clips and noise "
        "unlike this quiet audio: a model is reliable only on audio like what it was trained on, so "
        "add recordings like these to the noise bank or to the training set."
    )


SECTION_BUILDERS: tuple[Callable[[_Builder], Section], ...] = (
    _overview,
    _class_distribution,
    _example_clip,
    _training_curves,
    _evaluation,
    _timelines,
    _clean_vs_noisy,
)


def _reviewed_precision(builder: _Builder) -> Section:
    """Per reviewed predict folder: each species' precision at its threshold with its 95 % interval,
    from the review's stratified random sample (:mod:`dawnchorus.evaluate.verified`)."""
    from dawnchorus.errors import EvaluationError
    from dawnchorus.evaluate.verified import read_reviewed_run, review_species

    parts = [
        "<p>Precision of each species' detections (windows at or above its threshold), estimated from "
        "the verdicts of the review's random queue: items drawn per species and score bin, each bin "
        "weighted by its share of the detections. The interval is Wilson's (95 %) on the stratified "
        "estimate's effective sample size; bins without a verdict widen it. <code>dawnchorus calibrate "
        "RESULTS_DIR --model MODEL</code> turns these verdicts into per-species thresholds.</p>"
    ]
    for index, run in enumerate(builder.folder.reviewed_runs):
        try:
            table, verdicts = read_reviewed_run(run)
        except EvaluationError as exc:
            parts.append(f'<p class="note">{html.escape(str(exc))}</p>')
            continue
        own, source = _review_thresholds(builder, run)
        reviews = review_species(table, verdicts, own)
        rows = [
            f"<tr><th>{html.escape(r.label)}</th><td class=\"num\">{r.n_verdicts}</td>"
            f"<td class=\"num\">{r.n_random}</td><td class=\"num\">{r.threshold:.3f}</td>"
            f"<td class=\"num\" data-precision=\"{html.escape(r.label)}\">"
            f"{format_metric(r.precision.precision)}</td>"
            f"<td class=\"num\">{r.precision.low:.3f}-{r.precision.high:.3f}</td>"
            f"<td class=\"num\">{r.precision.n_detections}</td></tr>"
            for r in reviews
        ]
        figure = reviewed_precision_figure(
            [r.label for r in reviews], [r.precision.precision for r in reviews],
            [r.precision.low for r in reviews], [r.precision.high for r in reviews],
        )
        parts.append(
            f"<h3>{html.escape(str(run))}</h3><p>{len(verdicts)} verdicts; precision at {source}.</p>"
            + _table(["species", "verdicts", "random sample", "threshold", "precision", "95 % interval",
                      "detections"], rows)
            + builder.save(figure, f"reviewed_precision_{index}", f"reviewed precision, {run.name}")
        )
    return Section("Review: precision per species", "".join(parts))


def _review_thresholds(builder: _Builder, run: Path) -> tuple[dict[str, float], str]:
    """The thresholds a reviewed run's precision is shown at, and where they come from: those the run
    applied (its ``run.json``), else the folder's model's, else 0.5."""
    from dawnchorus.errors import InputError
    from dawnchorus.io.runinfo import read_run_info

    unread = ""
    try:
        info = read_run_info(run)
    except InputError as exc:  # a malformed run.json: the thresholds come from elsewhere, said so
        info, unread = None, f" ({exc})"
    if info is not None and info.thresholds:
        return dict(info.thresholds), "the thresholds the run applied (its run.json)"
    if builder.model is not None:
        model = builder.model
        thresholds = dict(zip(model.labels, model.class_thresholds.tolist(), strict=True))
        return thresholds, f"the model's thresholds{unread}"
    return {}, f"threshold 0.5 (neither a readable run.json nor a model in this folder){unread}"


# --- HTML pieces --------------------------------------------------------------------------------------


def _self_training_rounds(path: Path) -> Section:
    """Each noisy-student round's scores on the validation soundscapes, from ``RUN/rounds.csv``."""
    try:
        rounds = pd.read_csv(path)
        cells = rounds[["round", "roc_auc", "cmap", "f1", "windows_kept"]]
    except (OSError, ValueError, KeyError) as exc:
        raise ReportError(f"{path}: not a rounds table ({exc})") from None
    rows = [
        f"<tr><td>{'teacher' if int(r.round) == 0 else f'round {int(r.round)}'}</td>"
        + "".join(f'<td class="num">{format_metric(v)}</td>' for v in (r.roc_auc, r.cmap, r.f1))
        + f'<td class="num">{int(r.windows_kept)}</td></tr>'
        for r in cells.itertuples()
    ]
    body = (
        "<p>The teacher, then each student trained on the labelled clips plus the windows of the "
        "unlabelled recordings it pseudo-labelled (scores on the data set's labelled validation "
        "soundscapes; n/a: it has none).</p>"
        + _table(["model", "ROC-AUC", "padded cmAP", "F1", "pseudo-labelled windows"], rows)
    )
    return Section("Self-training rounds", body)


def _key_value_table(rows: Sequence[tuple[str, str]]) -> str:
    if not rows:
        return ""
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="facts">{cells}</table>'


def _metric_cell(path: str, value: Any) -> str:
    """A table cell showing one number of evaluation.json, tagged with where it comes from."""
    return f'<td class="num" data-metric="{html.escape(path)}">{format_metric(value)}</td>'


def _table(header: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _headline_table(evaluation: dict[str, dict[str, Any]]) -> str:
    names = list(evaluation)
    rows = [
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(_metric_cell(_metric_path(name, key), evaluation[name].get(key)) for name in names)
        + "</tr>"
        for key, label in HEADLINE_METRICS.items()
    ]
    return _table(["metric", *(CONDITION_TITLES.get(name, name) or "score" for name in names)], rows)


def _metric_path(condition: str, *keys: Any) -> str:
    """Where a shown number lives in evaluation.json, e.g. ``noisy.per_class.3.f1``."""
    return ".".join(str(part) for part in (condition, *keys) if part != "")


def _per_class_table(result: dict[str, Any], condition: str) -> str:
    rows = [
        f"<tr><th>{html.escape(str(row.get('label')))}</th>"
        + "".join(
            _metric_cell(_metric_path(condition, "per_class", position, key), row.get(key))
            for key in PER_CLASS_COLUMNS
        )
        + "</tr>"
        for position, row in enumerate(result.get("per_class", []))
    ]
    return _table(["label", *PER_CLASS_COLUMNS.values()], rows)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1a202c;
       background: #f7fafc; line-height: 1.5; }
header { background: #1a365d; color: white; padding: 1.2rem 2rem; }
header h1 { margin: 0; font-size: 1.6rem; }
header p { margin: 0.3rem 0 0; opacity: 0.85; }
nav { padding: 0.6rem 2rem; background: #e2e8f0; font-size: 0.9rem; }
nav a { margin-right: 1rem; color: #2b6cb0; text-decoration: none; }
main { max-width: 1150px; margin: 0 auto; padding: 1rem 2rem 3rem; }
section { background: white; border-radius: 6px; padding: 0.5rem 1.5rem 1.2rem; margin: 1.2rem 0;
          box-shadow: 0 1px 3px rgba(0, 0, 0, 0.08); }
h2 { color: #1a365d; border-bottom: 2px solid #e2e8f0; padding-bottom: 0.3rem; }
img { max-width: 100%; height: auto; display: block; margin: 0.8rem 0; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { padding: 0.25rem 0.8rem; border-bottom: 1px solid #e2e8f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics thead th { background: #edf2f7; }
table.facts th { color: #4a5568; font-weight: 600; }
.note { color: #718096; font-style: italic; }
code { background: #edf2f7; padding: 0 0.25rem; border-radius: 3px; }
footer { color: #718096; font-size: 0.8rem; text-align: center; padding: 1rem; }
"""


def _anchor(title: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in title.lower()).strip("-")


def _page(builder: _Builder, sections: Sequence[Section]) -> str:
    from dawnchorus.version import __version__

    folder = builder.folder
    trained = folder.model_path or folder.metrics_csv or folder.evaluation_path
    kind = "demo" if builder.demo else "training run" if trained else "reviewed predict run"
    root = folder.root
    nav = "".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title.split(":")[0])}</a>' for s in sections)
    parts = []
    for section in sections:
        content = f'<p class="note">{html.escape(section.note)}</p>' if section.note else section.body
        parts.append(
            f'<section id="{_anchor(section.title)}"><h2>{html.escape(section.title)}</h2>{content}</section>'
        )
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dawnchorus report: {html.escape(root.name)}</title><style>{STYLE}</style>"
    )
    header = f"<h1>dawnchorus report</h1><p>{kind}: {html.escape(str(root.resolve()))}</p>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body><header>{header}</header>'
        f"<nav>{nav}</nav><main>{''.join(parts)}</main>"
        f"<footer>dawnchorus {__version__}, {created}</footer></body></html>\n"
    )


__all__ = ["ReportError", "RunFolder", "build_report", "format_metric", "render_evaluation"]
