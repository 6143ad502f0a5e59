"""Training sets: read and validate, encode labels, split, balance, and serve clips to torch.

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

Split and sampling helpers return **positional** indices into ``TrainingSet.clips``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.text import Text
from sklearn.model_selection import StratifiedKFold
from torch.utils.data import Dataset, WeightedRandomSampler

from dawnchorus.errors import DatasetError
from dawnchorus.io import audio
from dawnchorus.io.audio import AUDIO_EXTENSIONS, AudioError, AudioFileNotFoundError, AudioInfo
from dawnchorus.io.files import atomic_write

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
    duplicate_row, missing_column, bad_rating, empty_label, unlabelled_file, ...).
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


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


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
    if (root / METADATA_NAME).is_file():
        layout: Layout = "birdclef"
        rows = _birdclef_rows(root)
    else:
        layout = "folders"
        rows = _folder_rows(_class_root(root))
    _check_files(rows, check_audio, progress)
    _check_secondary_labels(rows, _vocabulary(rows))
    return _assemble(root, layout, rows, on_problem)


def _birdclef_rows(root: Path) -> list[_Row]:
    metadata_path = root / METADATA_NAME
    table = _read_metadata(metadata_path)
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
    rows = []
    for position, record in enumerate(table.to_dict("records")):
        row_number = position + 2
        row = _metadata_row(record, audio_dir, f"{METADATA_NAME} row {row_number}")
        row.extra = {column: record[column] for column in extra_columns}
        if row.filename:
            if row.filename in first_row_of:
                row.report("duplicate_row",
                           f"{row.filename} is listed twice (first at row {first_row_of[row.filename]})")
            else:
                first_row_of[row.filename] = row_number
        rows.append(row)
    return rows


def _read_metadata(path: Path) -> pd.DataFrame:
    where = str(path)
    try:
        columns = pd.read_csv(path, nrows=0).columns
        managed = {c: str for c in (*REQUIRED_COLUMNS, "secondary_labels", "rating") if c in columns}
        table = pd.read_csv(path, dtype=managed)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError([Problem(where, "unreadable_metadata", f"not a readable CSV ({exc})")],
                           path) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns)) or "none"
        problems = [Problem(where, "missing_column", f"required column {c!r} is missing "
                                                      f"(columns found: {found})") for c in missing]
        raise DatasetError(problems, path)
    if table.empty:
        raise DatasetError([Problem(where, "empty_dataset", "the metadata lists no clips")], path)
    return table


def _metadata_row(record: dict[str, Any], audio_dir: Path, where: str) -> _Row:
    filename = _text(record.get("filename"))
    primary = _text(record.get("primary_label"))
    row = _Row(where=where, filename=filename, path=audio_dir / filename, primary_label=primary)
    if not primary:
        row.report("empty_label", f"primary_label is empty (file {filename or '?'})")
    if not filename:
        row.report("missing_file", "filename is empty")
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


def _check_files(rows: list[_Row], check_audio: bool, progress: ProgressCallback | None) -> None:
    """Report missing and (with ``check_audio``) unreadable files; store the headers."""
    to_read = []
    for row in rows:
        if row.filename and _exists_or_report(row):
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


def _assemble(root: Path, layout: Layout, rows: list[_Row], on_problem: OnProblem) -> TrainingSet:
    problems = [problem for row in rows for problem in row.problems]
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


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


def encode_targets(
    clips: pd.DataFrame,
    labels: Sequence[str],
    secondary_weight: float = 0.5,
    label_smoothing: float = 0.0,
) -> np.ndarray:
    """Multi-hot targets ``(n_clips, n_labels)`` float32 in the order of ``labels``.

    The primary label gets 1.0, each secondary label ``secondary_weight`` (the larger value wins
    when a label is both). Secondary labels outside ``labels`` are ignored; a primary label outside
    them is an error. Smoothing treats each label as its own binary problem (sigmoid outputs), so
    targets move towards 0.5: ``t * (1 - s) + s / 2`` - positives become ``1 - s/2``, negatives
    ``s/2``.
    """
    if not 0.0 <= secondary_weight <= 1.0:
        raise ValueError(f"secondary_weight must be in [0, 1], got {secondary_weight}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    column_of = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(clips["primary_label"]) - column_of.keys())
    if unknown:
        raise ValueError(f"primary label(s) not in the label list: {', '.join(map(str, unknown))}")
    secondaries = clips["secondary_labels"] if "secondary_labels" in clips else [[]] * len(clips)
    targets = np.zeros((len(clips), len(labels)), dtype=np.float32)
    for row, (primary, secondary) in enumerate(zip(clips["primary_label"], secondaries, strict=True)):
        if isinstance(secondary, str):
            raise ValueError(f"row {row}: secondary_labels must be a list of labels, not the string "
                             f"{secondary!r}")
        for label in secondary:
            if label in column_of:
                targets[row, column_of[label]] = max(targets[row, column_of[label]], secondary_weight)
        targets[row, column_of[primary]] = 1.0
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / 2.0
    return targets.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def _positions_by_label(primary_labels: Sequence[str]) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, label in enumerate(primary_labels):
        groups[label].append(position)
    return {label: np.asarray(groups[label], dtype=np.int64) for label in sorted(groups)}


def _validation_quotas(counts: dict[str, int], val_fraction: float,
                       rng: np.random.Generator) -> dict[str, int]:
    """Validation clips per class: proportional to class size, total ``round(n * fraction)``.

    Each class gets ``floor(count * fraction)``; the rest of the total goes one clip at a time to
    the classes with the largest unmet share (random among ties). A class never gives all its clips.
    """
    capacity = {label: count - 1 for label, count in counts.items()}
    share = {label: count * val_fraction for label, count in counts.items()}
    quota = {label: min(math.floor(share[label]), capacity[label]) for label in counts}
    target = min(round(sum(counts.values()) * val_fraction), sum(capacity.values()))
    tiebreak = dict(zip(counts, rng.random(len(counts)), strict=True))
    while sum(quota.values()) < target:
        open_labels = [label for label in counts if quota[label] < capacity[label]]
        chosen = max(open_labels, key=lambda label: (share[label] - quota[label], tiebreak[label]))
        quota[chosen] += 1
    return quota


def stratified_split(
    clips: pd.DataFrame, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split stratified on ``primary_label``; sorted positional indices.

    Every class keeps at least one training clip (a single-clip class stays in training); the
    validation set holds about ``val_fraction`` of the clips, spread over classes by their size.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    groups = _positions_by_label(list(clips["primary_label"]))
    quotas = _validation_quotas({label: len(p) for label, p in groups.items()}, val_fraction, rng)
    val_parts = [rng.permutation(positions)[: quotas[label]] for label, positions in groups.items()]
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(clips), dtype=np.int64), val_idx)
    return train_idx, val_idx.astype(np.int64)


def assign_folds(clips: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """Fold id (0..folds-1) per clip, stratified on ``primary_label``; -1 = always training.

    Classes with at least ``folds`` clips are split by :class:`~sklearn.model_selection.StratifiedKFold`.
    Smaller classes put each clip in a different fold (the least filled ones), so whichever fold is
    validation, the class keeps a training clip. A class with a single clip gets -1.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    labels = np.asarray(clips["primary_label"], dtype=object)
    fold_of = np.full(len(labels), -1, dtype=np.int64)
    groups = _positions_by_label(list(labels))
    large = np.concatenate([p for p in groups.values() if len(p) >= folds] or [np.zeros(0, int)])
    if len(large):
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (_, held_out) in enumerate(splitter.split(large, labels[large].astype(str))):
            fold_of[large[held_out]] = fold
    rng = np.random.default_rng(seed)
    fold_sizes = np.bincount(fold_of[fold_of >= 0], minlength=folds)
    for positions in groups.values():
        if 2 <= len(positions) < folds:
            least_filled = np.lexsort((rng.random(folds), fold_sizes))[: len(positions)]
            fold_of[rng.permutation(positions)] = least_filled
            fold_sizes[least_filled] += 1
    return fold_of


