"""What the verdicts of a reviewed predict run say, per species: precision with its interval, the
threshold reaching a target precision, and a logistic calibration.

Reads the run folder's window table (``predictions.parquet``, else ``predictions.csv``) and its
verdicts (:func:`dawnchorus.io.verdicts.read_verdicts`) and hands them to the math of
:mod:`dawnchorus.evaluate.calibration`; ``dawnchorus calibrate`` and ``dawnchorus report`` print what
:func:`review_species` returns. Verdicts to numbers: ``present`` is a true detection of the item's
label, ``absent`` and ``other`` (another species heard instead) a false one, ``unsure`` is left out.
Precision and thresholds use only the random queue's verdicts (the stratified sample);
calibration uses every verdict (see the calibration module for why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.errors import EvaluationError
from dawnchorus.evaluate.calibration import (
    DEFAULT_EDGES,
    LogisticCalibration,
    PrecisionEstimate,
    ThresholdChoice,
    fit_logistic_calibration,
    stratified_precision,
    threshold_for_precision,
)
from dawnchorus.io.outputs import read_probabilities
from dawnchorus.io.runinfo import read_run_info
from dawnchorus.io.verdicts import REVIEWS_FILE, read_verdicts

RANDOM_QUEUE = "random"  # the queue name of the review's stratified random sample (io.verdicts.QUEUES)
TABLES = ("predictions.parquet", "predictions.csv")


@dataclass(frozen=True)
class SpeciesReview:
    """One species' verdicts summarised: ``n_verdicts`` (present, absent or other, any queue),
    ``n_random`` (those of the random sample), precision at ``threshold``; with a target, the
    threshold reaching it (``choice``); the calibration, or why there is none (``calibration_problem``)."""

    label: str
    n_verdicts: int
    n_random: int
    threshold: float
    precision: PrecisionEstimate
    choice: ThresholdChoice | None
    calibration: LogisticCalibration | None
    calibration_problem: str = ""


def read_reviewed_run(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run folder's window table and its active verdicts (unsure ones included); raises
    :class:`EvaluationError` naming the folder when it has no table or no verdicts."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise EvaluationError(f"{results_dir}: not a folder (give a predict --out folder)")
    table_path = next((results_dir / name for name in TABLES if (results_dir / name).is_file()), None)
    if table_path is None:
        raise EvaluationError(
            f"{results_dir}: no {' or '.join(TABLES)}: not a finished predict run folder"
        )
    verdicts = read_verdicts(results_dir)
    if verdicts.empty:
        raise EvaluationError(f"{results_dir}: no verdicts in {REVIEWS_FILE}: review the run first")
    return read_probabilities(table_path), verdicts


def scores_were_calibrated(results_dir: str | Path) -> bool:
    """Whether the run's scores are calibrated ones (``predict --calibrated``), as its ``run.json``
    says, else as its newest parts folder's tag says (a ``cal`` part, see
    :func:`dawnchorus.inference.run.run_tag`); a calibration fitted on those would be fitted on a
    calibration's output."""
    info = read_run_info(results_dir)
    if info is not None:
        return bool(info.settings.get("calibrated"))
    tags = [p for p in (Path(results_dir) / "parts").glob("*") if p.is_dir()]
    if not tags:
        return False
    newest = max(tags, key=lambda p: p.stat().st_mtime)
    return "cal" in newest.name.split("-")


def verdict_truth(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts that say true or false: ``unsure`` dropped, column ``true`` (1 present, 0 absent
    or another species)."""
    judged = verdicts[verdicts["verdict"] != "unsure"].copy()
    judged["true"] = (judged["verdict"] == "present").astype(np.float64)
    return judged


def review_species(
    table: pd.DataFrame,
    verdicts: pd.DataFrame,
    thresholds: Mapping[str, float],
    target: float | None = None,
    min_count: int = 10,
    edges: Sequence[float] = DEFAULT_EDGES,
    confidence: float = 0.95,
) -> list[SpeciesReview]:
    """Per species with verdicts (in the order of the table's label columns): precision of the
    detections at ``thresholds[label]`` (default 0.5), with ``target`` the lowest threshold reaching
    it (see :func:`~dawnchorus.evaluate.calibration.threshold_for_precision`), and a calibration
    fitted on every verdict. Verdicts on labels the table lacks are left out."""
    judged = verdict_truth(verdicts)
    labels = [c for c in table.columns if c not in ("file", "start_s", "end_s")]
    rows = []
    for label in labels:
        mine = judged[judged["label"] == label]
        if mine.empty:
            continue
        population = table[label].to_numpy(dtype=np.float64)
        sample = mine[mine["queue"] == RANDOM_QUEUE]
        scores, truth = sample["score"].to_numpy(), sample["true"].to_numpy()
        threshold = float(thresholds.get(label, 0.5))
        precision = stratified_precision(scores, truth, population, threshold, edges, confidence)
        choice = None
        if target is not None:
            choice = threshold_for_precision(scores, truth, population, target, min_count, edges)
        calibration, problem = None, ""
        try:
            calibration = fit_logistic_calibration(mine["score"].to_numpy(), mine["true"].to_numpy())
        except EvaluationError as exc:
            problem = str(exc)
        rows.append(
            SpeciesReview(label, len(mine), len(sample), threshold, precision, choice, calibration, problem)
        )
    return rows


def fitted_model_settings(
    reviews: Sequence[SpeciesReview],
    labels: Sequence[str],
    thresholds: Sequence[float],
    calibration: Mapping[str, object] | None = None,
    target: float | None = None,
) -> tuple[list[float], dict[str, object]]:
    """What ``calibrate`` writes into a model file with ``labels`` and per-class ``thresholds``: the
    per-class thresholds, each species' replaced by the one reaching the target where one did, and
    the ``calibration`` entry (see :func:`dawnchorus.models.modelfile.calibration_entry`), each
    species' fit replacing an earlier one (earlier fits of species without a new one kept)."""
    per_class = [float(t) for t in thresholds]
    previous = dict((calibration or {}).get("labels", {}))  # type: ignore[call-overload]
    for review in reviews:
        if review.label not in labels:
            continue
        if review.choice is not None and review.choice.reached and review.choice.threshold is not None:
            per_class[list(labels).index(review.label)] = review.choice.threshold
        if review.calibration is not None:
            previous[review.label] = review.calibration.as_dict()
    entry: dict[str, object] = {"method": "logistic-logit", "target_precision": target, "labels": previous}
    return per_class, entry
