"""Training-set layouts: read a BirdCLEF or folder-per-class set and validate it.

Two layouts are read:

- **BirdCLEF**: ``train_metadata.csv`` (``primary_label``, ``filename`` required; ``secondary_labels``
  as a Python-list string and ``rating`` optional; any other column is kept) beside ``train_audio/``
  (or ``train_short_audio/``, BirdCLEF 2021). A ``filename`` without a folder is looked up under
  ``<audio dir>/<primary_label>/`` as BirdCLEF 2021 stored it.
- **Folders**: ``<root>/<label>/**/*.<audio extension>``, one folder per class. A root holding only
  ``train_audio/`` (no metadata) is read as folders under ``train_audio/``.

Validation collects every problem at once (:class:`Problem`), so one run of ``dawnchorus data check``
shows all of them. Row numbers in ``train_metadata.csv row N`` count the header as row 1, as a
spreadsheet shows them.

This module owns the file layout and its validation, and returns a :class:`TrainingSet` (a clips
table). It does not split (:mod:`dawnchorus.data.splits`), encode targets or serve audio to torch
(:mod:`dawnchorus.data.datasets`), or print the ``data check`` report (:mod:`dawnchorus.data.check`);
it imports no torch.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import pandas as pd

from dawnchorus.errors import DatasetError
from dawnchorus.io import audio
from dawnchorus.io.annotations import read_csv_records
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, AudioFileNotFoundError, AudioInfo

METADATA_NAME = "train_metadata.csv"
AUDIO_DIR_NAMES = ("train_audio", "train_short_audio")
SOUNDSCAPE_DIR_NAME = "test_soundscapes"
SOUNDSCAPE_LABELS_NAME = "test_labels.csv"
SCORED_LABELS_NAME = "scored_birds.json"
REQUIRED_COLUMNS = ("primary_label", "filename")
DEFAULT_RATING = 5.0
MAX_RATING = 5.0
HEADER_READ_THREADS = 16

Layout = Literal["birdclef", "folders"]
OnProblem = Literal["raise", "drop", "keep"]
ProgressCallback = Callable[[int, int], None]

# Problems that concern the whole set: the clips table cannot be built, so they always raise.
DATASET_LEVEL_KINDS = frozenset(
    {"missing_root", "missing_column", "unreadable_metadata", "missing_audio_dir", "empty_dataset",
     "malformed_scored_labels"}
)
# Problems that do not make a clip unusable: "drop" repairs them instead of removing the clip.
REPAIRABLE_KINDS = frozenset({"unknown_secondary_label", "unknown_scored_label"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a training set.

    ``where`` is a file path or ``train_metadata.csv row N``; ``kind`` a stable identifier
    (missing_file, unreadable_audio, unknown_secondary_label, malformed_secondary_labels,
    duplicate_row, missing_column, bad_rating, empty_label, unlabelled_file, malformed_row,
    path_outside_audio_dir, ...).
    """

    where: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class TrainingSet:
    """A validated training set.

    ``clips`` has one row per clip with at least: ``path`` (absolute), ``filename`` (relative to the
    audio folder), ``primary_label``, ``secondary_labels`` (list of str), ``rating`` (float, 5.0 when
    absent), ``duration_s``, ``sample_rate``, ``channels`` (NaN/NA when audio was not checked) and
    ``ok`` (False for rows with a problem, only seen with ``on_problem="keep"``); extra metadata
    columns are kept. ``labels`` is the sorted vocabulary of primary labels.
    """

    root: Path
    layout: Layout
    clips: pd.DataFrame
    labels: list[str]
    problems: list[Problem] = field(default_factory=list)
    soundscape_dir: Path | None = None
    soundscape_labels: Path | None = None
    scored_labels: list[str] | None = None


