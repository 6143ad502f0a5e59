"""The one atomic write, the clean-up of its stale temporaries, and usable cores (dawnchorus.io.files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dawnchorus.errors import OutputError
from dawnchorus.io import files

# ------------------------------------------------------------------ atomic_write


def test_atomic_write_moves_the_finished_file_into_place(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == target.parent and tmp.suffix == ".txt"
        assert not target.exists()
        tmp.write_text("done")

    assert files.atomic_write(target, write) == target
    assert target.read_text() == "done"
    assert not seen[0].exists()
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_atomic_write_leaves_no_partial_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("file,start_s\nhalf")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.atomic_write(target, half_then_fail)
    assert list(tmp_path.iterdir()) == []

    target.write_text("previous version")
    with pytest.raises(RuntimeError):
        files.atomic_write(target, half_then_fail)
    assert target.read_text() == "previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    captured: list[Path] = []

    def capture(tmp: Path) -> None:
        captured.append(tmp)
        tmp.write_text("half")
        raise KeyboardInterrupt  # stands in for the kill; a real SIGKILL skips the clean-up

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "rec.parquet", capture)
    stale = tmp_path / captured[0].name
    stale.write_text("half")  # what SIGKILL leaves behind
    keep = [tmp_path / "rec.parquet", tmp_path / ".hidden_user_file", tmp_path / "notes.tmp.txt"]
    for path in keep:
        path.write_text("keep")
    assert files.remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists()
    assert all(path.exists() for path in keep)


def test_atomic_write_requires_the_writer_to_create_the_file(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="without creating"):
        files.atomic_write(tmp_path / "x.csv", lambda tmp: None)


def test_usable_cores_counts_the_cores_this_process_may_run_on() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert files.usable_cores() == expected >= 1
