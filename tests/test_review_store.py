"""The verdict store (io/verdicts.py): what a reviewer and the calibration that reads it rely on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from dawnchorus.errors import OutputError
from dawnchorus.io.verdicts import (
    COLUMNS,
    REVIEWS_FILE,
    SCHEMA_VERSION,
    VerdictStore,
    read_verdicts,
    score_bin,
)


def _verdict(item: str = "rec-1:0:amerob", label: str = "amerob", verdict: str = "present", **extra) -> dict:
    fields = dict(item_id=item, file="rec1.wav", start_s=0.0, end_s=5.0, label=label, score=0.8)
    fields["verdict"] = verdict
    return {**fields, **extra}


def test_missing_store_reads_as_empty_frame_with_the_columns(tmp_path: Path) -> None:
    frame = read_verdicts(tmp_path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.empty
    assert not (tmp_path / REVIEWS_FILE).exists()


def test_a_verdict_is_read_back_with_every_field(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    vid = store.add(**_verdict(note="faint", reviewer="ana", queue="random", score_bin=8))
    frame = read_verdicts(tmp_path)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["id"] == vid
    assert (row["item_id"], row["file"], row["label"]) == ("rec-1:0:amerob", "rec1.wav", "amerob")
    assert row["verdict"] == "present"
    assert (row["start_s"], row["end_s"], row["score"]) == (0.0, 5.0, 0.8)
    assert (row["note"], row["reviewer"], row["queue"], row["score_bin"]) == ("faint", "ana", "random", 8)
    assert row["created_at"].endswith("+00:00")  # ISO UTC
    assert row["other_label"] is None


def test_latest_verdict_of_an_item_label_is_active_and_history_is_kept(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    store.add(**_verdict(verdict="present"))
    second = store.add(**_verdict(verdict="absent"))
    store.add(**_verdict(label="norcar", verdict="unsure"))
    frame = store.frame()
    active = sorted(zip(frame["label"], frame["verdict"], strict=True))
    assert active == [("amerob", "absent"), ("norcar", "unsure")]
    assert frame.set_index("label").loc["amerob", "id"] == second
    assert len(store.history()) == 3


def test_a_random_sample_item_stays_in_it_when_judged_again_from_another_queue(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    store.add(**_verdict(verdict="present", queue="random", score_bin=8))
    store.add(**_verdict(verdict="absent", queue="uncertain"))
    store.add(**_verdict(item="rec-1:5000:amerob", verdict="present", queue="score"))
    frame = store.frame().set_index("item_id")
    redone = frame.loc["rec-1:0:amerob"]
    assert (redone["verdict"], redone["queue"], redone["score_bin"]) == ("absent", "random", 8)
    assert frame.loc["rec-1:5000:amerob", "queue"] == "score"
    assert list(store.frame().columns) == list(COLUMNS)


def test_undo_restores_the_verdict_before_it(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    store.add(**_verdict(verdict="present"))
    later = store.add(**_verdict(verdict="absent"))
    assert store.delete(later) is True
    assert store.frame()["verdict"].tolist() == ["present"]
    assert store.delete(later) is False  # already undone
    assert store.delete(12345) is False
    assert len(store.history()) == 2


def test_other_needs_the_species_heard(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    with pytest.raises(ValueError, match="other_label"):
        store.add(**_verdict(verdict="other"))
    store.add(**_verdict(verdict="other", other_label="norcar"))
    assert store.frame()["other_label"].tolist() == ["norcar"]
    with pytest.raises(ValueError, match="present, absent, unsure, other"):
        store.add(**_verdict(verdict="yes"))


def test_store_is_wal_and_versioned(tmp_path: Path) -> None:
    VerdictStore(tmp_path / REVIEWS_FILE)
    db = sqlite3.connect(tmp_path / REVIEWS_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_a_store_from_a_newer_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / REVIEWS_FILE
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(OutputError, match="newer dawnchorus"):
        VerdictStore(path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / REVIEWS_FILE
    path.write_text("not a database, just text" * 100)
    with pytest.raises(OutputError, match="not a verdict store"):
        VerdictStore(path)


def test_concurrent_writers_in_threads_keep_every_verdict(tmp_path: Path) -> None:
    path = tmp_path / REVIEWS_FILE
    VerdictStore(path)
    ids: list[int] = []
    lock = threading.Lock()

    def write(worker: int) -> None:
        store = VerdictStore(path)
        for i in range(25):
            vid = store.add(**_verdict(item=f"w{worker}-{i}", reviewer=f"r{worker}"))
            with lock:
                ids.append(vid)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 100
    assert sorted(read_verdicts(tmp_path)["id"]) == sorted(ids)


def test_score_bins_cover_zero_to_one() -> None:
    assert [score_bin(s) for s in (0.0, 0.05, 0.1, 0.55, 0.99, 1.0)] == [0, 0, 1, 5, 9, 9]


def test_a_store_that_cannot_be_created_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"reviews.sqlite: verdict store cannot be used \(unable to open"):
        VerdictStore(tmp_path / "file" / REVIEWS_FILE)