def load_training_set(
    root: str | Path,
    on_problem: OnProblem = "raise",
    check_audio: bool = True,
    progress: ProgressCallback | None = None,
) -> TrainingSet:
    """Read the training set at ``root`` (BirdCLEF or folder-per-class layout) and validate it.

    ``on_problem``: ``"raise"`` raises :class:`DatasetError` listing every problem; ``"drop"``
    removes bad rows (unknown secondary labels are removed from the row instead, the clip is kept)
    and records the problems; ``"keep"`` returns every row (``ok`` column) with the problems, for
    reports. Problems with the whole set (missing column, no clips, ...) raise in every mode.
    ``check_audio`` reads every audio header (in threads) for duration and sample rate and reports
    unreadable files; without it only existence is checked. ``progress(done, total)`` is called
    after each header read.
    """
    if on_problem not in ("raise", "drop", "keep"):
        raise ValueError(f"on_problem must be raise, drop or keep, not {on_problem!r}")
    root = Path(root)
    if root.is_file() and root.name == METADATA_NAME:
        root = root.parent
    if not root.is_dir():
        raise DatasetError([Problem(str(root), "missing_root", "training set folder not found")], root)
    set_problems: list[Problem] = []
    if (root / METADATA_NAME).is_file():
        layout: Layout = "birdclef"
        rows = _birdclef_rows(root)
    else:
        layout = "folders"
        class_root = _class_root(root)
        rows = _folder_rows(class_root)
        set_problems = _empty_class_folders(class_root)
    _check_files(rows, check_audio, progress)
    _check_secondary_labels(rows, _vocabulary(rows))
    return _assemble(root, layout, rows, on_problem, [*set_problems, *_classes_without_clips(rows, layout)])


def _birdclef_rows(root: Path) -> list[_Row]:
    metadata_path = root / METADATA_NAME
    table, row_numbers, ragged, header = _read_metadata(metadata_path)
    audio_dir = next((root / name for name in AUDIO_DIR_NAMES if (root / name).is_dir()), None)
    if audio_dir is None:
        raise DatasetError(
            [Problem(str(root), "missing_audio_dir",
                     f"{METADATA_NAME} is here but no {' or '.join(AUDIO_DIR_NAMES)} folder")],
            root,
        )
    extra_columns = [c for c in table.columns if c not in (*REQUIRED_COLUMNS, "secondary_labels",
                                                           "rating")]
    first_row_of: dict[str, int] = {}
    rows = [_ragged_row(number, fields, header, audio_dir) for number, fields in ragged]
    for row_number, record in zip(row_numbers, table.to_dict("records"), strict=True):
        row = _metadata_row(record, audio_dir, f"{METADATA_NAME} row {row_number}")
        row.extra = {column: record[column] for column in extra_columns}
        if row.filename:
            if row.filename in first_row_of:
                row.report("duplicate_row",
                           f"{row.filename} is listed twice (first at row {first_row_of[row.filename]})")
            else:
                first_row_of[row.filename] = row_number
        rows.append(row)
    rows.sort(key=lambda row: int(row.where.rsplit(" ", 1)[-1]))
    return rows


def _read_metadata(path: Path) -> tuple[pd.DataFrame, list[int], list[tuple[int, int]], list[str]]:
    """The metadata table of the rows with the header's field count, their row numbers, the ragged
    rows ``(row number, field count)`` and the header.

    Ragged rows are left out of the table (pandas would shift a first ragged row's values into the
    wrong columns, or stop at a later one) and become one problem each.
    """
    where = str(path)
    try:
        records = read_csv_records(path)
        source: Any = path
        if records.ragged:  # pandas reads the well-formed rows, re-joined, so its types stay as before
            buffer = io.StringIO()
            csv.writer(buffer).writerows([records.header, *(fields for _, fields in records.rows)])
            buffer.seek(0)
            source = buffer
        columns = records.header
        managed = {c: str for c in (*REQUIRED_COLUMNS, "secondary_labels", "rating") if c in columns}
        table = pd.read_csv(source, dtype=managed)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
            csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise DatasetError([Problem(where, "unreadable_metadata", f"not a readable CSV ({reason})")],
                           path) from None
    row_numbers = [number for number, _ in records.rows]
    if len(row_numbers) != len(table):  # pandas and csv split records differently: count as pandas does
        row_numbers = list(range(2, len(table) + 2))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns)) or "none"
        problems = [Problem(where, "missing_column", f"required column {c!r} is missing "
                                                      f"(columns found: {found})") for c in missing]
        raise DatasetError(problems, path)
    if table.empty and not records.ragged:
        raise DatasetError([Problem(where, "empty_dataset", "the metadata lists no clips")], path)
    return table, row_numbers, records.ragged, list(records.header)


