"""The verdict store of a reviewed predict run: ``RESULTS_DIR/reviews.sqlite`` (stdlib sqlite3, no torch).

A verdict is one person's judgement of one label on one window of a run (``present``, ``absent``,
``unsure``, or ``other``: another species, named in ``other_label``). Every verdict is a row; none is
ever overwritten: when the same ``(item_id, label)`` is judged again, the newest row is the active
one, and undo (:meth:`VerdictStore.delete`) marks a row deleted, so the one before it is active
again. :func:`read_verdicts` gives the active verdicts as a table, which calibration, precision and
``train --reviewed`` read.

Durability: write-ahead log, ``synchronous=FULL``, and each :meth:`VerdictStore.add` commits before
it returns, so a verdict the server acknowledged survives the process being killed; a busy timeout
lets two writers (two tabs, two reviewers, two processes) wait for each other instead of failing.
The schema's version is SQLite's ``user_version``; a file from a newer dawnchorus is refused with
one line rather than misread.

Score bins: the review app's stratified random sample draws items per species and per bin of
:data:`SCORE_BIN_EDGES`; a verdict given on an item of that sample records its bin (``score_bin``,
``-1`` for other queues), so precision can be weighted by the bins' sizes (:func:`score_bin` gives
any score's bin).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.errors import OutputError

SCHEMA_VERSION = 1
VERDICTS = ("present", "absent", "unsure", "other")
QUEUES = ("score", "uncertain", "random", "time")
REVIEWS_FILE = "reviews.sqlite"
COLUMNS = (
    "id", "item_id", "file", "start_s", "end_s", "label", "score", "verdict", "other_label", "note",
    "reviewer", "created_at", "queue", "score_bin",
)
# Ten equal bins over [0, 1]; the last one includes 1.0. Scores are sigmoid outputs.
SCORE_BIN_EDGES = tuple(round(0.1 * i, 1) for i in range(11))
# A writer waits this long for another one's transaction before giving up (ms); a verdict is a
# one-row insert, so waits are milliseconds in practice.
BUSY_TIMEOUT_MS = 30_000

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    file TEXT NOT NULL,
    start_s REAL NOT NULL,
    end_s REAL NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in VERDICTS)})),
    other_label TEXT,
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    queue TEXT NOT NULL DEFAULT '',
    score_bin INTEGER NOT NULL DEFAULT -1,
    deleted_at TEXT
);
CREATE INDEX IF NOT EXISTS verdicts_item ON verdicts (item_id, label);
"""


def score_bin(score: float) -> int:
    """The bin of :data:`SCORE_BIN_EDGES` that ``score`` falls in (0..9; 1.0 in the last one)."""
    edges = np.asarray(SCORE_BIN_EDGES)
    index = int(np.searchsorted(edges, float(score), side="right")) - 1
    return min(max(index, 0), len(edges) - 2)


class VerdictStore:
    """The verdicts of one run folder, in a SQLite file; safe to use from several threads and
    processes at once (each call opens its own connection)."""

    def __init__(self, path: Path) -> None:
        """Open ``path``, creating it (and its schema) if it does not exist; raises
        :class:`OutputError` for a file that is not a verdict store this version can read."""
        self.path = Path(path)
        try:
            with self._connect() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise OutputError(
                        f"{self.path}: verdict store of schema version {version}, written by a newer "
                        f"dawnchorus (this one reads version {SCHEMA_VERSION}); upgrade dawnchorus"
                    )
                if version < SCHEMA_VERSION:
                    self._migrate(db, version)
        except OutputError as exc:
            if "file is not a database" in str(exc):
                raise OutputError(f"{self.path}: not a verdict store (not an SQLite file)") from None
            raise

    def add(
        self,
        *,
        item_id: str,
        file: str,
        start_s: float,
        end_s: float,
        label: str,
        score: float,
        verdict: str,
        other_label: str | None = None,
        note: str = "",
        reviewer: str = "",
        queue: str = "",
        score_bin: int = -1,
    ) -> int:
        """Record one verdict and commit it; returns its id. Raises :class:`ValueError` for a
        verdict not in :data:`VERDICTS` or ``other`` without ``other_label``."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        if verdict == "other" and not (other_label or "").strip():
            raise ValueError("verdict 'other' needs other_label: the species heard instead")
        if verdict != "other":
            other_label = None
        row = (
            item_id, file, float(start_s), float(end_s), label, float(score), verdict, other_label,
            note, reviewer, _now(), queue, int(score_bin),
        )
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO verdicts (item_id, file, start_s, end_s, label, score, verdict, other_label,"
                " note, reviewer, created_at, queue, score_bin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            return int(cursor.lastrowid)

    def delete(self, verdict_id: int) -> bool:
        """Undo verdict ``verdict_id`` (kept in the history, marked deleted); False when there is no
        such active row."""
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE verdicts SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (_now(), int(verdict_id)),
            )
            return cursor.rowcount > 0

    def frame(self) -> pd.DataFrame:
        """The active verdicts (the newest undeleted row of each ``(item_id, label)``), oldest first,
        with the columns of :data:`COLUMNS`.

        An item judged in the random queue stays in the random sample (``queue`` "random" and its
        ``score_bin``) when it is judged again from another queue: the sample is which items were
        drawn, the verdict is the reviewer's latest word on them."""
        own = [c for c in COLUMNS if c not in ("queue", "score_bin")]
        query = (
            f"SELECT {', '.join('v.' + c for c in own)},"
            " COALESCE(r.queue, v.queue), COALESCE(r.score_bin, v.score_bin)"
            " FROM verdicts v LEFT JOIN ("
            "  SELECT item_id, label, 'random' AS queue, MAX(score_bin) AS score_bin FROM verdicts"
            "  WHERE queue = 'random' AND deleted_at IS NULL GROUP BY item_id, label"
            " ) r ON r.item_id = v.item_id AND r.label = v.label"
            " WHERE v.id IN ("
            "  SELECT MAX(id) FROM verdicts WHERE deleted_at IS NULL GROUP BY item_id, label"
            " ) ORDER BY v.id"
        )
        with self._connect() as db:
            rows = db.execute(query).fetchall()
        return _as_frame(rows)

    def history(self) -> pd.DataFrame:
        """Every row ever written (undone and replaced ones too), with ``deleted_at``."""
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(COLUMNS)}, deleted_at FROM verdicts ORDER BY id").fetchall()
        return pd.DataFrame(rows, columns=[*COLUMNS, "deleted_at"])

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one operation: committed on success, rolled back on error, then closed; an
        SQLite error (no permission, a full disk, not a database) becomes an :class:`OutputError`
        naming the file."""
        try:
            with self._transaction() as db:
                yield db
        except sqlite3.Error as exc:
            raise OutputError(f"{self.path}: verdict store cannot be used ({exc})") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring a store of schema ``version`` (0: new or empty) to :data:`SCHEMA_VERSION`."""
        if version == 0:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def read_verdicts(results_dir: Path) -> pd.DataFrame:
    """The active verdicts of run folder ``results_dir`` (see :meth:`VerdictStore.frame`); an empty
    frame with the same columns when it has no ``reviews.sqlite``."""
    path = Path(results_dir) / REVIEWS_FILE
    if not path.is_file():
        return _as_frame([])
    return VerdictStore(path).frame()


def _as_frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    types = {"id": "int64", "start_s": float, "end_s": float, "score": float, "score_bin": "int64"}
    return frame.astype(types)


def _now() -> str:
    """The current time, ISO 8601 UTC to the microsecond."""
    return datetime.now(UTC).isoformat(timespec="microseconds")
