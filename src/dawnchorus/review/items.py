"""The review items of a predict run: every (window, label) pair, its queues and filters.

:func:`open_run` reads a ``predict`` output folder (``predictions.parquet``, else ``predictions.csv``,
else the newest ``parts/<tag>/``) and its ``run.json`` (:mod:`dawnchorus.io.runinfo`), and finds each
recording on disk: predict's tables name a recording as the user gave it, so it is looked for at the
absolute path run.json gives it (when the file there has the recorded size and the same name), then
as named from the working folder, from the results folder's parent and under the folders given
(``--audio``). Thresholds: ``--threshold``, else the model file's (``--model``, read by the command
line), else those run.json says the run applied, else 0.5. A run.json is data from wherever the
folder came from: its paths only ever locate the recordings of the run's tables; so are the tables'
names, found only as audio files under the working folder, the results folder's parent or a folder
given (and of run.json's recorded size where it lists them). Recordings are named by a
:func:`recording_id` derived from the ``file`` column; media are served by that id only, so no request
names a path. An item is one label on one window, ``"<recording id>:<start ms>:<label>"``.

Queues (:data:`dawnchorus.io.verdicts.QUEUES`): ``score`` (highest first), ``uncertain`` (nearest the
label's threshold first), ``random`` (a stratified random sample: every species x score bin of
:data:`dawnchorus.io.verdicts.SCORE_BIN_EDGES` in turn, items drawn at random within each, with a
fixed seed, so the first items cover every stratum and the order is the same after a restart) and
``time`` (recording, then time, then score).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dawnchorus.errors import InputError
from dawnchorus.io.audio import AUDIO_EXTENSIONS
from dawnchorus.io.outputs import label_columns, read_probabilities
from dawnchorus.io.runinfo import RunInfo, read_run_info
from dawnchorus.io.verdicts import QUEUES, SCORE_BIN_EDGES

DEFAULT_THRESHOLD = 0.5  # the model file's default global threshold, used when no model is given
RANDOM_SEED = 14  # the stratified sample's order: fixed, so a restarted server serves the same sample
MAX_PAGE = 500


@dataclass
class Run:
    """A predict run folder as the review app sees it."""

    results_dir: Path
    labels: list[str]
    thresholds: dict[str, float]
    threshold_source: str  # where the thresholds came from, for the reviewer
    windows: pd.DataFrame  # file, start_s, end_s, recording, start_ms, then one score column per label
    recordings: dict[str, Path | None]  # recording id -> the file on disk (None: not found)
    files: dict[str, str]  # recording id -> the file as predict's tables name it
    _orders: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _scores: np.ndarray | None = field(default=None, repr=False)
    _index: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)

    # ---- items -------------------------------------------------------------------------------------

    @property
    def pairs(self) -> int:
        """How many (window, label) items the run has."""
        return len(self.windows) * len(self.labels)

    def scores(self) -> np.ndarray:
        """windows x labels score matrix (float32; computed once, not to be changed)."""
        if self._scores is None:
            self._scores = self.windows[self.labels].to_numpy(dtype=np.float32)
        return self._scores

    def item(self, item_id: str) -> dict[str, Any] | None:
        """The item ``item_id`` (see :func:`item_id`), or None when the run has no such item."""
        parsed = parse_item_id(item_id)
        if parsed is None:
            return None
        recording, start_ms, label = parsed
        row = self.window_row(recording, start_ms)
        if row is None or label not in self.labels:
            return None
        return self._describe(row, self.labels.index(label))

    def window_row(self, recording: str, start_ms: int) -> int | None:
        """The row of the window of ``recording`` starting at ``start_ms``, or None."""
        index = self._window_index().get((recording, int(start_ms)))
        return None if index is None else int(index)

    def query(
        self,
        order: str = "score",
        species: list[str] | None = None,
        file: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        reviewed: set[tuple[str, str]] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many items match, the page of them from ``offset``) in ``order``, filtered by
        species (labels), recording (``file``: its id or its name in the tables), score range; with
        ``reviewed`` (a set of (item id, label)), those items are left out."""
        if order not in QUEUES:
            raise InputError(f"order must be one of {', '.join(QUEUES)}, not {order!r}")
        candidates = self._order(order)
        rows, cols = np.divmod(candidates, len(self.labels))
        keep = np.ones(len(candidates), dtype=bool)
        if species:
            unknown = [s for s in species if s not in self.labels]
            if unknown:
                raise InputError(f"species: {', '.join(unknown)} not among the model's labels")
            keep &= np.isin(cols, [self.labels.index(s) for s in species])
        if file:
            recording = file if file in self.files else self._id_of_file(file)
            if recording is None:
                raise InputError(f"file: no recording {file!r} in this run")
            keep &= self.windows["recording"].to_numpy()[rows] == recording
        scores = self.scores()[rows, cols]
        if min_score is not None:
            keep &= scores >= min_score
        if max_score is not None:
            keep &= scores <= max_score
        if reviewed:
            keep &= ~np.isin(candidates, self._flat_indices(reviewed))
        chosen = np.flatnonzero(keep)
        page = chosen[offset : offset + max(0, min(limit, MAX_PAGE))]
        return len(chosen), [self._describe(int(rows[i]), int(cols[i]), order) for i in page]

    def detections(self) -> dict[str, int]:
        """Per label: how many windows reach its threshold."""
        cutoffs = np.asarray([self.thresholds[label] for label in self.labels], dtype=np.float32)
        counts = (self.scores() >= cutoffs[None, :]).sum(axis=0)
        return {label: int(n) for label, n in zip(self.labels, counts, strict=True)}

    # ---- helpers -------------------------------------------------------------------------------------

    def _describe(self, row: int, col: int, queue: str = "") -> dict[str, Any]:
        """The JSON of item (window ``row``, label ``col``)."""
        window = self.windows.iloc[row]
        label = self.labels[col]
        scores = self.scores()[row]
        top = np.argsort(-scores, kind="stable")[:5]
        score = float(scores[col])
        return {
            "id": item_id(window["recording"], int(window["start_ms"]), label),
            "recording": window["recording"],
            "file": window["file"],
            "start_s": float(window["start_s"]),
            "end_s": float(window["end_s"]),
            "label": label,
            "score": round(score, 6),
            "threshold": self.thresholds[label],
            "score_bin": score_bin_of(score),
            "queue": queue,
            "top": [[self.labels[i], round(float(scores[i]), 6)] for i in top],
        }

    def _order(self, order: str) -> np.ndarray:
        """Flat item indices (row * labels + col) in queue ``order``; computed once per queue."""
        if order in self._orders:
            return self._orders[order]
        scores = self.scores()
        flat = scores.ravel()
        n_labels = len(self.labels)
        if order == "score":
            result = np.argsort(-flat, kind="stable")
        elif order == "uncertain":
            cutoffs = np.asarray([self.thresholds[label] for label in self.labels], dtype=np.float32)
            result = np.argsort(np.abs(scores - cutoffs[None, :]).ravel(), kind="stable")
        elif order == "random":
            rng = np.random.default_rng(RANDOM_SEED)
            stratum = (np.arange(flat.size) % n_labels) * (len(SCORE_BIN_EDGES) - 1) + _bins(flat)
            draw = rng.permutation(flat.size)  # a random rank for every item
            shuffled = np.lexsort((draw, stratum))  # strata, random order inside each
            rank = np.empty(flat.size, dtype=np.int64)
            starts = np.searchsorted(stratum[shuffled], stratum[shuffled], side="left")
            rank[shuffled] = np.arange(flat.size) - starts  # position inside its stratum
            stratum_draw = rng.permutation(int(stratum.max()) + 1 if flat.size else 1)[stratum]
            result = np.lexsort((stratum_draw, rank))  # round robin over the strata
        else:  # time
            rows = np.repeat(np.arange(len(self.windows)), n_labels)
            result = np.lexsort((-flat, rows))  # windows are in recording, time order
        self._orders[order] = result
        return result

    def _flat_indices(self, pairs: set[tuple[str, str]]) -> np.ndarray:
        """The flat item indices of (item id, label) pairs (those of this run)."""
        found = []
        for item, label in pairs:
            parsed = parse_item_id(item)
            row = None if parsed is None else self.window_row(parsed[0], parsed[1])
            if row is not None and label in self.labels:
                found.append(row * len(self.labels) + self.labels.index(label))
        return np.asarray(found, dtype=np.int64)

    def _window_index(self) -> dict[tuple[str, int], int]:
        if not self._index:
            keys = zip(self.windows["recording"], self.windows["start_ms"], strict=True)
            self._index.update({(r, int(s)): i for i, (r, s) in enumerate(keys)})
        return self._index

    def _id_of_file(self, file: str) -> str | None:
        for recording, name in self.files.items():
            if name == file:
                return recording
        return None