def _ragged_row(number: int, fields: int, header: Sequence[str], audio_dir: Path) -> _Row:
    """A metadata row whose field count differs from the header's: a problem, never read."""
    row = _Row(where=f"{METADATA_NAME} row {number}", filename="", path=audio_dir, primary_label="")
    row.report("malformed_row", f"the row has {fields} field{'s' * (fields != 1)}, expected "
                                f"{len(header)} ({', '.join(header)})")
    return row


def _metadata_row(record: dict[str, Any], audio_dir: Path, where: str) -> _Row:
    filename = _text(record.get("filename"))
    primary = _text(record.get("primary_label"))
    row = _Row(where=where, filename=filename, path=audio_dir / filename, primary_label=primary)
    if not primary:
        row.report("empty_label", f"primary_label is empty (file {filename or '?'})")
    if not filename:
        row.report("missing_file", "filename is empty")
    elif _leaves_folder(filename):
        row.report("path_outside_audio_dir",
                   f"filename {filename} leads outside {audio_dir.name}/ (absolute paths and '..' are "
                   f"refused: a training set reads only its own files)")
    elif "/" not in filename and primary and not row.path.exists():
        nested = audio_dir / primary / filename  # BirdCLEF 2021 listed bare file names
        if nested.exists():
            row.path, row.filename = nested, f"{primary}/{filename}"
    secondary = _parse_secondary_labels(record.get("secondary_labels"))
    if isinstance(secondary, str):
        row.report("malformed_secondary_labels", secondary)
    else:
        row.secondary_labels = secondary
    rating = _parse_rating(record.get("rating"))
    if isinstance(rating, str):
        row.report("bad_rating", rating)
    else:
        row.rating = rating
    return row


def _leaves_folder(filename: str) -> bool:
    """Whether a relative file name points outside its folder (absolute, or up through '..')."""
    for flavour in (PurePosixPath, PureWindowsPath):
        name = flavour(filename)
        if name.is_absolute() or name.anchor or ".." in name.parts:
            return True
    return False


def _text(value: Any) -> str:
    """A cell as stripped text; empty for NaN/None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _parse_secondary_labels(value: Any) -> list[str] | str:
    """A Python-list string -> list of labels; a str result is the error message."""
    text = _text(value)
    if not text:
        return []
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return f"secondary_labels {text!r} is not a Python list like ['label1', 'label2']"
    if not isinstance(parsed, list | tuple) or not all(isinstance(item, str) for item in parsed):
        return f"secondary_labels {text!r} is not a list of label strings"
    labels = [item.strip() for item in parsed if item.strip()]
    return list(dict.fromkeys(labels))


def _parse_rating(value: Any) -> float | str:
    """A rating in [0, 5]; absent -> 5.0; a str result is the error message."""
    text = _text(value)
    if not text:
        return DEFAULT_RATING
    try:
        rating = float(text)
    except ValueError:
        return f"rating {text!r} is not a number"
    if not math.isfinite(rating) or not 0.0 <= rating <= MAX_RATING:
        return f"rating {text!r} is outside 0..{MAX_RATING:g}"
    return rating


def _class_root(root: Path) -> Path:
    """The folder whose subfolders are the classes (``train_audio/`` when only that is present)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    class_dirs = [p for p in entries if p.is_dir() and p.name != SOUNDSCAPE_DIR_NAME]
    loose_files = [p for p in entries if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS]
    if not loose_files and [p.name for p in class_dirs] in (["train_audio"], ["train_short_audio"]):
        return class_dirs[0]
    return root


