"""Reading labels: every annotation format dawnchorus accepts, and their conversion to windows.

One place for label formats (OpenSoundscape's ``BoxedAnnotations`` is the model): BirdCLEF 2021-style
soundscape label CSVs (:func:`read_birdclef_labels`), Raven selection tables
(:func:`read_raven_table`, :func:`raven_to_window_labels`), Audacity label files
(:func:`read_audacity_labels`), and truth for a prediction table from any of them
(:func:`load_truth`). Truth is a multi-hot ``uint8`` frame indexed by ``(audio_id, end_s)``, one
column per label. This module does not write outputs (:mod:`dawnchorus.io.outputs` does) and does
not score predictions (:mod:`dawnchorus.evaluate.metrics` does).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dawnchorus.errors import EvaluationError, OutputError
from dawnchorus.io.audio import window_count
from dawnchorus.io.outputs import validate_predictions

NOCALL = "nocall"
# Window end times are matched after rounding to this many decimals (float noise in CSVs).
TIME_DECIMALS = 3
RAVEN_LABEL_COLUMNS = ("Species", "Species Code", "Annotation", "Label", "Class", "Common Name")
WINDOW_KEYS = ("audio_id", "end_s")


@dataclass(frozen=True)
class CsvRecords:
    """The records of a CSV file as the ``csv`` module splits them, numbered as a spreadsheet shows rows.

    ``rows`` holds ``(row number, fields)`` of every data record with as many fields as the header
    (the header is row 1; blank lines are skipped but counted); ``ragged`` holds ``(row number,
    field count)`` of the others. pandas gives a ragged row no line of its own: a first data row with
    extra fields turns the leading columns into an index and shifts every value into the wrong column
    (measured: ``seconds 'extra' is not a number``), a later one stops the read.
    """

    header: list[str]
    rows: list[tuple[int, list[str]]]
    ragged: list[tuple[int, int]]

    def ragged_message(self, path: str | Path, unit: str = "row", limit: int = 3) -> str:
        """One line naming the first ``limit`` ragged rows (``unit`` N), their field counts and the
        header's."""
        shown = "; ".join(f"{unit} {row} has {fields} field{'s' * (fields != 1)}"
                          for row, fields in self.ragged[:limit])
        more = f" (and {len(self.ragged) - limit} more)" if len(self.ragged) > limit else ""
        return (f"{path}: {shown}{more}, expected {len(self.header)} "
                f"({', '.join(self.header)})")


def read_csv_records(path: str | Path) -> CsvRecords:
    """Split ``path`` into records with the ``csv`` module (comma-separated, UTF-8, optional BOM).

    Raises ``OSError``/``UnicodeDecodeError``/``csv.Error`` as the file gives them; an empty file has
    an empty header.
    """
    rows: list[tuple[int, list[str]]] = []
    ragged: list[tuple[int, int]] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        for number, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) == len(header):
                rows.append((number, fields))
            else:
                ragged.append((number, len(fields)))
    return CsvRecords(header=header, rows=rows, ragged=ragged)


