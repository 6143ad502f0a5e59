"""Pseudo-labels: a teacher's soft labels for every window of unlabelled recordings.

:func:`pseudo_label` runs the teacher over the recordings with the prediction runner
(:func:`dawnchorus.inference.run.run_prediction`: streaming, one atomically written part per recording,
so an interrupted run resumes and a corrupt recording is named in ``errors.csv`` and skipped) into
``PL/teacher/``, then cleans the window probabilities as :class:`~dawnchorus.config.PseudoLabelSettings`
say (:func:`clean_pseudo_labels`: keep rule, floor, power) and writes ``PL/pseudo_labels.parquet``
(``file, start_s, end_s``, one soft target per label, kept windows only) and ``PL/pseudo_labels.json``
(the settings, the teacher's file and SHA-256, counts). :func:`read_pseudo_labels` reads a PL folder back.

This module does not train on them: :mod:`dawnchorus.training.windows` turns the table into training
items and :mod:`dawnchorus.training.rounds` runs the noisy-student loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dawnchorus.config import PredictSettings, PseudoLabelSettings
from dawnchorus.errors import InputError
from dawnchorus.inference.run import ProgressCallback, model_sha256, run_prediction
from dawnchorus.io.files import atomic_write, output_folder
from dawnchorus.io.outputs import read_probabilities, write_probabilities_parquet
from dawnchorus.models.modelfile import LoadedModel

TABLE_NAME = "pseudo_labels.parquet"
INFO_NAME = "pseudo_labels.json"
TEACHER_DIR = "teacher"  # the prediction run folder of the teacher: parts, errors.csv
# A window "has" a species in the summary when its soft target reaches this.
PRESENT = 0.5


@dataclass
class PseudoLabels:
    """A cleaned pseudo-label table and what made it."""

    table: pd.DataFrame  # file, start_s, end_s, one soft target per label (kept windows only)
    labels: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def recordings(self) -> list[str]:
        """Every recording the teacher was run on (kept windows or not)."""
        return list(self.info.get("recordings", sorted(self.table["file"].unique())))


@dataclass
class PseudoLabelRun:
    """What :func:`pseudo_label` did."""

    out_dir: Path
    labels: PseudoLabels
    windows: int  # windows the teacher scored
    kept: int
    predicted: int  # recordings predicted now
    skipped: int  # recordings whose teacher part an earlier run left
    failed: list[tuple[str, str]]
    per_label: dict[str, dict[str, float]]


def clean_pseudo_labels(
    probabilities: np.ndarray, settings: PseudoLabelSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Soft targets and the kept-window mask of ``(windows, labels)`` teacher probabilities.

    A window is kept when its largest raw probability is ``>= settings.keep``; raw probabilities below
    ``settings.floor`` become 0; what is left is raised to ``settings.power``. Returns
    ``(targets of the kept windows, keep mask over all windows)``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities must be (windows, labels), got shape {probabilities.shape}")
    keep = probabilities.max(axis=1, initial=0.0) >= settings.keep
    targets = np.where(probabilities[keep] < settings.floor, 0.0, probabilities[keep])
    if settings.power != 1.0:
        targets = targets ** settings.power
    return targets.astype(np.float32), keep


def pseudo_label(
    model: LoadedModel,
    recordings: Sequence[str | Path],
    out_dir: str | Path,
    settings: PseudoLabelSettings | None = None,
    predict_settings: PredictSettings | None = None,
    progress: ProgressCallback | None = None,
) -> PseudoLabelRun:
    """Pseudo-label ``recordings`` with ``model`` into ``out_dir`` (see the module docstring).

    ``predict_settings`` choose the engine, device and batch size (the hop is ``settings.hop_s``;
    outputs are the teacher's Parquet table only). A re-run resumes from the teacher's parts; with
    other clean-up settings it only cleans again.
    """
    settings = settings or PseudoLabelSettings()
    out_dir = output_folder(out_dir, "pseudo-label folder")
    base = predict_settings or PredictSettings()
    run_settings = base.model_copy(update={"hop_s": settings.hop_s, "formats": ["parquet"]})
    # Absolute paths: the table's windows are read back from wherever training runs.
    recordings = [Path(recording).resolve() for recording in recordings]
    summary = run_prediction(model, recordings, out_dir / TEACHER_DIR, run_settings, progress=progress)
    teacher_table = summary.outputs.get("parquet")
    raw = (
        read_probabilities(teacher_table)
        if teacher_table is not None and Path(teacher_table).is_file()
        else pd.DataFrame(columns=["file", "start_s", "end_s", *model.labels])
    )
    targets, keep = clean_pseudo_labels(raw[model.labels].to_numpy(dtype=np.float32), settings)
    table = raw.loc[keep, ["file", "start_s", "end_s"]].reset_index(drop=True)
    table = pd.concat([table, pd.DataFrame(targets, columns=model.labels)], axis=1)
    per_label = {
        label: {"present": int((targets[:, j] >= PRESENT).sum()), "soft": float(targets[:, j].sum())}
        for j, label in enumerate(model.labels)
    }
    failed = {str(path) for path, _ in summary.failed}
    info = {
        "teacher": str(Path(model.path).resolve()) if model.path is not None else None,
        "teacher_sha256": model_sha256(model),
        "labels": list(model.labels),
        "settings": settings.model_dump(mode="json"),
        "clip_s": model.config.audio.clip_s,
        "recordings": sorted(str(p) for p in raw["file"].unique()) if len(raw) else [],
        "failed": sorted(failed),
        "windows": int(len(raw)),
        "kept": int(keep.sum()),
        "per_label": per_label,
    }
    write_probabilities_parquet(table, out_dir / TABLE_NAME)
    atomic_write(out_dir / INFO_NAME, lambda temporary: temporary.write_text(json.dumps(info, indent=1)))
    return PseudoLabelRun(
        out_dir=out_dir,
        labels=PseudoLabels(table, list(model.labels), info),
        windows=int(len(raw)),
        kept=int(keep.sum()),
        predicted=summary.predicted,
        skipped=summary.skipped,
        failed=summary.failed,
        per_label=per_label,
    )


def read_pseudo_labels(folder: str | Path) -> PseudoLabels:
    """The pseudo-labels a :func:`pseudo_label` run wrote in ``folder``; a folder without them (or with
    a damaged table) is an :class:`InputError` naming the file."""
    folder = Path(folder)
    table_path, info_path = folder / TABLE_NAME, folder / INFO_NAME
    for path in (table_path, info_path):
        if not path.is_file():
            raise InputError(f"{path}: not found; make it with `dawnchorus pseudo-label MODEL RECORDINGS "
                             f"--out {folder}`")
    try:
        info = json.loads(info_path.read_text())
        labels = [str(label) for label in info["labels"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{info_path}: not a pseudo-label description ({exc})") from None
    table = read_probabilities(table_path)
    missing = [label for label in labels if label not in table.columns]
    if missing:
        raise InputError(f"{table_path}: no column for label(s) {', '.join(missing)}")
    return PseudoLabels(table, labels, info)