def _folder_rows(class_root: Path) -> list[_Row]:
    rows = []
    for path in audio.find_audio_files(class_root):
        relative = path.relative_to(class_root)
        if any(part.startswith(".") for part in relative.parts) or (
            relative.parts[0] == SOUNDSCAPE_DIR_NAME
        ):
            continue
        label = relative.parts[0] if len(relative.parts) > 1 else ""
        row = _Row(where=str(path), filename=relative.as_posix(), path=path, primary_label=label)
        if not label:
            row.report("unlabelled_file",
                       "audio file directly in the training folder; put it in a folder named "
                       "after its label")
        rows.append(row)
    if not rows:
        raise DatasetError(
            [Problem(str(class_root), "empty_dataset",
                     f"no {METADATA_NAME} and no audio files in class folders "
                     f"(<root>/<label>/*{'|*'.join(AUDIO_EXTENSIONS)})")],
            class_root,
        )
    return rows


def _class_folders(class_root: Path) -> list[Path]:
    return sorted(p for p in class_root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != SOUNDSCAPE_DIR_NAME)


def _empty_class_folders(class_root: Path) -> list[Problem]:
    """A class folder without audio files: a class the user meant to train that would not exist."""
    return [
        Problem(str(folder), "empty_class_folder",
                f"class folder {folder.name} holds no audio files (*{', *'.join(AUDIO_EXTENSIONS)}): "
                f"class {folder.name} has no clips")
        for folder in _class_folders(class_root) if not audio.find_audio_files(folder)
    ]


def _classes_without_clips(rows: Sequence[_Row], layout: Layout) -> list[Problem]:
    """Classes whose every clip has a problem: ``drop`` would leave them out of the labels unseen."""
    usable = {row.primary_label for row in rows if row.usable and row.primary_label}
    lost: dict[str, list[_Row]] = {}
    for row in rows:
        if row.primary_label and row.primary_label not in usable:
            lost.setdefault(row.primary_label, []).append(row)
    problems = []
    for label, bad in sorted(lost.items()):
        if layout == "birdclef":
            where = METADATA_NAME
            listed = [row.where.removeprefix(f"{METADATA_NAME} ") for row in bad]
        else:
            first = bad[0]
            where = str(first.path.parents[len(Path(first.filename).parts) - 2])
            listed = [Path(row.filename).name for row in bad]
        shown = ", ".join(listed[:3]) + (f" and {len(listed) - 3} more" if len(listed) > 3 else "")
        as_secondary = sum(label in row.secondary_labels for row in rows if row.primary_label != label)
        also = f"; {as_secondary} clip(s) name it as a secondary label" if as_secondary else ""
        problems.append(Problem(
            where, "class_without_clips",
            f"class {label} has no usable clip (every clip of it has a problem: {shown}); "
            f"a model trained on this set leaves {label} out{also}"))
    return problems


def _check_files(rows: list[_Row], check_audio: bool, progress: ProgressCallback | None) -> None:
    """Report missing and (with ``check_audio``) unreadable files; store the headers."""
    to_read = []
    for row in rows:
        outside = any(problem.kind == "path_outside_audio_dir" for problem in row.problems)
        if row.filename and not outside and _exists_or_report(row):
            to_read.append(row)
    if not check_audio:
        return
    total = len(to_read)
    with ThreadPoolExecutor(max_workers=max(1, min(HEADER_READ_THREADS, total))) as pool:
        futures = {pool.submit(_read_header, row.path): row for row in to_read}
        for done, future in enumerate(as_completed(futures), start=1):
            row = futures[future]
            result = future.result()
            if isinstance(result, AudioError):
                kind = "missing_file" if isinstance(result, AudioFileNotFoundError) else (
                    "unreadable_audio")
                row.report(kind, f"{row.filename}: {result.reason}")
            else:
                row.header = result
            if progress is not None:
                progress(done, total)


def _exists_or_report(row: _Row) -> bool:
    if row.path.is_file():
        return True
    row.report("missing_file", f"{row.filename}: file not found ({row.path})")
    return False


def _read_header(path: Path) -> AudioInfo | AudioError:
    try:
        return audio.info(path)
    except AudioError as exc:
        return exc


def _vocabulary(rows: Sequence[_Row]) -> list[str]:
    return sorted({row.primary_label for row in rows if row.primary_label})