def fold_split(
    clips: pd.DataFrame, folds: int, fold: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation positional indices with fold ``fold`` of :func:`assign_folds` as validation."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    fold_of = assign_folds(clips, folds, seed)
    return np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)


# ----------------------------------------------------------------------------------------------
# Imbalance
# ----------------------------------------------------------------------------------------------


def oversample(
    indices: np.ndarray, primary_labels: Sequence[str], min_count: int, seed: int
) -> np.ndarray:
    """Repeat clips of rare classes until each class has at least ``min_count`` entries.

    ``indices`` select clips (e.g. the training indices of a split) and ``primary_labels[k]`` is
    the label of ``indices[k]`` (same length). Returns ``indices`` followed by the repeats; each
    class's clips are repeated as evenly as possible (whole rounds, then a random subset).
    """
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(primary_labels, dtype=object)
    if len(labels) != len(indices):
        raise ValueError(f"primary_labels has {len(labels)} entries for {len(indices)} indices; "
                         f"pass the labels of the selected clips, in the same order")
    if min_count <= 0 or len(indices) == 0:
        return indices.copy()
    rng = np.random.default_rng(seed)
    extra = []
    for positions in _positions_by_label(list(labels)).values():
        members = indices[positions]
        missing = min_count - len(members)
        if missing <= 0:
            continue
        rounds, rest = divmod(missing, len(members))
        extra.append(np.tile(members, rounds))
        extra.append(rng.choice(members, size=rest, replace=False))
    return np.concatenate([indices, *extra]) if extra else indices.copy()


