"""The prediction recipe applied to one recording's finished window table: overlapping windows
averaged back onto the window grid, then temporal smoothing of each species over neighbouring windows,
then per-recording max scaling, then (asked for) the model's calibration of scores to probabilities of a
true detection.

Both runners (and :func:`dawnchorus.predict`) call :func:`finish_table` where a recording's whole
table is assembled, never on a checkpointed segment or a Dask chunk: the saved segments hold the raw
probabilities, so a resumed or chunked run gives the same numbers as a single pass. Every step is off
by default (``PredictSettings.smoothing`` None, ``overlap_average`` False, ``max_scaling`` None):
the table is then returned unchanged. Computing probabilities belongs to ``pipeline.py``, writing
them to ``run.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dawnchorus.config import PredictSettings
from dawnchorus.errors import PredictionError


def check_recipe(settings: PredictSettings, window_s: float) -> None:
    """Raise :class:`PredictionError` (before anything is predicted) when ``settings`` ask to average
    overlapping windows with a hop that does not divide the model's ``window_s``."""
    if settings.overlap_average and settings.hop_s is not None:
        overlap_factor(window_s, settings.hop_s)


def overlap_factor(window_s: float, hop_s: float) -> int:
    """Windows starting in one window length (``window_s / hop_s``, a whole number >= 1); raises
    :class:`PredictionError` naming both when it is not one."""
    ratio = window_s / hop_s
    factor = round(ratio)
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise PredictionError(
            f"overlap_average: hop_s {hop_s:g} must divide the model's window of {window_s:g} s "
            f"(e.g. {window_s / 2:g} or {window_s / 4:g})"
        )
    return factor


def finish_table(
    frame: pd.DataFrame,
    labels: Sequence[str],
    window_s: float,
    hop_s: float,
    smoothing: Sequence[float] | None = None,
    overlap_average: bool = False,
    max_scaling: float | None = None,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One recording's final table (windows every ``hop_s`` seconds, in time order):
    :func:`average_overlaps` with ``overlap_average``, then :func:`smooth` with the ``smoothing``
    kernel, then :func:`scale_by_max` with ``max_scaling``, then ``calibration`` (one slope and
    intercept per label: :func:`dawnchorus.evaluate.calibration.calibrate_scores`, last, as the
    reviewed scores it was fitted on were finished); the table itself when all are off
    (``PredictSettings.smoothing``, ``overlap_average``, ``max_scaling``, ``calibrated``).
    With both on, the kernel's neighbours are grid windows (5 s apart for a 5-s model), otherwise
    the windows as predicted (``hop_s`` apart)."""
    if overlap_average and len(frame):
        frame = average_overlaps(frame, labels, window_s, hop_s)
    if smoothing is not None and len(frame):
        frame = frame.copy()
        columns = list(labels)
        values = frame[columns].to_numpy()
        frame[columns] = smooth(values, smoothing).astype(values.dtype)
    if max_scaling is not None and len(frame):
        frame = frame.copy()
        columns = list(labels)
        values = frame[columns].to_numpy()
        frame[columns] = scale_by_max(values, max_scaling).astype(values.dtype)
    if calibration is not None and len(frame):
        from dawnchorus.evaluate.calibration import calibrate_scores

        frame = frame.copy()
        columns = list(labels)
        values = frame[columns].to_numpy()
        slopes, intercepts = calibration
        frame[columns] = calibrate_scores(values, slopes[None, :], intercepts[None, :]).astype(values.dtype)
    return frame


def scale_by_max(probabilities: np.ndarray, strength: float) -> np.ndarray:
    """Per-recording max scaling: each column of ``probabilities`` (one recording's windows x
    species) blended with its maximum over the recording, ``p' = p * (1 - a) + p * max(p) * a``.

    A species heard clearly somewhere in a recording keeps its scores elsewhere in it (``max`` near
    1: ``p' ~ p``); one that never scores high anywhere is pushed down (``p' ~ p * (1 - a)`` for a
    recording-wide max near 0), which lowers false positives from isolated noise. Order within a
    species and recording is unchanged, and ``p'`` stays in [0, 1] for ``a`` in [0, 1]. Max scaling
    is part of the BirdCLEF 2024-25 prediction recipe issue 13 lists; which top solution used this
    exact form, and at what ``a``, could not be checked offline when it was written, so it is off by
    default: measure ``a`` on labelled soundscapes (``evaluate``) before relying on it.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"max scaling must be in [0, 1], got {strength}")
    values = np.asarray(probabilities, dtype=np.float64)
    if not len(values):
        return values
    peak = values.max(axis=0, keepdims=True)
    return values * (1.0 - strength) + values * peak * strength