def _check_secondary_labels(rows: Sequence[_Row], vocabulary: Sequence[str]) -> None:
    known = set(vocabulary)
    for row in rows:
        unknown = [label for label in row.secondary_labels if label not in known]
        if unknown:
            row.report("unknown_secondary_label",
                       f"secondary label(s) {', '.join(unknown)} of {row.filename} are not the "
                       f"primary label of any clip")


def _assemble(
    root: Path, layout: Layout, rows: list[_Row], on_problem: OnProblem, set_problems: Sequence[Problem]
) -> TrainingSet:
    problems = [problem for row in rows for problem in row.problems] + list(set_problems)
    if on_problem == "drop":
        rows = [row for row in rows if row.usable]
        if not rows:
            empty = Problem(str(root), "empty_dataset", "no usable clips remain after dropping bad rows")
            raise DatasetError([*problems, empty], root)
    labels = _vocabulary(rows)
    if on_problem == "drop":
        known = set(labels)
        for row in rows:
            row.secondary_labels = [label for label in row.secondary_labels if label in known]
    scored, scored_problems = _scored_labels(root, labels)
    problems += scored_problems
    if on_problem == "raise" and problems:
        raise DatasetError(problems, root)
    if on_problem == "drop" and scored is not None:
        known = set(labels)
        scored = [label for label in scored if label in known]
    return TrainingSet(
        root=root,
        layout=layout,
        clips=_clips_table(rows),
        labels=labels,
        problems=problems,
        soundscape_dir=_existing(root / SOUNDSCAPE_DIR_NAME, directory=True),
        soundscape_labels=_existing(root / SOUNDSCAPE_LABELS_NAME, directory=False),
        scored_labels=scored,
    )


def _scored_labels(root: Path, labels: Sequence[str]) -> tuple[list[str] | None, list[Problem]]:
    """Labels listed in ``scored_birds.json`` (BirdCLEF 2022), and problems with them."""
    path = root / SCORED_LABELS_NAME
    if not path.is_file():
        return None, []
    try:
        scored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        scored, reason = None, f"not valid JSON ({exc})"
    else:
        reason = "expected a JSON list of label strings"
    if not isinstance(scored, list) or not all(isinstance(label, str) for label in scored):
        raise DatasetError([Problem(str(path), "malformed_scored_labels", reason)], path)
    known = set(labels)
    unknown = [label for label in scored if label not in known]
    problems = [Problem(str(path), "unknown_scored_label",
                        f"scored label(s) {', '.join(unknown)} have no training clips")] if unknown else []
    return list(scored), problems


def _existing(path: Path, directory: bool) -> Path | None:
    found = path.is_dir() if directory else path.is_file()
    return path if found else None


def _clips_table(rows: Sequence[_Row]) -> pd.DataFrame:
    records = []
    for row in rows:
        header = row.header
        records.append({
            "path": os.path.abspath(row.path),
            "filename": row.filename,
            "primary_label": row.primary_label,
            "secondary_labels": list(row.secondary_labels),
            "rating": float(row.rating),
            "duration_s": header.duration_s if header else math.nan,
            "sample_rate": header.sample_rate if header else pd.NA,
            "channels": header.channels if header else pd.NA,
            "ok": row.usable,
        })
        for column, value in row.extra.items():
            # A metadata column named like one of ours is kept under a prefixed name.
            records[-1][f"metadata_{column}" if column in records[-1] else column] = value
    clips = pd.DataFrame.from_records(records)
    for column in ("sample_rate", "channels"):
        clips[column] = clips[column].astype("Int64")
    clips["duration_s"] = clips["duration_s"].astype("float64")
    return clips


@dataclass
class _Row:
    """One candidate clip while it is being validated."""

    where: str
    filename: str
    path: Path
    primary_label: str
    secondary_labels: list[str] = field(default_factory=list)
    rating: float = DEFAULT_RATING
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    header: AudioInfo | None = None

    def report(self, kind: str, message: str) -> None:
        self.problems.append(Problem(self.where, kind, message))

    @property
    def usable(self) -> bool:
        return all(problem.kind in REPAIRABLE_KINDS for problem in self.problems)
