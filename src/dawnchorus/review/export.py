"""Verified selections out of a review: a Raven Pro selection table or a CSV.

A verified selection is a window a reviewer confirmed: verdict ``present`` (the species is the
model's label) or ``other`` (the species is the one the reviewer named). ``absent`` and ``unsure``
verdicts are not selections. The Raven table covers every recording of the run in one file, as
Raven Pro's multi-file tables and BirdNET-Analyzer's combined table do: ``Begin Time (s)`` counts
from the start of the first recording (recordings in the run's order, each as long as its last
window's end), ``Begin Path`` names the recording and ``File Offset (s)`` is the time inside it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dawnchorus.errors import InputError
from dawnchorus.io.files import atomic_write, atomic_write_text
from dawnchorus.io.outputs import RAVEN_COLUMNS, RAVEN_VIEW, clean_field, seconds_text
from dawnchorus.review.items import Run

EXPORT_FORMATS = ("raven", "csv")
SELECTION_COLUMNS = (
    "file", "start_s", "end_s", "label", "score", "verdict", "model_label", "note", "reviewer", "created_at",
)
HIGH_FREQ_HZ = 14_000.0  # as predict's Raven tables (the frontend's fmax)


def verified_selections(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The confirmed windows of ``verdicts`` (an active-verdict table, see
    :func:`dawnchorus.io.verdicts.read_verdicts`), by file and time: ``label`` is the species heard,
    ``model_label`` the label the model gave."""
    confirmed = verdicts[verdicts["verdict"].isin(["present", "other"])].copy()
    confirmed["model_label"] = confirmed["label"]
    other = confirmed["verdict"] == "other"
    confirmed.loc[other, "label"] = confirmed.loc[other, "other_label"]
    confirmed = confirmed.sort_values(["file", "start_s", "label"], kind="stable").reset_index(drop=True)
    return confirmed[list(SELECTION_COLUMNS)]


def export(run: Run, verdicts: pd.DataFrame, export_format: str, out: Path) -> tuple[Path, int]:
    """Write the verified selections of ``verdicts`` as ``export_format`` to ``out``; returns
    (``out``, how many selections)."""
    if export_format not in EXPORT_FORMATS:
        raise InputError(f"--export must be one of {', '.join(EXPORT_FORMATS)}, not {export_format!r}")
    selections = verified_selections(verdicts)
    if export_format == "csv":
        atomic_write(out, lambda tmp: selections.to_csv(tmp, index=False))
    else:
        atomic_write_text(out, raven_text(run, selections))
    return out, len(selections)


def raven_text(run: Run, selections: pd.DataFrame) -> str:
    """A Raven selection table of ``selections`` over every recording of ``run`` (see the module)."""
    lengths = run.windows.groupby("file", sort=False)["end_s"].max()
    offsets = lengths.cumsum() - lengths  # where each recording begins in the run's timeline
    lines = ["\t".join(RAVEN_COLUMNS)]
    for number, row in enumerate(selections.itertuples(index=False), start=1):
        shift = float(offsets.get(row.file, 0.0))
        fields = (
            str(number),
            RAVEN_VIEW,
            "1",
            seconds_text(shift + row.start_s),
            seconds_text(shift + row.end_s),
            "0.0",
            seconds_text(HIGH_FREQ_HZ),
            clean_field(row.label),
            clean_field(row.label),
            f"{float(row.score):.4f}",
            clean_field(row.file),
            seconds_text(row.start_s),
        )
        lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"
