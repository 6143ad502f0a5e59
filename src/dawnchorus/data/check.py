"""The ``dawnchorus data check`` summary: facts about a training set and their console report.

:func:`summarize` condenses a :class:`~dawnchorus.data.layouts.TrainingSet` (class counts, durations,
sample rates, problems); :func:`render_summary` prints it with a long-tail histogram. Reading and
validating the set is :mod:`dawnchorus.data.layouts`' job.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.text import Text

from dawnchorus.data.layouts import Problem, TrainingSet


@dataclass(frozen=True)
class DatasetSummary:
    """Facts about a training set worth checking before training on it."""

    root: str
    layout: str
    n_classes: int
    n_clips: int
    clips_per_class: list[tuple[str, int]]  # most clips first
    total_hours: float
    sample_rates: dict[int, int]  # sample rate -> clips
    duration_min_s: float
    duration_median_s: float
    duration_max_s: float
    problems: list[Problem]

    @property
    def singleton_classes(self) -> list[str]:
        """Classes with a single clip (never in validation)."""
        return [label for label, count in self.clips_per_class if count == 1]


def summarize(ts: TrainingSet) -> DatasetSummary:
    """Class counts, durations, sample rates and problems of ``ts``.

    Class counts count rows; audio statistics count each readable file once (duplicate rows and
    unreadable files excluded).
    """
    clips = ts.clips
    counts = Counter(clips["primary_label"][clips["primary_label"] != ""])
    per_class = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    files = clips.drop_duplicates("path").dropna(subset=["duration_s"])
    durations = files["duration_s"].to_numpy(dtype=np.float64)
    rates = files["sample_rate"].astype(int).value_counts()
    return DatasetSummary(
        root=str(ts.root),
        layout=ts.layout,
        n_classes=len(ts.labels),
        n_clips=len(clips),
        clips_per_class=per_class,
        total_hours=float(durations.sum() / 3600.0),
        sample_rates={int(rate): int(n) for rate, n in sorted(rates.items())},
        duration_min_s=float(durations.min()) if len(durations) else math.nan,
        duration_median_s=float(np.median(durations)) if len(durations) else math.nan,
        duration_max_s=float(durations.max()) if len(durations) else math.nan,
        problems=list(ts.problems),
    )


HISTOGRAM_WIDTH = 40
HISTOGRAM_TOP = 15
HISTOGRAM_BOTTOM = 10
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(count: int, largest: int, width: int = HISTOGRAM_WIDTH) -> str:
    """A horizontal bar in block characters, eighth-character resolution, at least a sliver."""
    eighths = max(1, round(count / max(largest, 1) * width * 8)) if count else 0
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _seconds(value: float) -> str:
    return "unknown" if math.isnan(value) else f"{value:.2f} s"


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def render_summary(summary: DatasetSummary, console: Console) -> None:
    """Print a readable report: totals, long-tail histogram, sample rates, durations, problems."""
    title = Text(f"Training set {summary.root} ({summary.layout} layout)", style="bold")
    console.print(title, soft_wrap=True)
    console.print(f"  classes: {summary.n_classes}   clips: {summary.n_clips}   "
                  f"audio: {_duration(summary.total_hours)}   "
                  f"single-clip classes: {len(summary.singleton_classes)}")
    _render_histogram(summary.clips_per_class, console)
    rates = ", ".join(f"{rate} Hz: {n}" for rate, n in summary.sample_rates.items()) or "unknown"
    console.print(Text(f"Sample rates (clips): {rates}"))
    console.print(Text(f"Durations: min {_seconds(summary.duration_min_s)}, "
                       f"median {_seconds(summary.duration_median_s)}, "
                       f"max {_seconds(summary.duration_max_s)}"))
    if not summary.problems:
        console.print(Text("No problems found.", style="green"))
        return
    kinds = Counter(problem.kind for problem in summary.problems)
    overview = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    console.print(Text(f"{len(summary.problems)} problem(s) ({overview}):", style="bold red"))
    for problem in summary.problems:  # never wrapped: a user copies the path, a script greps the line
        console.print(Text(f"  {problem}", style="red"), soft_wrap=True)


def _render_histogram(clips_per_class: list[tuple[str, int]], console: Console) -> None:
    console.print(Text("Clips per class (most first):", style="bold"))
    if not clips_per_class:
        console.print("  (no labelled clips)")
        return
    shown: list[tuple[str, int] | None] = list(clips_per_class)
    hidden = len(clips_per_class) - HISTOGRAM_TOP - HISTOGRAM_BOTTOM
    if hidden > 0:
        shown = [*clips_per_class[:HISTOGRAM_TOP], None, *clips_per_class[-HISTOGRAM_BOTTOM:]]
    largest = clips_per_class[0][1]
    name_width = max(len(label) for label, _ in clips_per_class)
    count_width = len(str(largest))
    for entry in shown:
        if entry is None:
            console.print(Text(f"  ... {hidden} more classes ...", style="dim"))
            continue
        label, count = entry
        line = Text(f"  {label:<{name_width}} {count:>{count_width}} ")
        line.append(_bar(count, largest), style="cyan")
        console.print(line)
