"""Writers for every output format of ``predict``, and the reader of its prediction tables.

The canonical prediction table has one row per window: ``file, start_s, end_s`` followed by one
``float32`` probability column per label. From it this module derives BirdCLEF submissions
(2022: ``row_id, target``; 2023+: one column per label), detection lists, Raven Pro selection
tables and Audacity label files. Every file is written atomically
(:func:`dawnchorus.io.files.atomic_write`): a reader never sees a half-written file, and a failed
write leaves no partial file behind.

A window counts as a detection of a label when its probability is ``>= threshold``. Reading Raven
and Audacity files (and every other label format) is :mod:`dawnchorus.io.annotations`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.errors import OutputError
from dawnchorus.io.files import atomic_write, atomic_write_text

KEY_COLUMNS = ("file", "start_s", "end_s")
DETECTION_COLUMNS = ("file", "start_s", "end_s", "label", "confidence")

# Columns as BirdNET-Analyzer writes its Raven selection tables (birdnet_analyzer/analyze/utils.py).
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Common Name",
    "Species Code",
    "Confidence",
    "Begin Path",
    "File Offset (s)",
)
RAVEN_VIEW = "Spectrogram 1"

# Decimals kept for probabilities in CSV (Parquet keeps the exact float32 values).
CSV_PROBABILITY_DECIMALS = 6

Thresholds = float | Sequence[float] | np.ndarray | Mapping[str, float]


# --------------------------------------------------------------------------------------------
# the prediction table


def label_columns(table: pd.DataFrame) -> list[str]:
    """The probability columns of a prediction table: every column but ``file, start_s, end_s``."""
    return [column for column in table.columns if column not in KEY_COLUMNS]


def validate_predictions(
    table: pd.DataFrame, source: str = "predictions", probability_dtype: type = np.float32
) -> pd.DataFrame:
    """Check the canonical columns and types; return a copy with ``probability_dtype`` probabilities.

    ``float32`` by default, the written tables' type; ``np.float64`` keeps every digit of a
    full-precision table (scoring does: in ``float32`` scores closer than ~6e-8 become ties). Raises
    :class:`OutputError` naming ``source`` and the missing or non-numeric columns.
    """
    missing = [column for column in KEY_COLUMNS if column not in table.columns]
    if missing:
        raise OutputError(f"{source}: missing column(s) {', '.join(missing)}")
    labels = label_columns(table)
    if not labels:
        raise OutputError(f"{source}: no label columns after {', '.join(KEY_COLUMNS)}")
    bad = [
        label for label in labels
        if len(table) and not pd.api.types.is_numeric_dtype(table[label])
    ]
    if bad:
        raise OutputError(f"{source}: label column(s) {', '.join(map(str, bad))} are not numeric")
    out = table.copy()
    out["file"] = out["file"].astype(str)
    for column in ("start_s", "end_s"):
        try:
            out[column] = out[column].astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise OutputError(f"{source}: column {column} is not numeric ({exc})") from None
    out[labels] = out[labels].astype(probability_dtype)
    return out


def write_probabilities_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the prediction table as CSV; probabilities rounded to 6 decimals, times exact."""
    table = validate_predictions(table)
    labels = label_columns(table)
    readable = table.copy()
    readable[labels] = readable[labels].astype(np.float64).round(CSV_PROBABILITY_DECIMALS)
    return atomic_write(path, lambda tmp: readable.to_csv(tmp, index=False))