def open_run(
    results_dir: str | Path,
    audio_dirs: list[Path] | None = None,
    threshold: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    source: str = "model file",
) -> Run:
    """Read predict output folder ``results_dir`` for review; raises :class:`InputError` with one line
    when it is not one, or when its run.json is malformed (naming the field). Thresholds: ``threshold``
    for every label, else ``thresholds`` by label (the model's, from ``source``; every label of the run
    must have one), else run.json's, else :data:`DEFAULT_THRESHOLD`. Recordings are found at run.json's
    absolute paths, else where the run names them, else under ``audio_dirs`` (by their path relative
    to it, then by name)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(f"{results_dir}: no such folder (give a predict output folder)")
    info = read_run_info(results_dir)
    table = _read_table(results_dir, info.tag if info is not None else "")
    labels = label_columns(table)
    if threshold is None and thresholds is None and info is not None:
        thresholds, source = _run_thresholds(info, labels), f"{info.path} (those predict applied)"
    cutoffs, used = _thresholds(labels, threshold, thresholds, source)
    table = table.sort_values(["file", "start_s"], kind="stable").reset_index(drop=True)
    files = {recording_id(name): name for name in pd.unique(table["file"].astype(str))}
    ids = {name: rid for rid, name in files.items()}
    keys = pd.DataFrame(
        {
            "recording": table["file"].astype(str).map(ids),
            "start_ms": np.round(table["start_s"].to_numpy(dtype=np.float64) * 1000).astype(np.int64),
        }
    )
    table = pd.concat([table[["file", "start_s", "end_s"]], keys, table[labels]], axis=1)
    folders = list(audio_dirs or [])
    recordings = {rid: _find_recording(name, results_dir, folders, info) for rid, name in files.items()}
    return Run(results_dir, labels, cutoffs, used, table, recordings, files)


def recording_id(file: str) -> str:
    """A URL-safe id of a recording named ``file`` in the tables: its stem (letters, digits, ``-_``)
    and 10 hex digits of the name's SHA-1."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(file).stem)[:40] or "rec"
    return f"{stem}-{hashlib.sha1(file.encode()).hexdigest()[:10]}"


