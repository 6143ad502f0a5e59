"""``train --reviewed RESULTS_DIR``: the verified windows of reviewed predict runs as training items.

The verdicts become labelled windows in :mod:`dawnchorus.data.reviewed` (confirmed species positive,
rejected ones negative, unsure dropped, labels nobody judged masked); this module puts them in the
data set's label order as :class:`~dawnchorus.training.windows.WindowItems`, which
:func:`dawnchorus.training.run.train` adds to the labelled clips like any window items.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.config import Config
from dawnchorus.data.layouts import load_training_set
from dawnchorus.data.reviewed import ReviewedWindows, read_reviewed_windows
from dawnchorus.errors import TrainingError
from dawnchorus.training.windows import WindowItems

# Windows of another length than the model's clip would teach a label for seconds nobody judged.
LENGTH_TOLERANCE_S = 1e-3


def reviewed_window_items(
    results_dirs: Sequence[str | Path], data: str | Path, config: Config
) -> tuple[WindowItems, ReviewedWindows]:
    """The judged windows of every run folder in ``results_dirs`` as training items for a run on
    ``data`` with ``config`` (targets in the data set's label order, mask of the judged labels, loss
    weight 1: verdicts are ground truth), and the windows themselves (for the counts). Windows not
    ``config.audio.clip_s`` long are a :class:`TrainingError` naming the run."""
    labels = load_training_set(data, on_problem="drop", check_audio=False).labels
    found = []
    for results_dir in results_dirs:
        windows = read_reviewed_windows(results_dir, labels)
        lengths = (windows.table["end_s"] - windows.table["start_s"]).to_numpy()
        wrong = np.abs(lengths - config.audio.clip_s) > LENGTH_TOLERANCE_S
        if wrong.any():
            raise TrainingError(
                f"{results_dir}: reviewed windows are {lengths[wrong][0]:g} s long, the model's clips "
                f"{config.audio.clip_s:g} s; review a run predicted with windows of the clip length"
            )
        found.append(windows)
    merged = ReviewedWindows(
        pd.concat([w.table for w in found], ignore_index=True),
        np.concatenate([w.mask for w in found]),
        list(labels),
        sum(w.unsure for w in found),
        {k: sum(w.unknown_labels.get(k, 0) for w in found) for w in found for k in w.unknown_labels},
    )
    items = WindowItems.from_table(
        merged.table, labels, config.audio.sample_rate, config.audio.clip_samples,
        mask=merged.mask, seed=config.train.seed,
    )
    return items, merged