def smooth(probabilities: np.ndarray, kernel: Sequence[float]) -> np.ndarray:
    """Each column of ``probabilities`` (windows x species, in time order) smoothed over neighbouring
    windows with ``kernel`` (odd length, centred on the window itself).

    Window ``i`` becomes ``sum_d w[d] * p[i + d - c] / sum_d w[d]`` with ``c = len(kernel) // 2``, the
    sums over the ``d`` whose window exists: at the first and last windows of a recording the kernel is
    renormalised over the windows that exist (no zero or mirrored padding), so a constant track stays
    constant. BirdCLEF 2025 1st place used ``[0.1, 0.2, 0.4, 0.2, 0.1]`` on 5-s windows.
    """
    weights = np.asarray(kernel, dtype=np.float64)
    if weights.ndim != 1 or len(weights) % 2 == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"kernel must be an odd number of weights >= 0 with a positive sum, got {kernel}")
    values = np.asarray(probabilities, dtype=np.float64)
    count, centre = len(values), len(weights) // 2
    padded = np.zeros((count + 2 * centre, *values.shape[1:]))
    padded[centre : centre + count] = values
    present = np.zeros(count + 2 * centre)
    present[centre : centre + count] = 1.0
    total = np.zeros_like(values)
    norm = np.zeros(count)
    for offset, weight in enumerate(weights):
        total += weight * padded[offset : offset + count]
        norm += weight * present[offset : offset + count]
    norm = np.where(norm > 0, norm, 1.0)  # only zero weights reach this window: it sums to 0 too
    return total / norm.reshape(-1, *([1] * (values.ndim - 1)))


def average_overlaps(
    frame: pd.DataFrame, labels: Sequence[str], window_s: float, hop_s: float
) -> pd.DataFrame:
    """Windows every ``hop_s`` seconds (``hop_s`` dividing ``window_s``) averaged onto the
    non-overlapping grid of ``window_s`` windows (``start_s`` 0, ``window_s``, ``2 * window_s``, ...).

    Grid window ``[k W, (k + 1) W)`` is the average of the windows that overlap it, each weighted by the
    seconds it shares with it (renormalised over the windows that exist): at hop ``W / 2`` it is
    ``0.25 p(kW - W/2) + 0.5 p(kW) + 0.25 p(kW + W/2)``. The grid rows are exactly those a run at hop
    ``W`` gives for the same recording (the last one may be zero-padded as there).
    """
    factor = overlap_factor(window_s, hop_s)
    if factor == 1:
        return frame
    columns = list(labels)
    position = np.rint(frame["start_s"].to_numpy(dtype=np.float64) / hop_s).astype(np.int64)
    values = frame[columns].to_numpy()
    cell, rest = np.divmod(position, factor)
    cells = int((cell + (rest > 0)).max()) + 1
    total = np.zeros((cells, len(columns)))
    weight = np.zeros(cells)
    first = (factor - rest) / factor  # share of each window in the grid window it starts in
    np.add.at(total, cell, first[:, None] * values)
    np.add.at(weight, cell, first)
    spill = rest > 0  # the rest of such a window lies in the next grid window
    np.add.at(total, cell[spill] + 1, (rest[spill] / factor)[:, None] * values[spill])
    np.add.at(weight, cell[spill] + 1, rest[spill] / factor)
    kept = weight > 0
    starts = np.round(np.flatnonzero(kept) * window_s, 3)
    averaged = pd.DataFrame((total[kept] / weight[kept, None]).astype(values.dtype), columns=columns)
    averaged.insert(0, "end_s", np.round(starts + window_s, 3))
    averaged.insert(0, "start_s", starts)
    averaged.insert(0, "file", frame["file"].iloc[0])
    return averaged