def item_id(recording: str, start_ms: int, label: str) -> str:
    """The id of the item ``label`` on the window of ``recording`` starting at ``start_ms``."""
    return f"{recording}:{int(start_ms)}:{label}"


def parse_item_id(text: str) -> tuple[str, int, str] | None:
    """(recording id, start ms, label) of an item id, or None when ``text`` is not one."""
    parts = str(text).split(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0] or not parts[2]:
        return None
    return parts[0], int(parts[1]), parts[2]


def score_bin_of(score: float) -> int:
    """The score bin (0..9) of ``score``: see :func:`dawnchorus.io.verdicts.score_bin`."""
    return int(_bins(np.asarray([score]))[0])


def _bins(scores: np.ndarray) -> np.ndarray:
    edges = np.asarray(SCORE_BIN_EDGES)
    return np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)


def _read_table(results_dir: Path, tag: str = "") -> pd.DataFrame:
    """The run's window table: the combined Parquet or CSV, else the parts of ``parts/<tag>`` (the
    last run's, from run.json) when it exists, else those of the newest parts folder."""
    for name in ("predictions.parquet", "predictions.csv"):
        if (results_dir / name).is_file():
            return _checked(read_probabilities(results_dir / name), results_dir / name)
    parts_root = results_dir / "parts"
    tags = sorted(
        (p for p in parts_root.iterdir() if p.is_dir()) if parts_root.is_dir() else [],
        key=lambda p: (p.name == tag, p.stat().st_mtime),
    )
    parts = sorted(tags[-1].glob("*.parquet")) if tags else []
    parts = [p for p in parts if ".windows-" not in p.name]
    if not parts:
        raise InputError(
            f"{results_dir}: no predictions.parquet, predictions.csv or parts/: "
            "not a dawnchorus predict output folder"
        )
    return _checked(pd.concat([read_probabilities(p) for p in parts], ignore_index=True), tags[-1])


