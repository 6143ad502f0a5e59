"""The report's matplotlib figures, and how the report writes numbers.

Each ``*_figure`` function draws one figure (class distribution, an example clip, training curves,
precision-recall curves, a detection timeline, clean vs noisy scores, reviewed precision per species)
and returns it unsaved;
:mod:`dawnchorus.report.html` saves them and lays out the page. :func:`format_metric` and the
metric titles live here because the figures and the page (and ``demo``) share them. This module
writes no files and no HTML.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dawnchorus.models.modelfile import LoadedModel

MAX_TIMELINE_ROWS = 16
MAX_PR_CURVES = 20  # the species with the most positive windows get a curve
MAX_LABELLED_BARS = 60  # above this many species the distribution is drawn by rank
HEADLINE_METRICS = {
    "cmap_padded": "padded cmAP (BirdCLEF 2023)",
    "roc_auc_macro": "macro ROC-AUC (BirdCLEF 2024/25)",
    "f1_macro_2022": "macro F1 at the thresholds (BirdCLEF 2022 analogue)",
    "balanced_accuracy": "balanced accuracy (BirdCLEF 2022 leaderboard)",
}
CONDITION_TITLES = {"noisy": "noisy soundscapes", "clean": "clean copies (no background)"}


def format_metric(value: Any, decimals: int = 3) -> str:
    """A metric as the report and the console show it: fixed decimals, integers as they are,
    ``n/a`` for missing or NaN values."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    number = float(value)
    return "n/a" if math.isnan(number) else f"{number:.{decimals}f}"


def class_distribution_figure(counts: pd.Series, scored: set[str] | None) -> Figure:
    """Clips per species: one labelled bar each, or (many species) counts by rank on a log scale."""
    if len(counts) > MAX_LABELLED_BARS:
        figure = _figure(8.0, 3.5)
        axis = figure.add_subplot()
        ordered = counts.sort_values(ascending=False)
        axis.bar(np.arange(1, len(ordered) + 1), ordered.to_numpy(), width=1.0, color="#2b6cb0")
        axis.set_yscale("log")
        axis.set_xlabel("species, commonest first")
        axis.set_ylabel("training clips (primary label)")
    else:
        figure = _figure(8.0, max(2.5, 0.28 * len(counts) + 1.2))
        axis = figure.add_subplot()
        ordered = counts.sort_values(ascending=True)
        colours = ["#2b6cb0" if scored is None or label in scored else "#a0aec0" for label in ordered.index]
        bars = axis.barh(ordered.index, ordered.to_numpy(), color=colours)
        axis.bar_label(bars, padding=3, fontsize=8)
        axis.tick_params(axis="y", labelsize=8)
        axis.set_xlabel("training clips (primary label)")
    axis.set_title(f"{len(counts)} species, {int(counts.sum())} clips")
    axis.spines[["top", "right"]].set_visible(False)
    return figure


def clip_figure(samples: np.ndarray, sample_rate: int, title: str, model: LoadedModel | None) -> Figure:
    """A clip's waveform above its log-mel spectrogram (the model's frontend settings when given)."""
    figure = _figure(9.0, 5.0)
    wave_axis, mel_axis = figure.subplots(2, 1, sharex=True, height_ratios=(1, 2))
    seconds = len(samples) / sample_rate
    wave_axis.plot(np.arange(len(samples)) / sample_rate, samples, linewidth=0.4, color="#2b6cb0")
    wave_axis.set_ylabel("amplitude")
    wave_axis.set_title(title)
    image = _mel_db(samples, sample_rate, model)
    shown = mel_axis.imshow(
        image, origin="lower", aspect="auto", extent=(0, seconds, 0, image.shape[0]), cmap="magma"
    )
    mel_axis.set_xlabel("time (s)")
    mel_axis.set_ylabel("mel bin")
    figure.colorbar(shown, ax=mel_axis, label="dB")
    return figure