def class_balanced_weights(primary_labels: Sequence[str], power: float) -> np.ndarray:
    """Per-clip weights ``(1 / class count) ** power``, scaled to mean 1 (float64).

    ``power`` 0 weights clips uniformly; 1 gives every class the same total weight.
    """
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    counts = Counter(primary_labels)
    weights = np.array([(1.0 / counts[label]) ** power for label in primary_labels], dtype=np.float64)
    return weights / weights.mean() if len(weights) else weights


def make_weighted_sampler(
    primary_labels: Sequence[str], power: float, num_samples: int, seed: int
) -> WeightedRandomSampler:
    """A with-replacement sampler drawing clips by :func:`class_balanced_weights` (seeded)."""
    weights = class_balanced_weights(primary_labels, power)
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples,
                                 replacement=True, generator=generator)


# ----------------------------------------------------------------------------------------------
# Serving clips
# ----------------------------------------------------------------------------------------------


class AudioCache:
    """Decoded, resampled mono audio stored as ``.npy`` so later epochs do not decode again.

    The key hashes the absolute path, file size, modification time and sample rate, so an edited
    file is decoded afresh. Files are written to a unique temporary name and renamed into place,
    so several DataLoader workers may fill the same key at once; reads are memory-mapped
    (read-only) and shared between processes through the page cache.
    """

    def __init__(self, cache_dir: str | Path, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.cache_dir = Path(cache_dir)
        self.sample_rate = int(sample_rate)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, path: str | Path) -> Path:
        """The cache file that holds (or will hold) ``path`` decoded at this sample rate."""
        absolute = os.path.abspath(path)
        try:
            stat = os.stat(absolute)
        except OSError:
            raise audio.AudioFileNotFoundError(absolute, "file not found") from None
        key = f"{absolute}|{stat.st_size}|{stat.st_mtime_ns}|{self.sample_rate}"
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"

    def get(self, path: str | Path) -> np.ndarray:
        """Mono float32 samples of ``path``: memory-mapped from the cache, or decoded and stored."""
        cached = self.path_for(path)
        if cached.is_file():
            try:
                return np.load(cached, mmap_mode="r")
            except (OSError, ValueError):
                pass  # a damaged cache file (e.g. disk full) is decoded and written again
        samples = audio.load(path, sample_rate=self.sample_rate)
        self._store(cached, samples)
        return samples

    def _store(self, cached: Path, samples: np.ndarray) -> None:
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.save(handle, np.ascontiguousarray(samples, dtype=np.float32))

        atomic_write(cached, write)


WaveformTransform = Callable[[np.ndarray, int], np.ndarray]
# (length, rng) -> `length` samples of bird-free background, e.g. NoiseBank.random_segment.
BackgroundSource = Callable[[int, np.random.Generator], np.ndarray]


