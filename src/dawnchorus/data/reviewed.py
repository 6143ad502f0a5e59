"""Reviewed detections as labelled training windows (``dawnchorus train --reviewed RESULTS_DIR``).

:func:`reviewed_windows` turns the verdicts of a reviewed predict run
(:func:`dawnchorus.io.verdicts.read_verdicts`) into one row per judged window: ``file, start_s,
end_s`` and one target column per label, with a mask of the labels somebody judged there. The rules:

- ``present``: the label is a positive of the window;
- ``absent``: a negative;
- ``other`` (another species heard instead): the label a negative, ``other_label`` a positive;
- ``unsure``: nothing is learnt from it.

A label judged directly on a window keeps that verdict; a positive implied by an ``other`` verdict on
another label only fills a label nobody judged there. Labels the model does not have (an
``other_label`` typed freely) are left out and counted. Every label nobody judged on a window is
masked (0): the training loss leaves it out, so a window reviewed for one species teaches nothing
about the others. Serving the windows as training items is :mod:`dawnchorus.training`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.errors import DatasetError
from dawnchorus.io.runinfo import RunInfo, read_run_info
from dawnchorus.io.verdicts import REVIEWS_FILE, read_verdicts

KEY = ["file", "start_s", "end_s"]


@dataclass
class ReviewedWindows:
    """Judged windows: ``table`` (``file, start_s, end_s`` and one 0/1 target column per label, in
    ``labels`` order), ``mask`` ``(windows, labels)`` (1 where somebody judged the label there), and
    what was left out: ``unsure`` verdicts, ``unknown_labels`` (label -> verdicts naming it)."""

    table: pd.DataFrame
    mask: np.ndarray
    labels: list[str]
    unsure: int = 0
    unknown_labels: dict[str, int] = field(default_factory=dict)

    @property
    def positives(self) -> dict[str, int]:
        """Judged positives per label."""
        values = self.table[self.labels].to_numpy() * self.mask
        return {label: int(n) for label, n in zip(self.labels, values.sum(axis=0), strict=True)}

    @property
    def negatives(self) -> dict[str, int]:
        """Judged negatives per label."""
        values = (1 - self.table[self.labels].to_numpy()) * self.mask
        return {label: int(n) for label, n in zip(self.labels, values.sum(axis=0), strict=True)}

    def describe(self) -> str:
        """'12 windows (5 positive, 9 negative labels); 2 unsure verdicts left out; ...' for the user."""
        text = (
            f"{len(self.table)} windows ({sum(self.positives.values())} positive, "
            f"{sum(self.negatives.values())} negative labels)"
        )
        if self.unsure:
            text += f"; {self.unsure} unsure verdicts left out"
        if self.unknown_labels:
            names = ", ".join(sorted(self.unknown_labels))
            text += f"; verdicts naming labels not in the data set left out: {names}"
        return text


def reviewed_windows(verdicts: pd.DataFrame, labels: Sequence[str]) -> ReviewedWindows:
    """The judged windows of ``verdicts`` (the columns of :func:`~dawnchorus.io.verdicts.read_verdicts`)
    for a model with ``labels``: see the module docstring for the rules."""
    labels = list(labels)
    index = {label: j for j, label in enumerate(labels)}
    unsure = int((verdicts["verdict"] == "unsure").sum())
    unknown: dict[str, int] = {}
    judged = verdicts[verdicts["verdict"] != "unsure"]
    windows = judged[KEY].drop_duplicates().sort_values(KEY, kind="stable").reset_index(drop=True)
    row_of = {key: i for i, key in enumerate(windows.itertuples(index=False, name=None))}
    targets = np.zeros((len(windows), len(labels)), dtype=np.float32)
    direct = np.zeros_like(targets, dtype=bool)
    implied = np.zeros_like(targets, dtype=bool)

    def known(label: str) -> int | None:
        if label in index:
            return index[label]
        unknown[label] = unknown.get(label, 0) + 1
        return None

    for verdict in judged.itertuples(index=False):
        row = row_of[(verdict.file, verdict.start_s, verdict.end_s)]
        column = known(str(verdict.label))
        if column is not None:
            targets[row, column] = 1.0 if verdict.verdict == "present" else 0.0
            direct[row, column] = True
        if verdict.verdict == "other" and isinstance(verdict.other_label, str) and verdict.other_label:
            other = known(verdict.other_label)
            if other is not None:
                implied[row, other] = True
    fill = implied & ~direct
    targets[fill] = 1.0
    mask = (direct | implied).astype(np.float32)
    table = pd.concat([windows, pd.DataFrame(targets, columns=labels)], axis=1)
    keep = mask.any(axis=1)  # windows whose only verdicts named labels the model lacks teach nothing
    return ReviewedWindows(table[keep].reset_index(drop=True), mask[keep], labels, unsure, unknown)


def read_reviewed_windows(
    results_dir: str | Path, labels: Sequence[str], audio_dirs: Sequence[Path] = ()
) -> ReviewedWindows:
    """:func:`reviewed_windows` of run folder ``results_dir``, each ``file`` resolved to a recording
    on disk: where the run's run.json recorded it (:meth:`~dawnchorus.io.runinfo.RunInfo.recording_path`),
    else as named, else relative to the run folder, else by its path relative to (then its name in)
    one of ``audio_dirs``. Raises :class:`DatasetError` (source: the run folder) when it has no
    verdicts on the model's labels, listing every recording not found."""
    results_dir = Path(results_dir)
    source = f"reviewed run {results_dir}"
    if not results_dir.is_dir():
        raise DatasetError(["not a folder (give the predict --out folder you reviewed)"], source)
    verdicts = read_verdicts(results_dir)
    if verdicts.empty:
        raise DatasetError([f"no verdicts in {REVIEWS_FILE}; review the run first"], source)
    windows = reviewed_windows(verdicts, labels)
    if windows.table.empty:
        raise DatasetError(["no verdict names one of the model's labels as present or absent"], source)
    info = read_run_info(results_dir)
    resolved = {name: _find(name, results_dir, audio_dirs, info) for name in windows.table["file"].unique()}
    missing = [name for name, path in resolved.items() if path is None]
    if missing:
        raise DatasetError([f"{name}: reviewed recording not found" for name in missing], source)
    windows.table["file"] = windows.table["file"].map(lambda name: str(resolved[name]))
    return windows


def _find(name: str, results_dir: Path, audio_dirs: Sequence[Path], info: RunInfo | None) -> Path | None:
    recorded = info.recording_path(name) if info is not None else None
    if recorded is not None:
        return recorded
    path = Path(name)
    candidates = [path, results_dir / path]
    for folder in audio_dirs:
        relative = path.relative_to(path.anchor) if path.is_absolute() else path
        candidates += [Path(folder) / relative, Path(folder) / path.name]
    return next((c for c in candidates if c.is_file()), None)