def read_birdclef_labels(path: str | Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """Read BirdCLEF 2021 soundscape labels (``row_id, site, audio_id, seconds, birds``).

    ``seconds`` is the window end; ``birds`` is space-separated codes or ``nocall``. Returns one
    row per window, indexed by ``(audio_id, end_s)``, with one 0/1 ``uint8`` column per label
    (the birds found, sorted, or ``labels`` when given; a bird outside ``labels`` is an error).
    Rows repeating a window are combined.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: label file not found")
    try:
        records = read_csv_records(path)
        if records.ragged:
            raise EvaluationError(records.ragged_message(path, unit="line"))
        table = pd.read_csv(path, dtype={"audio_id": str, "row_id": str, "site": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error,
            OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise EvaluationError(f"{path}: cannot read the label CSV ({reason})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [column for column in ("seconds", "birds") if column not in table.columns]
    if "audio_id" not in table.columns and "row_id" not in table.columns:
        missing.append("audio_id (or row_id)")
    if missing:
        raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}")
    rows: dict[tuple[str, float], set[str]] = {}
    for line, record in enumerate(table.to_dict("records"), start=2):
        key = _birdclef_key(pd.Series(record), path, line)
        birds = str(record["birds"]) if pd.notna(record["birds"]) else NOCALL
        rows.setdefault(key, set()).update(b for b in birds.split() if b.lower() != NOCALL)
    found = sorted(set().union(*rows.values())) if rows else []
    if labels is None:
        return _window_frame(rows, found)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise EvaluationError(f"{path}: bird(s) not in the label list: {', '.join(unknown)}")
    return _window_frame(rows, list(labels))


def read_raven_table(path: str | Path) -> pd.DataFrame:
    """Read a Raven selection table (any Raven or BirdNET variant) with numeric time columns.

    Raises :class:`OutputError` when the file is missing or has no begin/end time columns.
    """
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"{path}: selection table not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path}: not a tab-separated selection table ({exc})") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = [c for c in ("Begin Time (s)", "End Time (s)") if c not in table.columns]
    if missing:
        raise OutputError(f"{path}: selection table has no {' / '.join(missing)} column")
    for column in table.columns:
        if not _is_numeric_raven_column(column):
            continue
        numeric = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = numeric.isna() & (table[column].str.strip() != "")
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise OutputError(f"{path}: line {line}: {column} is not a number")
        if numeric.isna().any() and column in ("Begin Time (s)", "End Time (s)"):
            line = int(np.flatnonzero(numeric.isna().to_numpy())[0]) + 2
            raise OutputError(f"{path}: line {line}: {column} is empty")
        table[column] = numeric
    return table


def read_audacity_labels(path: str | Path) -> pd.DataFrame:
    """Read an Audacity label file into ``start_s, end_s, label, confidence``.

    Accepts ``label;confidence`` (this module), a fourth confidence field (BirdNET-Analyzer) and
    plain labels (confidence NaN). Audacity's frequency lines (starting with ``\\``) are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise OutputError(f"{path}: label file not found")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("\\"):
            continue
        records.append(_parse_audacity_line(line, f"{path}: line {number}"))
    return pd.DataFrame(records, columns=["start_s", "end_s", "label", "confidence"]).astype(
        {"start_s": np.float64, "end_s": np.float64, "label": str, "confidence": np.float64}
    )


def raven_to_window_labels(
    table_path: str | Path,
    labels: Sequence[str],
    duration_s: float,
    window_s: float = 5.0,
    min_overlap_s: float = 0.5,
    audio_id: str | None = None,
) -> pd.DataFrame:
    """Turn Raven selection boxes into per-window labels, indexed by ``(audio_id, end_s)``.

    Windows are ``[k * window_s, (k + 1) * window_s)`` covering ``duration_s`` (as ``predict``
    makes them). A box marks a window when it overlaps it by ``min_overlap_s`` seconds, or by its
    whole length when the box is shorter. The species column is the first of
    ``Species, Species Code, Annotation, Label, Class, Common Name`` (any case). Species not in
    ``labels`` (noise, other taxa) are ignored and listed in ``frame.attrs["ignored_labels"]``.
    ``audio_id`` defaults to the table's Begin File, else the table's name up to its first dot.
    """
    path = Path(table_path)
    if duration_s <= 0 or window_s <= 0 or min_overlap_s < 0:
        raise EvaluationError(
            f"{path}: need duration_s > 0, window_s > 0, min_overlap_s >= 0 "
            f"(got {duration_s}, {window_s}, {min_overlap_s})"
        )
    table = read_raven_table(path)
    species_column = _raven_label_column(table, path)
    recording = audio_id or _raven_audio_id(table, path)
    window_ms = round(window_s * 1000)
    n_windows = window_count(round(duration_s * 1000), window_ms, window_ms)
    starts = np.arange(n_windows) * window_s
    rows = {(recording, round(float(start + window_s), TIME_DECIMALS)): set() for start in starts}
    known = set(labels)
    ignored: set[str] = set()
    for begin, end, species in zip(
        table["Begin Time (s)"], table["End Time (s)"], table[species_column].astype(str),
        strict=True,
    ):
        species = species.strip()
        if species not in known:
            if species:
                ignored.add(species)
            continue
        for start in _overlapped_windows(float(begin), float(end), starts, window_s, min_overlap_s):
            rows[(recording, round(float(start + window_s), TIME_DECIMALS))].add(species)
    frame = _window_frame(rows, list(labels))
    frame.attrs["ignored_labels"] = sorted(ignored)
    return frame


def load_truth(
    labels_path: str | Path,
    predictions: pd.DataFrame,
    labels: Sequence[str],
    window_s: float = 5.0,
    min_overlap_s: float = 0.5,
) -> pd.DataFrame:
    """Window labels from a BirdCLEF label CSV, a Raven selection table, or a folder of tables.

    Raven tables are matched to the predicted recordings by name (see :func:`match_recordings`);
    each recording's duration is taken from its last predicted window.
    """
    path = Path(labels_path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_birdclef_labels(path)
    tables = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    if not tables or not tables[0].is_file():
        raise EvaluationError(f"{path}: no label CSV or Raven selection table(s) found")
    predictions = validate_predictions(predictions)
    last_end = predictions.groupby("file")["end_s"].max()
    frames = []
    for table in tables:
        audio_id = _raven_audio_id(read_raven_table(table), table)
        mapping = match_recordings(last_end.index, [audio_id])
        if not mapping:
            raise EvaluationError(f"{table}: no predictions for recording {audio_id!r}")
        duration = float(last_end[next(iter(mapping))])
        frames.append(
            raven_to_window_labels(table, labels, duration, window_s, min_overlap_s, audio_id=audio_id)
        )
    return pd.concat(frames).fillna(0).astype(np.uint8)


def match_recordings(files: Iterable[str | Path], audio_ids: Iterable[str]) -> dict[str, str]:
    """Map each file to the truth ``audio_id`` it holds; files matching none are left out.

    A file matches an id equal to its stem (BirdCLEF 2022+: ``soundscape_453028782.ogg``), else
    one equal to the stem's first ``_`` token (BirdCLEF 2021: id ``7019`` for
    ``7019_COR_20190904.ogg``). Two files matching one id is an error.
    """
    wanted = {str(audio_id) for audio_id in audio_ids}
    mapping: dict[str, str] = {}
    claimed: dict[str, str] = {}
    for file in dict.fromkeys(str(f) for f in files):
        stem = Path(file).stem
        candidate = stem if stem in wanted else stem.split("_")[0]
        if candidate not in wanted:
            continue
        if candidate in claimed:
            raise EvaluationError(
                f"files {claimed[candidate]} and {file} both match recording {candidate!r}"
            )
        claimed[candidate] = file
        mapping[file] = candidate
    return mapping


def window_keys_as_columns(truth: pd.DataFrame) -> pd.DataFrame:
    """A truth frame with ``audio_id`` and ``end_s`` as columns, whether they were index or not."""
    levels = [name for name in truth.index.names if name in WINDOW_KEYS]
    frame = truth.reset_index(level=levels) if levels else truth.copy()
    missing = [column for column in WINDOW_KEYS if column not in frame.columns]
    if missing:
        raise EvaluationError(f"truth: no {' / '.join(missing)} column or index level")
    frame["audio_id"] = frame["audio_id"].astype(str)
    frame["end_s"] = frame["end_s"].astype(np.float64)
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# helpers


def _birdclef_key(record: pd.Series, path: Path, line: int) -> tuple[str, float]:
    try:
        end_s = round(float(record["seconds"]), TIME_DECIMALS)
    except (TypeError, ValueError):
        raise EvaluationError(
            f"{path}: line {line}: seconds {record['seconds']!r} is not a number"
        ) from None
    if not math.isfinite(end_s):
        raise EvaluationError(f"{path}: line {line}: seconds is empty")
    return _birdclef_audio_id(record), end_s


def _birdclef_audio_id(record: pd.Series) -> str:
    """``audio_id`` column, else the ``row_id`` without its ``_<site>_<seconds>`` tail."""
    if "audio_id" in record and pd.notna(record["audio_id"]):
        value = record["audio_id"]
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    row_id = str(record["row_id"])
    suffix = f"_{_seconds_token(record['seconds'])}"
    row_id = row_id.removesuffix(suffix)
    if "site" in record and pd.notna(record["site"]):
        row_id = row_id.removesuffix(f"_{record['site']}")
    return row_id


def _seconds_token(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def _window_frame(rows: dict[tuple[str, float], set[str]], labels: Sequence[str]) -> pd.DataFrame:
    """Multi-hot ``uint8`` frame: index (audio_id, end_s) sorted, one column per label."""
    keys = sorted(rows)
    index = pd.MultiIndex.from_arrays(
        [
            pd.Index([key[0] for key in keys], dtype=str),
            pd.Index([key[1] for key in keys], dtype=np.float64),
        ],
        names=list(WINDOW_KEYS),
    )
    hot = np.zeros((len(keys), len(labels)), dtype=np.uint8)
    column = {label: position for position, label in enumerate(labels)}
    for row, key in enumerate(keys):
        for label in rows[key]:
            hot[row, column[label]] = 1
    return pd.DataFrame(hot, index=index, columns=list(labels))


def _is_numeric_raven_column(column: str) -> bool:
    """Times, frequencies and counters; text columns (species, paths, notes) stay strings."""
    counters = ("Selection", "Channel", "Confidence")
    return column.endswith(("(s)", "(Hz)", "(dB)")) or column in counters


def _raven_label_column(table: pd.DataFrame, path: Path) -> str:
    by_lower = {str(column).strip().lower(): column for column in table.columns}
    for candidate in RAVEN_LABEL_COLUMNS:
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    raise EvaluationError(
        f"{path}: no species column (looked for {', '.join(RAVEN_LABEL_COLUMNS)})"
    )


def _raven_audio_id(table: pd.DataFrame, path: Path) -> str:
    """The recording a selection table describes: its Begin File/Path, else the table's name."""
    for column in ("Begin File", "Begin Path"):
        if column in table.columns:
            names = {Path(str(value)).stem for value in table[column] if str(value).strip()}
            if len(names) == 1:
                return names.pop()
    return path.name.split(".")[0]


def _overlapped_windows(
    begin: float, end: float, starts: np.ndarray, window_s: float, min_overlap_s: float
) -> np.ndarray:
    begin, end = min(begin, end), max(begin, end)
    overlap = np.minimum(end, starts + window_s) - np.maximum(begin, starts)
    needed = min(min_overlap_s, end - begin)
    return starts[(overlap > 0) & (overlap >= needed - 1e-9)]


def _parse_audacity_line(line: str, where: str) -> tuple[float, float, str, float]:
    fields = line.split("\t")
    try:
        start = float(fields[0])
        end = float(fields[1]) if len(fields) > 1 and fields[1].strip() else start
    except ValueError:
        raise OutputError(f"{where}: start/end time is not a number: {line!r}") from None
    text = fields[2] if len(fields) > 2 else ""
    confidence = math.nan
    if len(fields) > 3:
        confidence = _float_or_nan(fields[3])
    elif ";" in text:
        head, tail = text.rsplit(";", 1)
        if not math.isnan(_float_or_nan(tail)):
            text, confidence = head, float(tail)
    return start, end, text, confidence


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