def write_probabilities_parquet(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the prediction table as Parquet (exact ``float32`` probabilities)."""
    table = validate_predictions(table).reset_index(drop=True)
    return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False, engine="pyarrow"))


def read_probabilities(path: str | Path, probability_dtype: type = np.float32) -> pd.DataFrame:
    """Read a prediction table written by this module (``.csv`` or ``.parquet``/``.pq``); probabilities
    as ``probability_dtype`` (see :func:`validate_predictions`)."""
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"{path}: prediction table not found")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise OutputError(f"{path}: unknown table format {suffix!r} (use .csv or .parquet)")
    try:
        if suffix == ".csv":
            table = pd.read_csv(path, dtype={"file": str})
        else:
            table = pd.read_parquet(path, engine="pyarrow")
    except Exception as exc:  # pandas and pyarrow raise many types for unreadable files
        raise OutputError(f"{path}: cannot read the prediction table ({exc})") from None
    return validate_predictions(table, source=str(path), probability_dtype=probability_dtype)


# --------------------------------------------------------------------------------------------
# thresholds and row ids


def threshold_vector(thresholds: Thresholds, labels: Sequence[str]) -> np.ndarray:
    """One threshold per label, from a number, a sequence aligned with ``labels`` or a mapping."""
    labels = list(labels)
    if isinstance(thresholds, Mapping):
        missing = [label for label in labels if label not in thresholds]
        if missing:
            raise OutputError(f"thresholds: no value for label(s) {', '.join(missing)}")
        vector = np.array([thresholds[label] for label in labels], dtype=np.float64)
    elif np.ndim(thresholds) == 0:
        vector = np.full(len(labels), float(thresholds), dtype=np.float64)
    else:
        vector = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if len(vector) != len(labels):
            raise OutputError(
                f"thresholds: got {len(vector)} values for {len(labels)} labels"
            )
    if not np.all(np.isfinite(vector)):
        raise OutputError("thresholds: values must be finite numbers")
    return vector


def audio_ids(files: pd.Series) -> pd.Series:
    """BirdCLEF ``audio_id`` of each file: the file name without folder and extension."""
    return files.astype(str).map(lambda name: Path(name).stem)


def _require_labels(table: pd.DataFrame, labels: Sequence[str], what: str) -> None:
    missing = [label for label in labels if label not in table.columns]
    if missing:
        raise OutputError(f"{what}: the prediction table has no column for {', '.join(missing)}")


def _whole_seconds(end_s: pd.Series) -> np.ndarray:
    return np.rint(end_s.to_numpy(dtype=np.float64)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# BirdCLEF submissions


def birdclef2022_submission(
    table: pd.DataFrame, scored_labels: Sequence[str], thresholds: Thresholds
) -> pd.DataFrame:
    """BirdCLEF 2022 submission: ``row_id = <audio_id>_<label>_<end_s>``, ``target`` (bool).

    One row per window and scored label, in window order then label order (as the sample
    submission). ``thresholds`` is a number, a sequence aligned with ``scored_labels`` or a mapping.
    """
    table = validate_predictions(table)
    scored_labels = list(scored_labels)
    _require_labels(table, scored_labels, "birdclef2022_submission")
    cutoffs = threshold_vector(thresholds, scored_labels)
    probabilities = table[scored_labels].to_numpy(dtype=np.float64)
    prefixes = audio_ids(table["file"]).to_numpy(dtype=object)
    seconds = _whole_seconds(table["end_s"])
    row_ids = [
        f"{prefix}_{label}_{second}"
        for prefix, second in zip(prefixes, seconds, strict=True)
        for label in scored_labels
    ]
    targets = (probabilities >= cutoffs[None, :]).reshape(-1)
    return pd.DataFrame({"row_id": row_ids, "target": targets.astype(bool)})


def birdclef2023_submission(table: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """BirdCLEF 2023-2025 submission: ``row_id = <audio_id>_<end_s>`` and one column per label."""
    table = validate_predictions(table)
    labels = list(labels)
    _require_labels(table, labels, "birdclef2023_submission")
    prefixes = audio_ids(table["file"])
    seconds = _whole_seconds(table["end_s"])
    row_ids = [f"{prefix}_{second}" for prefix, second in zip(prefixes, seconds, strict=True)]
    submission = pd.DataFrame({"row_id": row_ids})
    probabilities = table[labels].reset_index(drop=True).astype(np.float32)
    return pd.concat([submission, probabilities], axis=1)


# --------------------------------------------------------------------------------------------
# detections


def detections(
    table: pd.DataFrame,
    labels: Sequence[str],
    thresholds: Thresholds,
    merge: bool = False,
) -> pd.DataFrame:
    """Windows whose probability reaches the label's threshold: ``file, start_s, end_s, label,
    confidence``, sorted by file, start and label.

    With ``merge=True``, consecutive or overlapping windows of the same label in the same file
    become one detection spanning them, with the highest confidence among them.
    """
    table = validate_predictions(table)
    labels = list(labels)
    _require_labels(table, labels, "detections")
    cutoffs = threshold_vector(thresholds, labels)
    probabilities = table[labels].to_numpy(dtype=np.float32)
    rows, columns = np.nonzero(probabilities >= cutoffs[None, :].astype(np.float32))
    found = pd.DataFrame(
        {
            "file": table["file"].to_numpy(dtype=object)[rows],
            "start_s": table["start_s"].to_numpy()[rows],
            "end_s": table["end_s"].to_numpy()[rows],
            "label": np.asarray(labels, dtype=object)[columns],
            "confidence": probabilities[rows, columns],
        }
    )
    found = found.astype({"file": str, "label": str})
    if merge and len(found):
        found = _merge_runs(found)
    return found.sort_values(["file", "start_s", "label"], kind="stable").reset_index(drop=True)


def _merge_runs(found: pd.DataFrame, tolerance_s: float = 1e-6) -> pd.DataFrame:
    """Join windows of one (file, label) that touch or overlap; keep the highest confidence."""
    ordered = found.sort_values(["file", "label", "start_s", "end_s"], kind="stable")
    merged: list[dict[str, object]] = []
    for (file, label), group in ordered.groupby(["file", "label"], sort=False):
        current: dict[str, object] | None = None
        for start, end, confidence in group[["start_s", "end_s", "confidence"]].itertuples(
            index=False
        ):
            if current is not None and start <= float(current["end_s"]) + tolerance_s:
                current["end_s"] = max(float(current["end_s"]), end)
                current["confidence"] = max(float(current["confidence"]), confidence)
                continue
            if current is not None:
                merged.append(current)
            current = {"file": file, "start_s": start, "end_s": end, "label": label,
                       "confidence": confidence}
        if current is not None:
            merged.append(current)
    out = pd.DataFrame(merged, columns=list(DETECTION_COLUMNS))
    return out.astype({"confidence": np.float32, "start_s": np.float64, "end_s": np.float64})


def _validate_detections(dets: pd.DataFrame, what: str, one_file: bool = True) -> pd.DataFrame:
    needed = ("start_s", "end_s", "label", "confidence")
    missing = [column for column in needed if column not in dets.columns]
    if missing:
        raise OutputError(f"{what}: detections lack column(s) {', '.join(missing)}")
    if one_file and "file" in dets.columns and dets["file"].nunique() > 1:
        names = ", ".join(sorted(dets["file"].astype(str).unique())[:3])
        raise OutputError(f"{what}: detections of one file expected, got several ({names}, ...)")
    return dets.sort_values(["start_s", "label"], kind="stable").reset_index(drop=True)


def seconds_text(value: float) -> str:
    """Seconds as the Raven tables write them (predict's and review's exports): 6 decimals without
    trailing zeros, keeping one (``5.0``, ``2.25``, ``0.333333``)."""
    text = f"{float(value):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


# --------------------------------------------------------------------------------------------
# Raven Pro selection tables


def write_raven_table(
    dets: pd.DataFrame,
    path: str | Path,
    low_freq: float = 0.0,
    high_freq: float = 14000.0,
    common_names: Mapping[str, str] | None = None,
) -> Path:
    """Write the detections of one recording as a Raven Pro selection table (tab separated).

    Columns and layout follow BirdNET-Analyzer: ``Selection, View, Channel, Begin Time (s),
    End Time (s), Low Freq (Hz), High Freq (Hz), Common Name, Species Code, Confidence,
    Begin Path, File Offset (s)``. ``Species Code`` is the label; ``Common Name`` comes from
    ``common_names`` (the label when absent). ``high_freq`` defaults to the frontend's ``fmax``.
    """
    if not 0 <= low_freq < high_freq:
        raise OutputError(f"{path}: need 0 <= low_freq < high_freq, got {low_freq}, {high_freq}")
    dets = _validate_detections(dets, str(path))
    names = common_names or {}
    lines = ["\t".join(RAVEN_COLUMNS)]
    for number, row in enumerate(dets.itertuples(index=False), start=1):
        label = str(row.label)
        begin = seconds_text(row.start_s)
        fields = (
            str(number),
            RAVEN_VIEW,
            "1",
            begin,
            seconds_text(row.end_s),
            seconds_text(low_freq),
            seconds_text(high_freq),
            clean_field(names.get(label, label)),
            clean_field(label),
            f"{float(row.confidence):.4f}",
            clean_field(str(getattr(row, "file", ""))),
            begin,
        )
        lines.append("\t".join(fields))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def clean_field(text: object) -> str:
    """``text`` as one field of a tab-separated row (Raven, Audacity): tabs and line breaks, which
    would break the row, become spaces."""
    return " ".join(str(text).replace("\t", " ").splitlines())


# --------------------------------------------------------------------------------------------
# Audacity labels


def write_audacity_labels(dets: pd.DataFrame, path: str | Path) -> Path:
    """Write the detections of one recording as Audacity labels: ``start\\tend\\tlabel;conf``.

    Audacity keeps only the third tab-separated field as the label text, so the confidence is
    appended to it after ``;`` (BirdNET-Analyzer writes it as a fourth field, which Audacity
    drops on import). Times have 6 decimals, as Audacity's own export.
    """
    dets = _validate_detections(dets, str(path))
    lines = [
        f"{float(row.start_s):.6f}\t{float(row.end_s):.6f}\t"
        f"{clean_field(str(row.label))};{float(row.confidence):.4f}"
        for row in dets.itertuples(index=False)
    ]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