def curves_figure(metrics: pd.DataFrame) -> Figure | None:
    """Losses and validation scores per epoch from Lightning's ``metrics.csv``; None when it has none."""
    per_epoch = metrics.groupby("epoch").mean(numeric_only=True)
    losses = [c for c in ("train/loss_epoch", "val/loss") if c in per_epoch and per_epoch[c].notna().any()]
    scores = [
        c
        for c in ("val/roc_auc", "val/cmap", "val_soundscape/roc_auc", "val_soundscape/cmap")
        if c in per_epoch and per_epoch[c].notna().any()
    ]
    if not losses and not scores:
        return None
    figure = _figure(10.0, 3.6)
    loss_axis, score_axis = figure.subplots(1, 2)
    epochs = per_epoch.index.to_numpy() + 1
    for column in losses:
        loss_axis.plot(epochs, per_epoch[column], marker="o", markersize=3, label=column)
    loss_axis.set_title("loss")
    for column in scores:
        style = "-" if column.startswith("val/") else "--"
        score_axis.plot(epochs, per_epoch[column], style, marker="o", markersize=3, label=column)
    score_axis.set_title("validation scores")
    for axis in (loss_axis, score_axis):
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return figure


def pr_figure(
    y_true: np.ndarray, y_score: np.ndarray, labels: Sequence[str], per_class: dict[str, dict]
) -> Figure | None:
    """Precision-recall curves of the species with the most positive windows (at most
    ``MAX_PR_CURVES``), each with its operating point at the threshold; None without positives."""
    from sklearn.metrics import precision_recall_curve

    support = y_true.sum(axis=0)
    by_support = [int(k) for k in np.argsort(-support, kind="stable") if support[k] > 0]
    present = sorted(by_support[:MAX_PR_CURVES])
    if not present:
        return None
    columns = min(4, len(present))
    rows = math.ceil(len(present) / columns)
    figure = _figure(3.0 * columns, 2.6 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, k in zip(axes, present, strict=False):
        precision, recall, _ = precision_recall_curve(y_true[:, k], y_score[:, k])
        axis.step(recall, precision, where="post", color="#2b6cb0")
        row = per_class.get(labels[k], {})
        if row.get("recall") is not None and row.get("precision") is not None:
            axis.plot(row["recall"], row["precision"], "o", color="#c05621", label="at threshold")
        axis.set_title(f"{labels[k]}  AP {format_metric(row.get('ap'))}", fontsize=9)
        axis.set_xlim(0, 1.02)
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("recall", fontsize=8)
        axis.set_ylabel("precision", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in axes[len(present) :]:
        axis.set_visible(False)
    return figure


def timeline_figure(
    samples: np.ndarray,
    sample_rate: int,
    windows: pd.DataFrame,
    truth: pd.DataFrame,
    labels: Sequence[str],
    thresholds: np.ndarray,
    title: str,
    model: LoadedModel | None,
) -> Figure:
    """A recording's spectrogram over a species x window grid: probability shaded, truth outlined,
    detections dotted."""
    probs = windows[list(labels)].to_numpy(dtype=np.float64)
    truth_hot = truth[list(labels)].to_numpy(dtype=bool)
    spans = windows[["start_s", "end_s"]].to_numpy(dtype=np.float64)
    shown = _timeline_rows(probs, truth_hot, thresholds)
    seconds = len(samples) / sample_rate
    figure = _figure(11.0, 2.6 + 0.3 * len(shown))
    spec_axis, grid_axis = figure.subplots(2, 1, sharex=True, height_ratios=(2.2, 0.3 * len(shown) + 0.4))
    image = _mel_db(samples, sample_rate, model)
    spec_axis.imshow(
        image, origin="lower", aspect="auto", extent=(0, seconds, 0, image.shape[0]), cmap="magma"
    )
    spec_axis.set_ylabel("mel bin")
    spec_axis.set_title(title, fontsize=10)
    for boundary in np.unique(spans):
        spec_axis.axvline(boundary, color="white", linewidth=0.4, alpha=0.5)
    for row, k in enumerate(shown):
        _draw_timeline_row(grid_axis, row, spans, probs[:, k], truth_hot[:, k], float(thresholds[k]))
    grid_axis.set_yticks(range(len(shown)), [labels[k] for k in shown], fontsize=8)
    grid_axis.set_ylim(len(shown) - 0.5, -0.5)
    grid_axis.set_xlim(0, float(max(spans.max(), seconds)))
    grid_axis.set_xlabel("time (s)")
    figure.legend(handles=_timeline_legend(), loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return figure


def clean_vs_noisy_figure(evaluation: dict[str, dict[str, Any]]) -> Figure:
    """The headline scores side by side for each condition (noisy soundscapes, clean copies)."""
    figure = _figure(8.0, 3.4)
    axis = figure.add_subplot()
    names = list(evaluation)
    keys = list(HEADLINE_METRICS)
    width = 0.8 / len(names)
    colours = {"clean": "#68d391", "noisy": "#2b6cb0"}
    for i, name in enumerate(names):
        values = [evaluation[name].get(key) for key in keys]
        heights = [np.nan if v is None else float(v) for v in values]
        bars = axis.bar(
            np.arange(len(keys)) + (i - (len(names) - 1) / 2) * width,
            heights,
            width,
            label=CONDITION_TITLES.get(name, name),
            color=colours.get(name),
        )
        axis.bar_label(bars, labels=[format_metric(v) for v in values], fontsize=7, padding=2)
    axis.set_xticks(range(len(keys)), ["padded cmAP", "macro ROC-AUC", "macro F1", "balanced acc."])
    axis.set_ylim(0, 1.12)
    figure.legend(loc="outside upper center", ncols=len(names), fontsize=8, frameon=False)
    axis.spines[["top", "right"]].set_visible(False)
    return figure


def reviewed_precision_figure(
    labels: Sequence[str], precision: Sequence[float | None], low: Sequence[float], high: Sequence[float]
) -> Figure | None:
    """Per species, the precision of its detections estimated from review verdicts, with its
    interval (a bar per species; a species without a verdict above its threshold shows the interval
    alone); None without species."""
    if not labels:
        return None
    figure = _figure(min(12.0, 1.2 + 0.45 * len(labels)), 3.2)
    axis = figure.subplots()
    x = np.arange(len(labels))
    values = np.array([np.nan if p is None else p for p in precision], dtype=float)
    axis.bar(x, np.nan_to_num(values), color="#90cdf4", width=0.6, label="precision")
    axis.vlines(x, low, high, color="#1a365d", linewidth=2, label="95 % interval")
    many = len(labels) > 8
    axis.set_xticks(x, labels, rotation=60 if many else 0, ha="right" if many else "center", fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("precision")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    return figure


# --- helpers ---------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _mel_db(samples: np.ndarray, sample_rate: int, model: LoadedModel | None) -> np.ndarray:
    """Log-mel power in dB relative to the loudest bin, 80 dB range, with the model's frontend."""
    from dawnchorus.augment.preview import preview_spectrogram

    frontend = model.config.frontend if model is not None else None
    return preview_spectrogram(samples, sample_rate, frontend, relative=True)


def _draw_timeline_row(
    axis, row: int, spans: np.ndarray, probs: np.ndarray, present: np.ndarray, threshold: float
) -> None:
    from matplotlib.patches import Rectangle

    for (start, end), probability, is_present in zip(spans, probs, present, strict=True):
        shade = (0.17, 0.42, 0.69, float(probability))
        axis.add_patch(Rectangle((start, row - 0.45), end - start, 0.9, facecolor=shade, edgecolor="none"))
        if is_present:
            outline = Rectangle(
                (start + 0.05, row - 0.45),
                end - start - 0.1,
                0.9,
                fill=False,
                edgecolor="#2f855a",
                linewidth=2,
            )
            axis.add_patch(outline)
        if probability >= threshold:
            axis.plot((start + end) / 2, row, "o", color="#c05621", markersize=5)


def _timeline_legend() -> list:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=(0.17, 0.42, 0.69, 0.6), label="predicted probability (darker = higher)"),
        Patch(fill=False, edgecolor="#2f855a", linewidth=2.0, label="species truly present"),
        Line2D(
            [], [], marker="o", linestyle="none", color="#c05621", label="detected (at or above threshold)"
        ),
    ]


def _timeline_rows(probs: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> list[int]:
    """Species worth a row: present, detected or nearly detected; else the five likeliest."""
    interesting = truth.any(axis=0) | (probs >= 0.5 * thresholds[None, :]).any(axis=0)
    order = np.argsort(-probs.max(axis=0))
    chosen = [int(k) for k in order if interesting[k]][:MAX_TIMELINE_ROWS]
    return sorted(chosen) if chosen else sorted(int(k) for k in order[:5])
