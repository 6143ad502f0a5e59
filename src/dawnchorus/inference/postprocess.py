"""From window tables to detections and combined outputs: thresholds, Raven/Audacity files per
recording, and the combined tables (CSV, Parquet, BirdCLEF submissions) of a run folder.

Owns what happens to probabilities once they are computed; it neither computes them (``pipeline.py``)
nor decides what is still to do in a run folder (``run.py``). The writers of each format live in
:mod:`dawnchorus.io.outputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dawnchorus.errors import PredictionError
from dawnchorus.io import outputs
from dawnchorus.io.files import atomic_write

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel


def class_thresholds(
    model: LoadedModel, threshold: float | None = None, calibrated: bool = False
) -> np.ndarray:
    """One detection threshold per label: ``threshold`` for every class (on the scores reported:
    calibrated ones with ``calibrated``), or the model's own (``calibrated``: mapped through the
    model's calibration, so the same windows are detected)."""
    if threshold is not None:
        return np.full(len(model.labels), threshold, np.float32)
    calibration = calibration_for(model, calibrated)
    if calibration is None:
        return model.class_thresholds
    from dawnchorus.evaluate.calibration import calibrate_scores

    return calibrate_scores(model.class_thresholds, *calibration).astype(np.float32)


def calibration_for(model: LoadedModel, calibrated: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The (slopes, intercepts) per label that ``PredictSettings.calibrated`` applies (NaN: a label
    left uncalibrated, its scores as they are), None when not asked; a model without a calibration
    is a :class:`PredictionError` (before anything is predicted)."""
    if not calibrated:
        return None
    arrays = getattr(model, "calibration_arrays", None)  # an ensemble has none
    if arrays is None:
        raise PredictionError(
            f"{getattr(model, 'path', None) or 'the model'}: no calibration stored in it; fit one with "
            "'dawnchorus calibrate RESULTS_DIR --model MODEL' on a reviewed run, or leave out --calibrated"
        )
    return arrays


def write_detections(
    frame: pd.DataFrame,
    labels: Sequence[str],
    thresholds: np.ndarray,
    out_dir: Path,
    key: str,
    formats: Sequence[str],
    merge: bool,
) -> None:
    """One recording's detections (windows at or above their class threshold; consecutive ones
    merged with ``merge``) as a Raven selection table and Audacity labels, as ``formats`` ask."""
    if "raven" not in formats and "audacity" not in formats:
        return
    found = outputs.detections(frame, list(labels), thresholds, merge=merge)
    if "raven" in formats:
        outputs.write_raven_table(found, out_dir / "raven" / f"{key}.selections.txt")
    if "audacity" in formats:
        outputs.write_audacity_labels(found, out_dir / "audacity" / f"{key}.txt")


def write_combined(
    model: LoadedModel, parts: Sequence[Path], out_dir: Path, thresholds: np.ndarray, formats: Sequence[str]
) -> dict[str, Path]:
    """Rebuild the combined tables (CSV, Parquet, BirdCLEF submissions) from the recordings' ``parts``
    (those that exist); returns what was written, by format."""
    frames = [outputs.read_probabilities(p) for p in parts if p.is_file()]
    columns = ["file", "start_s", "end_s", *model.labels]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    written: dict[str, Path] = {}
    if "csv" in formats:
        written["csv"] = out_dir / "predictions.csv"
        outputs.write_probabilities_csv(table, written["csv"])
    if "parquet" in formats:
        written["parquet"] = out_dir / "predictions.parquet"
        outputs.write_probabilities_parquet(table, written["parquet"])
    if "birdclef" in formats:
        scored = model.scored_labels or model.labels
        index = [model.labels.index(label) for label in scored]
        sub22 = outputs.birdclef2022_submission(table, scored, thresholds[index])
        sub23 = outputs.birdclef2023_submission(table, model.labels)
        written["birdclef2022"] = out_dir / "submission_2022.csv"
        written["birdclef2023"] = out_dir / "submission_2023.csv"
        atomic_write(written["birdclef2022"], lambda tmp: sub22.to_csv(tmp, index=False))
        atomic_write(written["birdclef2023"], lambda tmp: sub23.to_csv(tmp, index=False))
    if "raven" in formats:
        written["raven"] = out_dir / "raven"
    if "audacity" in formats:
        written["audacity"] = out_dir / "audacity"
    return written


def write_errors(failed: Sequence[tuple[str, str]], out_dir: Path) -> Path:
    """``errors.csv``: every recording that could not be predicted, with the reason."""
    error_file = out_dir / "errors.csv"
    table = pd.DataFrame(list(failed), columns=["file", "error"])
    atomic_write(error_file, lambda tmp: table.to_csv(tmp, index=False))
    return error_file
