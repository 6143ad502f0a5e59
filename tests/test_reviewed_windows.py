"""Verdicts of a reviewed run as labelled training windows (dawnchorus.data.reviewed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dawnchorus.data.reviewed import read_reviewed_windows, reviewed_windows
from dawnchorus.errors import DatasetError
from dawnchorus.io.verdicts import REVIEWS_FILE, VerdictStore, read_verdicts

LABELS = ["aaa", "bbb", "ccc"]


def judge(
    store: VerdictStore, file: str, start_s: float, label: str, verdict: str, other: str | None = None
) -> None:
    store.add(
        item_id=f"{file}:{int(start_s * 1000)}:{label}", file=file, start_s=start_s, end_s=start_s + 5,
        label=label, score=0.7, verdict=verdict, other_label=other, queue="random",
    )


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    store = VerdictStore(folder / REVIEWS_FILE)
    judge(store, "a.ogg", 0.0, "aaa", "present")
    judge(store, "a.ogg", 0.0, "bbb", "absent")
    judge(store, "a.ogg", 5.0, "aaa", "other", "ccc")  # heard ccc, not aaa
    judge(store, "a.ogg", 10.0, "bbb", "unsure")  # nothing learnt
    judge(store, "b.ogg", 0.0, "aaa", "other", "Unknown warbler")  # a label the model lacks
    judge(store, "b.ogg", 5.0, "aaa", "other", "bbb")
    judge(store, "b.ogg", 5.0, "bbb", "absent")  # judged directly: wins over the implied positive
    return folder


def test_verdicts_become_targets_and_a_mask_of_judged_labels(run: Path) -> None:
    windows = reviewed_windows(read_verdicts(run), LABELS)
    table = windows.table
    windows_judged = [["a.ogg", 0.0], ["a.ogg", 5.0], ["b.ogg", 0.0], ["b.ogg", 5.0]]
    assert table[["file", "start_s"]].values.tolist() == windows_judged
    np.testing.assert_array_equal(
        table[LABELS].to_numpy(),
        [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]],
    )
    np.testing.assert_array_equal(
        windows.mask,
        [[1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 1, 0]],
    )
    assert windows.unsure == 1
    assert windows.unknown_labels == {"Unknown warbler": 1}
    assert windows.positives == {"aaa": 1, "bbb": 0, "ccc": 1}
    assert windows.negatives == {"aaa": 3, "bbb": 2, "ccc": 0}
    assert (table["end_s"] - table["start_s"] == 5).all()


def test_recordings_are_found_beside_the_run_or_in_audio_dirs(run: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as refused:
        read_reviewed_windows(run, LABELS)
    assert refused.value.problems == [f"{name}: reviewed recording not found" for name in ("a.ogg", "b.ogg")]
    (run / "a.ogg").write_bytes(b"")
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "b.ogg").write_bytes(b"")
    windows = read_reviewed_windows(run, LABELS, audio_dirs=[audio])
    assert sorted(set(windows.table["file"])) == [str(audio / "b.ogg"), str(run / "a.ogg")]


def test_a_run_without_verdicts_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no verdicts"):
        read_reviewed_windows(tmp_path, LABELS)
    with pytest.raises(DatasetError, match="not a folder"):
        read_reviewed_windows(tmp_path / "missing", LABELS)
    store = VerdictStore(tmp_path / REVIEWS_FILE)
    judge(store, "x.ogg", 0.0, "zzz", "present")
    with pytest.raises(DatasetError, match="no verdict names one of the model's labels"):
        read_reviewed_windows(tmp_path, LABELS)