def _checked(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    if table.empty:
        raise InputError(f"{source}: the run has no windows to review")
    return table


def _thresholds(
    labels: list[str], threshold: float | None, by_label: Mapping[str, float] | None, source: str
) -> tuple[dict[str, float], str]:
    """Each label's threshold and where they came from (see :func:`open_run`)."""
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"--threshold: {threshold} is not between 0 and 1")
        return {label: float(threshold) for label in labels}, f"--threshold {threshold:g}"
    if by_label is not None:
        missing = [label for label in labels if label not in by_label]
        if missing:
            raise InputError(
                f"{source}: has no threshold for {len(missing)} label(s) of the run "
                f"({', '.join(missing[:5])}): is it the model that made the run?"
            )
        return {label: float(by_label[label]) for label in labels}, source
    return {label: DEFAULT_THRESHOLD for label in labels}, f"{DEFAULT_THRESHOLD:g} (no model given)"


def _run_thresholds(info: RunInfo, labels: list[str]) -> dict[str, float]:
    """run.json's thresholds for the labels of the run's table; a run.json of other labels (from
    another run: its table was replaced, or the two come from different places) is refused."""
    missing = [label for label in labels if label not in info.thresholds]
    if missing:
        raise InputError(
            f"{info.path}: thresholds: none for {len(missing)} label(s) of the run's table "
            f"({', '.join(missing[:5])}): it describes another run; give --model or --threshold"
        )
    return {label: info.thresholds[label] for label in labels}


def _find_recording(
    name: str, results_dir: Path, audio_dirs: list[Path], info: RunInfo | None = None
) -> Path | None:
    """Where recording ``name`` (as the tables give it) is on disk: where run.json (``info``) recorded
    it (see :meth:`RunInfo.recording_path`), then the name itself (absolute, or relative to the
    working folder or to the results folder's parent), then under each of ``audio_dirs``; None when
    none exists.

    The tables are data from wherever the folder came from, as run.json is: a name found this way is
    used only when it is an audio file's name and the file, links followed, lies under the working
    folder, the results folder's parent or one of ``audio_dirs`` (never an absolute path elsewhere,
    a ``../`` or a link leading out), and, where run.json lists the recording, has the size predict
    recorded."""
    found = info.recording_path(name) if info is not None else None
    if found is not None:
        return found
    given = Path(name)
    if given.suffix.lower() not in AUDIO_EXTENSIONS:
        return None
    recorded = info.recordings.get(name) if info is not None else None
    roots = [Path.cwd(), results_dir.parent, *audio_dirs]
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, results_dir.parent / given]
    for folder in audio_dirs:
        candidates += [folder / given] if not given.is_absolute() else []
        candidates.append(folder / given.name)
    for candidate in candidates:
        usable = _usable_recording(candidate, roots, None if recorded is None else recorded.size)
        if usable is not None:
            return usable
    return None


def _usable_recording(candidate: Path, roots: list[Path], size: int | None) -> Path | None:
    """``candidate`` resolved, when it is a readable regular file under one of ``roots`` (links
    followed) of ``size`` bytes (any size when None); else None."""
    try:
        path = candidate.resolve(strict=True)
        if not path.is_file() or not os.access(path, os.R_OK):
            return None
        if size is not None and path.stat().st_size != size:
            return None
        inside = any(path.is_relative_to(root.resolve()) for root in roots)
    except (OSError, RuntimeError):  # missing, a name too long, a folder without permission, a link loop
        return None
    return path if inside else None