class ClipDataset(Dataset):
    """Fixed-length clips and their targets for a torch DataLoader.

    Training items are randomly cropped (or padded at a random offset) and passed through
    ``waveform_transform(samples, sample_rate)``; validation items take the first ``clip_samples``
    (calls are usually at the start of a focal recording), zero-padded, untransformed. Each item is
    ``{"audio": (clip_samples,) float32, "target": (C,) float32, "weight": () float32, "index": int}``.
    Randomness comes from a numpy Generator seeded by ``seed`` and ``torch.initial_seed()``, created
    lazily in each worker, so workers and epochs draw differently. With a ``background_source``, a
    share ``background_only_p`` of training items is replaced by bird-free background with an all-zero
    target (then transformed like any clip): the model must learn that noise alone is no bird.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: np.ndarray,
        sample_rate: int,
        clip_samples: int,
        train: bool,
        cache: AudioCache | None = None,
        waveform_transform: WaveformTransform | None = None,
        weights: np.ndarray | None = None,
        seed: int = 0,
        background_source: BackgroundSource | None = None,
        background_only_p: float = 0.0,
    ) -> None:
        targets = np.asarray(targets, dtype=np.float32)
        if targets.ndim != 2 or len(targets) != len(paths):
            raise ValueError(f"targets must have shape ({len(paths)}, n_labels), got {targets.shape}")
        if weights is not None and len(weights) != len(paths):
            raise ValueError(f"weights has {len(weights)} entries for {len(paths)} clips")
        if sample_rate <= 0 or clip_samples <= 0:
            raise ValueError("sample_rate and clip_samples must be positive")
        if not 0.0 <= background_only_p < 1.0:
            raise ValueError(f"background_only_p must be in [0, 1), got {background_only_p}")
        self.paths = [str(p) for p in paths]
        self.targets = targets
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(clip_samples)
        self.train = train
        self.cache = cache
        self.waveform_transform = waveform_transform
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.seed = seed
        self.background_source = background_source
        self.background_only_p = background_only_p if background_source is not None else 0.0
        self._rng: np.random.Generator | None = None
        self._rng_torch_seed: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def rng(self) -> np.random.Generator:
        """This process's generator; re-created when the worker's torch seed changes."""
        torch_seed = torch.initial_seed()
        if self._rng is None or self._rng_torch_seed != torch_seed:
            self._rng = np.random.default_rng([self.seed, torch_seed])
            self._rng_torch_seed = torch_seed
        return self._rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        target = self.targets[index].copy()
        if self.train and self.background_only_p and self.rng.random() < self.background_only_p:
            samples = self._background_only()
            target[:] = 0.0
        else:
            samples = self._clip(self.paths[index])
        if self.train and self.waveform_transform is not None:
            samples = self.waveform_transform(samples, self.sample_rate)
            # Length-changing transforms (time stretch) are brought back to the clip length.
            samples = audio.crop_or_pad(np.asarray(samples, dtype=np.float32), self.clip_samples,
                                        mode="start")
        weight = 1.0 if self.weights is None else float(self.weights[index])
        return {
            "audio": torch.from_numpy(np.array(samples, dtype=np.float32)),
            "target": torch.from_numpy(target),
            "weight": torch.tensor(weight, dtype=torch.float32),
            "index": int(index),
        }

    def _background_only(self) -> np.ndarray:
        """A bird-free stretch of background (a negative example: every target 0)."""
        assert self.background_source is not None
        samples = np.asarray(self.background_source(self.clip_samples, self.rng), dtype=np.float32)
        if samples.shape != (self.clip_samples,):
            raise ValueError(
                f"background source returned shape {samples.shape}, expected ({self.clip_samples},)"
            )
        return samples.copy()

    def _clip(self, path: str) -> np.ndarray:
        """``clip_samples`` samples of ``path``: a random crop when training, else the start."""
        clip_s = self.clip_samples / self.sample_rate
        if self.cache is not None:
            samples = self.cache.get(path)
        elif self.train:
            samples = self._random_excerpt(path, clip_s)
        else:
            samples = audio.load(path, sample_rate=self.sample_rate, duration_s=clip_s)
        mode = "random" if self.train else "start"
        # Copy: cached arrays are read-only memory maps and transforms may work in place.
        return np.array(audio.crop_or_pad(samples, self.clip_samples, mode=mode, rng=self.rng),
                        dtype=np.float32)

    def _random_excerpt(self, path: str, clip_s: float) -> np.ndarray:
        """Decode only a random ``clip_s`` stretch of a long file (the whole file if shorter)."""
        header = audio.info(path)
        spare_s = header.duration_s - clip_s
        if spare_s <= 0:
            return audio.load(path, sample_rate=self.sample_rate)
        offset_s = float(self.rng.uniform(0.0, spare_s))
        return audio.load(path, sample_rate=self.sample_rate, offset_s=offset_s, duration_s=clip_s)


class SoundscapeWindows(Dataset):
    """Fixed windows of labelled soundscapes (decoded once through the cache)."""

    def __init__(
        self,
        paths: Sequence[str],
        starts: Sequence[int],
        targets: np.ndarray,
        clip_samples: int,
        cache: AudioCache,
    ) -> None:
        self.paths, self.starts, self.targets = list(paths), list(starts), targets
        self.clip_samples, self.cache = clip_samples, cache

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        samples = self.cache.get(self.paths[index])
        start = self.starts[index]
        window = audio.crop_or_pad(
            np.asarray(samples[start : start + self.clip_samples]), self.clip_samples, "start"
        )
        return {
            "audio": torch.from_numpy(window.copy()),
            "target": torch.from_numpy(self.targets[index]),
            "weight": torch.tensor(1.0),
            "index": index,
        }


# ----------------------------------------------------------------------------------------------
# Summary for `dawnchorus data check`
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSummary:
    """Facts about a training set worth checking before training on it."""

    root: str
    layout: str
    n_classes: int
    n_clips: int
    clips_per_class: list[tuple[str, int]]  # most clips first
    total_hours: float
    sample_rates: dict[int, int]  # sample rate -> clips
    duration_min_s: float
    duration_median_s: float
    duration_max_s: float
    problems: list[Problem]

    @property
    def singleton_classes(self) -> list[str]:
        """Classes with a single clip (never in validation)."""
        return [label for label, count in self.clips_per_class if count == 1]


def summarize(ts: TrainingSet) -> DatasetSummary:
    """Class counts, durations, sample rates and problems of ``ts``.

    Class counts count rows; audio statistics count each readable file once (duplicate rows and
    unreadable files excluded).
    """
    clips = ts.clips
    counts = Counter(clips["primary_label"][clips["primary_label"] != ""])
    per_class = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    files = clips.drop_duplicates("path").dropna(subset=["duration_s"])
    durations = files["duration_s"].to_numpy(dtype=np.float64)
    rates = files["sample_rate"].astype(int).value_counts()
    return DatasetSummary(
        root=str(ts.root),
        layout=ts.layout,
        n_classes=len(ts.labels),
        n_clips=len(clips),
        clips_per_class=per_class,
        total_hours=float(durations.sum() / 3600.0),
        sample_rates={int(rate): int(n) for rate, n in sorted(rates.items())},
        duration_min_s=float(durations.min()) if len(durations) else math.nan,
        duration_median_s=float(np.median(durations)) if len(durations) else math.nan,
        duration_max_s=float(durations.max()) if len(durations) else math.nan,
        problems=list(ts.problems),
    )


HISTOGRAM_WIDTH = 40
HISTOGRAM_TOP = 15
HISTOGRAM_BOTTOM = 10
_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(count: int, largest: int, width: int = HISTOGRAM_WIDTH) -> str:
    """A horizontal bar in block characters, eighth-character resolution, at least a sliver."""
    eighths = max(1, round(count / max(largest, 1) * width * 8)) if count else 0
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _seconds(value: float) -> str:
    return "unknown" if math.isnan(value) else f"{value:.2f} s"


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def render_summary(summary: DatasetSummary, console: Console) -> None:
    """Print a readable report: totals, long-tail histogram, sample rates, durations, problems."""
    console.print(Text(f"Training set {summary.root} ({summary.layout} layout)", style="bold"))
    console.print(f"  classes: {summary.n_classes}   clips: {summary.n_clips}   "
                  f"audio: {_duration(summary.total_hours)}   "
                  f"single-clip classes: {len(summary.singleton_classes)}")
    _render_histogram(summary.clips_per_class, console)
    rates = ", ".join(f"{rate} Hz: {n}" for rate, n in summary.sample_rates.items()) or "unknown"
    console.print(Text(f"Sample rates (clips): {rates}"))
    console.print(Text(f"Durations: min {_seconds(summary.duration_min_s)}, "
                       f"median {_seconds(summary.duration_median_s)}, "
                       f"max {_seconds(summary.duration_max_s)}"))
    if not summary.problems:
        console.print(Text("No problems found.", style="green"))
        return
    kinds = Counter(problem.kind for problem in summary.problems)
    overview = ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items()))
    console.print(Text(f"{len(summary.problems)} problem(s) ({overview}):", style="bold red"))
    for problem in summary.problems:
        console.print(Text(f"  {problem}", style="red"))


def _render_histogram(clips_per_class: list[tuple[str, int]], console: Console) -> None:
    console.print(Text("Clips per class (most first):", style="bold"))
    if not clips_per_class:
        console.print("  (no labelled clips)")
        return
    shown: list[tuple[str, int] | None] = list(clips_per_class)
    hidden = len(clips_per_class) - HISTOGRAM_TOP - HISTOGRAM_BOTTOM
    if hidden > 0:
        shown = [*clips_per_class[:HISTOGRAM_TOP], None, *clips_per_class[-HISTOGRAM_BOTTOM:]]
    largest = clips_per_class[0][1]
    name_width = max(len(label) for label, _ in clips_per_class)
    count_width = len(str(largest))
    for entry in shown:
        if entry is None:
            console.print(Text(f"  ... {hidden} more classes ...", style="dim"))
            continue
        label, count = entry
        line = Text(f"  {label:<{name_width}} {count:>{count_width}} ")
        line.append(_bar(count, largest), style="cyan")
        console.print(line)
