"""Training sets: layouts, validation problems, targets, splits, balancing, cache, clips, summary."""

from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from dawnchorus.config import build_config
from dawnchorus.data.check import DatasetSummary, render_summary, summarize
from dawnchorus.data.datasets import AudioCache, ClipDataset, encode_targets, soundscape_windows
from dawnchorus.data.layouts import Problem, TrainingSet, load_training_set
from dawnchorus.data.splits import (
    assign_folds,
    class_balanced_weights,
    fold_split,
    make_weighted_sampler,
    oversample,
    stratified_split,
)
from dawnchorus.errors import DatasetError
from dawnchorus.io import audio

RATE = 16000
CLIP = RATE // 2


def tone(seconds: float, freq: float = 1000.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def ramp(n: int) -> np.ndarray:
    """Samples whose value tells their position (16-bit WAV keeps them distinct)."""
    return (np.arange(n) / n * 0.9).astype(np.float32)


def write_birdclef(root: Path, rows: list[dict], audio_files: dict[str, float] | None = None) -> Path:
    """A BirdCLEF-layout set: ``rows`` -> train_metadata.csv; ``audio_files`` name -> seconds."""
    for number, (name, seconds) in enumerate((audio_files or {}).items()):
        audio.write_audio(root / "train_audio" / name, tone(seconds, 500 + 100 * number), RATE)
    pd.DataFrame(rows).to_csv(root / "train_metadata.csv", index=False)
    return root


def row(label: str, filename: str, secondary: str = "[]", rating: object = 4.0, **extra) -> dict:
    return {"primary_label": label, "secondary_labels": secondary, "rating": rating,
            "filename": filename, **extra}


@pytest.fixture
def birdclef_set(tmp_path: Path) -> Path:
    files = {"aaa/a1.ogg": 2.0, "aaa/a2.ogg": 1.5, "bbb/b1.wav": 3.0, "ccc/c1.flac": 1.0}
    rows = [
        row("aaa", "aaa/a1.ogg", "['bbb']", 4.5, author="X"),
        row("aaa", "aaa/a2.ogg", "[]", "", author="Y"),
        row("bbb", "bbb/b1.wav", "['aaa', 'ccc']", 3.0, author="Z"),
        row("ccc", "ccc/c1.flac", "", 5.0, author="W"),
    ]
    root = write_birdclef(tmp_path / "set", rows, files)
    (root / "test_soundscapes").mkdir()
    (root / "test_labels.csv").write_text("row_id,audio_id,seconds,birds\n")
    (root / "scored_birds.json").write_text(json.dumps(["aaa", "ccc"]))
    return root


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


def test_birdclef_layout_loads_with_every_column(birdclef_set: Path) -> None:
    ts = load_training_set(birdclef_set)
    assert ts.layout == "birdclef" and ts.problems == []
    assert ts.labels == ["aaa", "bbb", "ccc"]
    clips = ts.clips.set_index("filename")
    assert list(clips.index) == ["aaa/a1.ogg", "aaa/a2.ogg", "bbb/b1.wav", "ccc/c1.flac"]
    assert clips.loc["bbb/b1.wav", "secondary_labels"] == ["aaa", "ccc"]
    assert clips.loc["ccc/c1.flac", "secondary_labels"] == []
    assert clips.loc["aaa/a1.ogg", "rating"] == 4.5
    assert clips.loc["aaa/a2.ogg", "rating"] == 5.0  # empty cell -> absent -> 5.0
    assert clips.loc["bbb/b1.wav", "duration_s"] == pytest.approx(3.0)
    assert (clips["sample_rate"] == RATE).all() and clips["ok"].all()
    assert clips.loc["aaa/a1.ogg", "author"] == "X"  # extra metadata columns are kept
    for path in clips["path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    assert ts.soundscape_dir == birdclef_set / "test_soundscapes"
    assert ts.soundscape_labels == birdclef_set / "test_labels.csv"
    assert ts.scored_labels == ["aaa", "ccc"]


def test_birdclef_without_optional_columns_or_extras(tmp_path: Path) -> None:
    root = write_birdclef(tmp_path, [{"primary_label": "aaa", "filename": "aaa/a.wav"}],
                         {"aaa/a.wav": 0.5})
    ts = load_training_set(root)
    assert ts.clips.loc[0, "secondary_labels"] == [] and ts.clips.loc[0, "rating"] == 5.0
    assert ts.soundscape_dir is None and ts.soundscape_labels is None and ts.scored_labels is None


def test_birdclef_2021_bare_filenames_are_found_under_the_label_folder(tmp_path: Path) -> None:
    audio.write_audio(tmp_path / "train_short_audio" / "aaa" / "XC1.ogg", tone(0.5), RATE)
    pd.DataFrame([row("aaa", "XC1.ogg")]).to_csv(tmp_path / "train_metadata.csv", index=False)
    ts = load_training_set(tmp_path)
    assert ts.clips.loc[0, "filename"] == "aaa/XC1.ogg"
    assert ts.clips.loc[0, "path"] == str(tmp_path / "train_short_audio" / "aaa" / "XC1.ogg")


def test_folder_layout_from_synthetic_files(tmp_path: Path) -> None:
    audio.write_audio(tmp_path / "robin" / "r1.wav", tone(1.0), RATE)
    audio.write_audio(tmp_path / "robin" / "deeper" / "r2.flac", tone(0.5), RATE)
    audio.write_audio(tmp_path / "wren" / "w1.ogg", tone(0.7), RATE)
    audio.write_audio(tmp_path / "test_soundscapes" / "long.ogg", tone(2.0), RATE)
    audio.write_audio(tmp_path / ".hidden" / "x.wav", tone(0.2), RATE)
    (tmp_path / "robin" / "notes.txt").write_text("not audio")
    ts = load_training_set(tmp_path)
    assert ts.layout == "folders" and ts.labels == ["robin", "wren"]
    assert sorted(ts.clips["filename"]) == ["robin/deeper/r2.flac", "robin/r1.wav", "wren/w1.ogg"]
    assert ts.clips.set_index("filename").loc["robin/deeper/r2.flac", "primary_label"] == "robin"
    assert ts.soundscape_dir == tmp_path / "test_soundscapes"


def test_folder_layout_under_train_audio_only(tmp_path: Path) -> None:
    audio.write_audio(tmp_path / "train_audio" / "robin" / "r1.wav", tone(0.5), RATE)
    ts = load_training_set(tmp_path)
    assert ts.labels == ["robin"] and ts.clips.loc[0, "filename"] == "robin/r1.wav"


def test_folder_layout_from_real_focal_recordings(real_data: Path) -> None:
    ts = load_training_set(real_data / "focal")
    assert ts.layout == "folders" and ts.problems == []
    assert ts.labels == ["benfin1", "eurstp1", "gretit1"]
    counts = ts.clips["primary_label"].value_counts()
    assert counts.to_dict() == {"gretit1": 20, "benfin1": 2, "eurstp1": 2}
    stereo = ts.clips.set_index("filename").loc["eurstp1/XC663885.flac"]
    assert stereo["channels"] == 2 and stereo["sample_rate"] == 44100
    assert stereo["duration_s"] == pytest.approx(15.381, abs=0.01)
    assert set(ts.clips["sample_rate"]) == {22050, 32000, 44100}
    dataset = ClipDataset([stereo["path"]], np.ones((1, 3)), sample_rate=32000,
                          clip_samples=32000 * 5, train=False)
    clip = dataset[0]["audio"]
    assert clip.shape == (160000,) and clip.dtype == torch.float32  # stereo -> mono
    assert float(clip.abs().max()) > 0.0


# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def broken_set(tmp_path: Path) -> Path:
    files = {"aaa/good1.wav": 1.0, "aaa/good2.wav": 1.0, "bbb/good3.wav": 1.0, "bbb/dupe.wav": 1.0}
    rows = [
        row("aaa", "aaa/good1.wav"),                      # row 2: fine
        row("aaa", "aaa/missing.wav"),                    # row 3: missing_file
        row("aaa", "aaa/garbage.ogg"),                    # row 4: unreadable_audio
        row("bbb", "bbb/good3.wav", "['zzz']"),           # row 5: unknown_secondary_label
        row("bbb", "bbb/dupe.wav", "aaa, bbb"),           # row 6: malformed_secondary_labels
        row("bbb", "bbb/dupe.wav"),                       # row 7: duplicate_row
        row("aaa", "aaa/good2.wav", "[]", "great"),      # row 8: bad_rating
        row("", "aaa/good1.wav"),                         # row 9: empty_label (+ duplicate)
        row("aaa", "aaa/good2.wav", "[]", 7),             # row 10: bad_rating (+ duplicate)
    ]
    root = write_birdclef(tmp_path, rows, files)
    (root / "train_audio" / "aaa" / "garbage.ogg").write_bytes(b"this is not an ogg file" * 20)
    return root


def test_every_problem_is_reported_at_once_with_its_row(broken_set: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_training_set(broken_set)
    problems = caught.value.problems
    by_kind = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    assert set(by_kind) == {"missing_file", "unreadable_audio", "unknown_secondary_label",
                            "malformed_secondary_labels", "duplicate_row", "bad_rating",
                            "empty_label"}
    assert [p.where for p in by_kind["missing_file"]] == ["train_metadata.csv row 3"]
    assert "aaa/missing.wav" in by_kind["missing_file"][0].message
    assert by_kind["unreadable_audio"][0].where == "train_metadata.csv row 4"
    assert "garbage.ogg" in by_kind["unreadable_audio"][0].message
    assert by_kind["unknown_secondary_label"][0].where == "train_metadata.csv row 5"
    assert "zzz" in by_kind["unknown_secondary_label"][0].message
    assert by_kind["malformed_secondary_labels"][0].where == "train_metadata.csv row 6"
    assert [p.where for p in by_kind["duplicate_row"]] == [
        "train_metadata.csv row 7", "train_metadata.csv row 9", "train_metadata.csv row 10"]
    assert "first at row 6" in by_kind["duplicate_row"][0].message
    assert [p.where for p in by_kind["bad_rating"]] == ["train_metadata.csv row 8",
                                                        "train_metadata.csv row 10"]
    assert by_kind["empty_label"][0].where == "train_metadata.csv row 9"
    text = str(caught.value)
    assert f"{len(problems)} problem(s)" in text
    assert all(str(problem) in text for problem in problems)
    assert str(problems[0]) == f"{problems[0].where}: {problems[0].message}"


def test_drop_keeps_the_good_rows(broken_set: Path) -> None:
    ts = load_training_set(broken_set, on_problem="drop")
    assert list(ts.clips["filename"]) == ["aaa/good1.wav", "bbb/good3.wav"]
    assert ts.clips["ok"].all() and ts.labels == ["aaa", "bbb"]
    # An unknown secondary label is removed from its clip; the clip itself is usable.
    assert ts.clips.loc[1, "secondary_labels"] == []
    assert {p.kind for p in ts.problems} >= {"missing_file", "unknown_secondary_label"}


@pytest.mark.parametrize("bad_row", [2, 4])
def test_a_metadata_row_with_extra_fields_is_a_problem_and_the_others_read_as_written(
    tmp_path: Path, bad_row: int
) -> None:
    # pandas turned a first ragged row's leading fields into an index, shifting every value one
    # column (filename "4.0", rating "more"), and stopped the whole read on a later one.
    files = {"aaa/a1.wav": 1.0, "aaa/a2.wav": 1.0, "bbb/b1.wav": 1.0, "bbb/b2.wav": 1.0}
    root = write_birdclef(tmp_path, [row("aaa", "aaa/a1.wav"), row("aaa", "aaa/a2.wav"),
                                     row("bbb", "bbb/b1.wav"), row("bbb", "bbb/b2.wav")], files)
    metadata = root / "train_metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[bad_row - 1] += ",extra,more"
    metadata.write_text("\n".join(lines) + "\n")

    with pytest.raises(DatasetError) as caught:
        load_training_set(root)
    assert [(p.where, p.kind) for p in caught.value.problems] == [
        (f"train_metadata.csv row {bad_row}", "malformed_row")]
    assert caught.value.problems[0].message == (
        "the row has 6 fields, expected 4 (primary_label, secondary_labels, rating, filename)")
    kept = load_training_set(root, on_problem="drop")
    wanted = [name for number, name in enumerate(files, start=2) if number != bad_row]
    assert list(kept.clips["filename"]) == wanted
    assert list(kept.clips["rating"]) == [4.0] * 3 and kept.labels == ["aaa", "bbb"]


def test_keep_returns_every_row_flagged(broken_set: Path) -> None:
    ts = load_training_set(broken_set, on_problem="keep")
    assert len(ts.clips) == 9
    assert list(ts.clips["ok"]) == [True, False, False, True, False, False, False, False, False]
    assert np.isnan(ts.clips.loc[1, "duration_s"]) and ts.clips.loc[0, "duration_s"] > 0
    assert ts.clips.loc[3, "secondary_labels"] == ["zzz"]  # kept as found


@pytest.mark.parametrize("mode", ["raise", "drop", "keep"])
def test_missing_required_column_raises_in_every_mode(tmp_path: Path, mode: str) -> None:
    pd.DataFrame([{"label": "aaa", "file": "aaa/a.wav"}]).to_csv(tmp_path / "train_metadata.csv",
                                                                 index=False)
    (tmp_path / "train_audio").mkdir()
    with pytest.raises(DatasetError) as caught:
        load_training_set(tmp_path, on_problem=mode)
    kinds = [(p.kind, p.where) for p in caught.value.problems]
    assert kinds == [("missing_column", str(tmp_path / "train_metadata.csv"))] * 2
    assert "'primary_label'" in str(caught.value) and "'filename'" in str(caught.value)


def test_set_level_problems_name_the_cause(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="training set folder not found"):
        load_training_set(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no audio files") as caught:
        load_training_set(tmp_path / "empty")
    assert caught.value.problems[0].kind == "empty_dataset"
    pd.DataFrame([row("aaa", "aaa/a.wav")]).to_csv(tmp_path / "train_metadata.csv", index=False)
    with pytest.raises(DatasetError, match="train_audio") as caught:
        load_training_set(tmp_path)
    assert caught.value.problems[0].kind == "missing_audio_dir"


def test_a_class_whose_every_clip_has_a_problem_is_named_in_every_mode(tmp_path: Path) -> None:
    # Dropping ccc's only clip (a malformed secondary label) used to leave a 2-label model from a
    # 3-class set with no word about ccc.
    files = {"aaa/a1.wav": 1.0, "aaa/a2.wav": 1.0, "bbb/b1.wav": 1.0, "bbb/b2.wav": 1.0, "ccc/c1.wav": 1.0}
    root = write_birdclef(tmp_path, [row("aaa", "aaa/a1.wav"), row("aaa", "aaa/a2.wav"),
                                     row("bbb", "bbb/b1.wav", "['ccc']"), row("bbb", "bbb/b2.wav"),
                                     row("ccc", "ccc/c1.wav", "['aaa'")], files)
    expected = ("train_metadata.csv", "class_without_clips")
    with pytest.raises(DatasetError) as caught:
        load_training_set(root)
    assert expected in [(p.where, p.kind) for p in caught.value.problems]
    kept = load_training_set(root, on_problem="keep")
    assert kept.labels == ["aaa", "bbb", "ccc"]
    dropped = load_training_set(root, on_problem="drop")
    assert dropped.labels == ["aaa", "bbb"]  # a class without a clip cannot be learned: left out...
    [problem] = [p for p in dropped.problems if p.kind == "class_without_clips"]
    assert (problem.where, problem.kind) == expected  # ...and said so (training prints every problem)
    assert problem.message == (
        "class ccc has no usable clip (every clip of it has a problem: row 6); a model trained on "
        "this set leaves ccc out; 1 clip(s) name it as a secondary label")
    assert [p.kind for p in kept.problems].count("class_without_clips") == 1


def test_a_class_folder_whose_every_file_is_unreadable_is_named(tmp_path: Path) -> None:
    for label in ("robin", "wren"):
        audio.write_audio(tmp_path / label / "1.wav", tone(0.5), RATE)
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "hoot.ogg").write_bytes(b"not audio" * 50)
    ts = load_training_set(tmp_path, on_problem="drop")
    assert ts.labels == ["robin", "wren"]
    [problem] = [p for p in ts.problems if p.kind == "class_without_clips"]
    assert problem.where == str(tmp_path / "owl")
    assert problem.message.startswith("class owl has no usable clip (every clip of it has a problem: "
                                      "hoot.ogg)")


def test_an_empty_class_folder_is_a_problem(tmp_path: Path) -> None:
    for label in ("robin", "wren"):
        audio.write_audio(tmp_path / label / "1.wav", tone(0.5), RATE)
    (tmp_path / "owl").mkdir()
    (tmp_path / "owl" / "notes.txt").write_text("heard at dusk")
    (tmp_path / "lark").mkdir()
    with pytest.raises(DatasetError) as caught:
        load_training_set(tmp_path)
    assert [(p.where, p.kind) for p in caught.value.problems] == [
        (str(tmp_path / "lark"), "empty_class_folder"), (str(tmp_path / "owl"), "empty_class_folder")]
    assert "class folder owl holds no audio files" in caught.value.problems[1].message
    ts = load_training_set(tmp_path, on_problem="drop")
    assert ts.labels == ["robin", "wren"] and len(ts.problems) == 2


@pytest.mark.parametrize("filename", ["../../outside.wav", "aaa/../../../outside.wav", "ABSOLUTE"])
def test_a_filename_leading_out_of_the_audio_folder_is_refused(tmp_path: Path, filename: str) -> None:
    # It was followed: an audio file outside the set passed data check and was trained on.
    outside = tmp_path / "outside.wav"
    audio.write_audio(outside, tone(0.5), RATE)
    filename = str(outside) if filename == "ABSOLUTE" else filename
    files = {"aaa/a1.wav": 1.0, "aaa/a2.wav": 1.0, "bbb/b1.wav": 1.0}
    root = write_birdclef(tmp_path / "set", [row("aaa", "aaa/a1.wav"), row("aaa", "aaa/a2.wav"),
                                             row("bbb", "bbb/b1.wav"), row("bbb", filename)], files)
    assert (root / "train_audio" / filename).resolve() == outside.resolve()

    with pytest.raises(DatasetError) as caught:
        load_training_set(root)
    [problem] = caught.value.problems
    assert (problem.where, problem.kind) == ("train_metadata.csv row 5", "path_outside_audio_dir")
    assert problem.message.startswith(f"filename {filename} leads outside train_audio/")
    ts = load_training_set(root, on_problem="drop")
    assert str(outside) not in set(ts.clips["path"]) and len(ts.clips) == 3


def test_drop_with_nothing_usable_raises(tmp_path: Path) -> None:
    root = write_birdclef(tmp_path, [row("aaa", "aaa/missing.wav")])
    (root / "train_audio").mkdir()
    with pytest.raises(DatasetError, match="no usable clips"):
        load_training_set(root, on_problem="drop")


def test_folder_layout_reports_unlabelled_and_unreadable_files(tmp_path: Path) -> None:
    audio.write_audio(tmp_path / "robin" / "r1.wav", tone(0.5), RATE)
    audio.write_audio(tmp_path / "loose.wav", tone(0.5), RATE)
    (tmp_path / "robin" / "empty.flac").write_bytes(b"")
    with pytest.raises(DatasetError) as caught:
        load_training_set(tmp_path)
    found = {(p.kind, Path(p.where).name) for p in caught.value.problems}
    assert found == {("unlabelled_file", "loose.wav"), ("unreadable_audio", "empty.flac")}
    assert list(load_training_set(tmp_path, on_problem="drop").clips["filename"]) == ["robin/r1.wav"]


def test_scored_labels_are_checked(birdclef_set: Path) -> None:
    (birdclef_set / "scored_birds.json").write_text(json.dumps(["aaa", "nope"]))
    with pytest.raises(DatasetError, match="nope") as caught:
        load_training_set(birdclef_set)
    assert caught.value.problems[0].kind == "unknown_scored_label"
    assert load_training_set(birdclef_set, on_problem="drop").scored_labels == ["aaa"]
    (birdclef_set / "scored_birds.json").write_text("{not json")
    with pytest.raises(DatasetError, match="scored_birds.json"):
        load_training_set(birdclef_set, on_problem="keep")


def test_without_audio_check_only_existence_is_tested(broken_set: Path) -> None:
    ts = load_training_set(broken_set, on_problem="keep", check_audio=False)
    kinds = Counter(p.kind for p in ts.problems)
    assert kinds["missing_file"] == 1 and "unreadable_audio" not in kinds
    assert ts.clips["duration_s"].isna().all() and ts.clips["sample_rate"].isna().all()


def test_progress_reports_every_header(birdclef_set: Path) -> None:
    calls: list[tuple[int, int]] = []
    load_training_set(birdclef_set, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_bad_on_problem_value() -> None:
    with pytest.raises(ValueError, match="on_problem"):
        load_training_set(".", on_problem="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------


def clips_of(primaries: list[str], secondaries: list[list[str]] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"primary_label": primaries,
                         "secondary_labels": secondaries or [[] for _ in primaries]})


def test_encode_targets_primary_and_secondary() -> None:
    """Label smoothing is the loss's (tests/test_train.py), never the targets'."""
    clips = clips_of(["a", "b", "c"], [["b", "zzz"], ["b", "a"], []])
    targets = encode_targets(clips, ["a", "b", "c"], secondary_weight=0.3)
    assert targets.dtype == np.float32 and targets.shape == (3, 3)
    np.testing.assert_allclose(targets, [[1, 0.3, 0], [0.3, 1, 0], [0, 0, 1]])


def test_encode_targets_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="not in the label list: q"):
        encode_targets(clips_of(["q"]), ["a"])
    with pytest.raises(ValueError, match="secondary_weight"):
        encode_targets(clips_of(["a"]), ["a"], secondary_weight=1.5)
    with pytest.raises(ValueError, match="must be a list of labels"):
        encode_targets(clips_of(["a"], ["['a']"]), ["a"])


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def long_tail_clips() -> pd.DataFrame:
    counts = {"common": 50, "mid": 20, "few": 6, "pair": 2, "triple": 3, "solo": 1, "solo2": 1}
    return clips_of([label for label, n in counts.items() for _ in range(n)])


def test_stratified_split_invariants() -> None:
    clips = long_tail_clips()
    train_idx, val_idx = stratified_split(clips, 0.2, seed=3)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert sorted(np.concatenate([train_idx, val_idx])) == list(range(len(clips)))
    assert len(val_idx) == round(0.2 * len(clips))
    labels = clips["primary_label"].to_numpy()
    val_counts = Counter(labels[val_idx])
    assert val_counts["common"] == 10 and val_counts["mid"] == 4 and val_counts["few"] in (1, 2)
    assert {"solo", "solo2"} <= set(labels[train_idx]) - set(labels[val_idx])
    assert set(labels[train_idx]) == set(labels)  # every class keeps training clips
    again = stratified_split(clips, 0.2, seed=3)
    assert np.array_equal(again[1], val_idx)
    assert not np.array_equal(stratified_split(clips, 0.2, seed=4)[1], val_idx)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(clips, 1.0, seed=0)


def test_folds_keep_every_class_in_training_and_stratify() -> None:
    clips = long_tail_clips()
    labels = clips["primary_label"].to_numpy()
    fold_of = assign_folds(clips, 5, seed=0)
    assert set(fold_of[labels == "solo"]) == {-1} and set(fold_of[labels == "solo2"]) == {-1}
    assert (fold_of[labels != "solo"][labels[labels != "solo"] != "solo2"] >= 0).all()
    assert np.bincount(fold_of[labels == "common"]).tolist() == [10] * 5
    assert np.bincount(fold_of[labels == "mid"]).tolist() == [4] * 5
    assert len(set(fold_of[labels == "triple"])) == 3  # a small class spreads over distinct folds
    sizes = np.bincount(fold_of[fold_of >= 0])
    assert sizes.max() - sizes.min() <= 2
    covered = []
    for fold in range(5):
        train_idx, val_idx = fold_split(clips, 5, fold, seed=0)
        assert len(np.intersect1d(train_idx, val_idx)) == 0
        assert len(train_idx) + len(val_idx) == len(clips)
        assert set(labels[train_idx]) == set(labels)
        covered.extend(val_idx)
    assert sorted(covered) == sorted(np.flatnonzero(fold_of >= 0))
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        fold_split(clips, 5, 5, seed=0)


# ----------------------------------------------------------------------------------------------
# Imbalance
# ----------------------------------------------------------------------------------------------


def test_oversample_brings_rare_classes_to_min_count() -> None:
    labels = np.array(["a"] * 10 + ["b"] * 3 + ["c"] + ["d"] * 2)
    train_idx = np.array([15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # one "d", no "c"
    result = oversample(train_idx, labels[train_idx], min_count=7, seed=0)
    counts = Counter(labels[result])
    assert counts == {"a": 10, "b": 7, "d": 7}  # "c" is not selected, so it is not added
    assert np.array_equal(result[: len(train_idx)], train_idx)
    assert set(result) == set(train_idx)  # only selected clips are repeated
    b_repeats = Counter(i for i in result if labels[i] == "b")
    assert sorted(b_repeats.values()) == [2, 2, 3]  # repeated as evenly as possible
    assert np.array_equal(oversample(train_idx, labels[train_idx], 0, seed=0), train_idx)
    with pytest.raises(ValueError, match="16 entries for 14 indices"):
        oversample(train_idx, labels, 7, seed=0)


def test_class_balanced_weights_values() -> None:
    weights = class_balanced_weights(["a", "a", "a", "b"], power=1.0)
    np.testing.assert_allclose(weights, np.array([1 / 3, 1 / 3, 1 / 3, 1.0]) / 0.5)
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(class_balanced_weights(["a", "a", "b"], power=0.0), 1.0)
    with pytest.raises(ValueError, match="power"):
        class_balanced_weights(["a"], power=-1)


def test_weighted_sampler_draws_rare_classes_more_than_uniform() -> None:
    labels = ["common"] * 95 + ["rare"] * 5
    sampler = make_weighted_sampler(labels, power=1.0, num_samples=4000, seed=0)
    drawn = [labels[i] for i in sampler]
    rare_share = drawn.count("rare") / len(drawn)
    assert len(drawn) == 4000
    assert 0.45 < rare_share < 0.55  # power 1: classes equally likely (uniform would give 0.05)
    half = make_weighted_sampler(labels, power=0.5, num_samples=4000, seed=0)
    half_share = [labels[i] for i in half].count("rare") / 4000
    assert 0.1 < half_share < rare_share
    again = make_weighted_sampler(labels, power=1.0, num_samples=4000, seed=0)
    assert list(again) == list(make_weighted_sampler(labels, 1.0, 4000, seed=0))


# ----------------------------------------------------------------------------------------------
# Cache and clips
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def counted_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_load = audio.load

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load", counting)
    return calls


def test_audio_cache_decodes_once(tmp_path: Path, counted_load: list[str]) -> None:
    source = tmp_path / "clip.flac"
    audio.write_audio(source, tone(1.0, rate=22050), 22050)
    cache = AudioCache(tmp_path / "cache", sample_rate=RATE)
    first = cache.get(source)
    second = cache.get(source)
    assert len(counted_load) == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    assert first.dtype == second.dtype == np.float32 and len(first) == RATE
    np.testing.assert_array_equal(first, second)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.path_for(source).name]
    os.utime(source, ns=(0, 10**9))  # a changed file is a new key
    cache.get(source)
    assert len(counted_load) == 2
    assert AudioCache(tmp_path / "cache", sample_rate=22050).path_for(source) != cache.path_for(source)


def test_audio_cache_concurrent_writers_leave_one_file(tmp_path: Path) -> None:
    source = tmp_path / "clip.wav"
    audio.write_audio(source, tone(0.5), RATE)
    caches = [AudioCache(tmp_path / "cache", RATE) for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda cache: np.array(cache.get(source)), caches))
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    assert len(list((tmp_path / "cache").iterdir())) == 1  # no temporary files left behind
    with pytest.raises(audio.AudioFileNotFoundError, match="nothing.wav"):
        caches[0].get(tmp_path / "nothing.wav")


@pytest.fixture
def ramp_file(tmp_path: Path) -> Path:
    path = tmp_path / "ramp.wav"
    audio.write_audio(path, ramp(3 * RATE // 2), RATE)  # 1.5 s: every sample value distinct
    return path


def test_clip_dataset_items(ramp_file: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.wav"
    audio.write_audio(short, tone(0.25), RATE)
    targets = np.array([[1, 0], [0, 1]], dtype=np.float32)
    dataset = ClipDataset([str(ramp_file), str(short)], targets, RATE, RATE, train=False,
                          weights=np.array([0.5, 2.0]))
    item = dataset[1]
    assert set(item) == {"audio", "target", "weight", "index"}
    assert item["audio"].shape == (RATE,) and item["audio"].dtype == torch.float32
    assert torch.equal(item["target"], torch.tensor([0.0, 1.0]))
    assert item["weight"].shape == () and float(item["weight"]) == 2.0 and item["index"] == 1
    assert float(item["audio"][RATE // 4 :].abs().max()) == 0.0  # short clip zero-padded
    assert float(item["audio"][: RATE // 4].abs().max()) > 0.2
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["audio"].shape == (2, RATE) and batch["target"].shape == (2, 2)
    with pytest.raises(ValueError, match="targets must have shape"):
        ClipDataset([str(ramp_file)], targets, RATE, RATE, train=False)


def test_validation_crop_is_the_deterministic_start(ramp_file: Path, tmp_path: Path) -> None:
    expected = audio.load(ramp_file)[:CLIP]
    cache = AudioCache(tmp_path / "cache", RATE)
    for source in (None, cache):
        dataset = ClipDataset([str(ramp_file)], np.ones((1, 1)), RATE, CLIP, train=False,
                              cache=source, waveform_transform=lambda x, sr: x * 0)
        first, second = dataset[0]["audio"], dataset[0]["audio"]
        assert torch.equal(first, second)
        np.testing.assert_allclose(first.numpy(), expected, atol=1e-6)  # no transform either


@pytest.mark.parametrize("use_cache", [False, True])
def test_training_crops_vary_and_are_transformed(ramp_file: Path, tmp_path: Path,
                                                 use_cache: bool) -> None:
    full = audio.load(ramp_file)
    cache = AudioCache(tmp_path / "cache", RATE) if use_cache else None
    dataset = ClipDataset([str(ramp_file)], np.ones((1, 1)), RATE, CLIP, train=True, cache=cache,
                          waveform_transform=lambda x, sr: x * 2.0)
    starts = set()
    for _ in range(8):
        clip = dataset[0]["audio"].numpy() / 2.0
        start = int(np.argmin(np.abs(full - clip[0])))
        np.testing.assert_allclose(clip, full[start : start + CLIP], atol=1e-6)
        starts.add(start)
    assert len(starts) >= 6


def test_background_only_items_replace_a_share_of_training_clips(ramp_file: Path) -> None:
    background = np.full(CLIP, 0.125, dtype=np.float32)  # a value the ramp never takes
    dataset = ClipDataset([str(ramp_file)], np.ones((1, 2)), RATE, CLIP, train=True,
                          waveform_transform=lambda x, sr: x * 2.0, seed=3,
                          background_source=lambda n, rng: background[:n],
                          background_only_p=0.3)
    items = [dataset[0] for _ in range(400)]
    negatives = [item for item in items if float(item["target"].sum()) == 0.0]
    assert 0.2 < len(negatives) / len(items) < 0.4
    for item in negatives:  # background, transformed like any clip, with every target 0
        np.testing.assert_allclose(item["audio"].numpy(), 0.25)
    positives = [item for item in items if float(item["target"].sum()) > 0.0]
    assert all(torch.equal(item["target"], torch.ones(2)) for item in positives)
    assert all(not np.allclose(item["audio"].numpy(), 0.25) for item in positives)
    assert torch.equal(torch.from_numpy(dataset.targets), torch.ones((1, 2)))  # targets untouched


def test_validation_never_draws_background_only_items(ramp_file: Path) -> None:
    dataset = ClipDataset([str(ramp_file)], np.ones((1, 2)), RATE, CLIP, train=False,
                          background_source=lambda n, rng: np.zeros(n, np.float32),
                          background_only_p=0.9)
    assert all(float(dataset[0]["target"].sum()) == 2.0 for _ in range(50))
    with pytest.raises(ValueError, match="background_only_p"):
        ClipDataset([str(ramp_file)], np.ones((1, 2)), RATE, CLIP, train=True, background_only_p=1.0)


def test_workers_and_epochs_draw_different_crops(ramp_file: Path) -> None:
    dataset = ClipDataset([str(ramp_file)] * 4, np.ones((4, 1)), RATE, RATE // 4, train=True)
    loader = DataLoader(dataset, batch_size=1, num_workers=2)
    epochs = [[float(batch["audio"][0, 0]) for batch in loader] for _ in range(2)]
    first_samples = epochs[0] + epochs[1]
    assert len(set(first_samples)) == len(first_samples)


def one_second_config():
    return build_config(overrides={"audio.sample_rate": RATE, "audio.clip_s": 1.0, "frontend.fmax": 7000.0})


def test_soundscape_windows_cut_the_labelled_windows_of_the_soundscapes(birdclef_set: Path) -> None:
    recording = ramp(3 * RATE)
    audio.write_audio(birdclef_set / "test_soundscapes" / "site7.wav", recording, RATE)
    (birdclef_set / "test_labels.csv").write_text(
        "row_id,audio_id,seconds,birds\n"
        "site7_1,site7,1,aaa ccc\n"
        "site7_3,site7,3,nocall\n"
        "gone_1,gone,1,bbb\n"  # a recording that is not in test_soundscapes is skipped
    )
    training_set = load_training_set(birdclef_set)
    cache = AudioCache(birdclef_set / "cache", RATE)
    windows = soundscape_windows(training_set, ["aaa", "bbb", "ccc"], one_second_config(), cache)
    assert windows is not None and len(windows) == 2
    first, last = windows[0], windows[1]
    np.testing.assert_array_equal(first["target"].numpy(), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(last["target"].numpy(), [0.0, 0.0, 0.0])
    # Each window is the clip_s seconds ending at `seconds` (16-bit WAV: values within 1/32768).
    np.testing.assert_allclose(first["audio"].numpy(), recording[:RATE], atol=1e-4)
    np.testing.assert_allclose(last["audio"].numpy(), recording[2 * RATE:], atol=1e-4)
    assert first["weight"] == 1.0 and last["index"] == 1


def test_soundscape_windows_are_none_without_labelled_soundscapes(tmp_path: Path) -> None:
    root = write_birdclef(tmp_path, [row("aaa", "aaa/a.wav")], {"aaa/a.wav": 0.5})
    cache = AudioCache(tmp_path / "cache", RATE)
    assert soundscape_windows(load_training_set(root), ["aaa"], one_second_config(), cache) is None


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def test_summarize_and_render(broken_set: Path) -> None:
    ts = load_training_set(broken_set, on_problem="keep")
    summary = summarize(ts)
    assert summary.n_classes == 2 and summary.n_clips == 9
    assert summary.clips_per_class == [("aaa", 5), ("bbb", 3)]
    assert summary.sample_rates == {RATE: 4}  # readable files, each once (duplicates excluded)
    assert summary.duration_min_s == pytest.approx(1.0) == summary.duration_max_s
    assert summary.total_hours == pytest.approx(4 / 3600)
    console = Console(record=True, width=400)
    render_summary(summary, console)
    text = console.export_text()
    assert "audio: 0.1 min" in text
    assert "aaa" in text and "bbb" in text and "16000 Hz: 4" in text
    assert f"{len(summary.problems)} problem(s)" in text
    for problem in summary.problems:
        assert str(problem) in text
    assert "█" in text


def test_render_long_tail_shows_top_and_bottom() -> None:
    per_class = [(f"species{i:02d}", 100 - i) for i in range(40)]
    summary = DatasetSummary(
        root="/data", layout="folders", n_classes=40, n_clips=sum(n for _, n in per_class),
        clips_per_class=per_class, total_hours=1.5, sample_rates={32000: 3250},
        duration_min_s=1.0, duration_median_s=5.0, duration_max_s=60.0, problems=[],
    )
    console = Console(record=True, width=120)
    render_summary(summary, console)
    text = console.export_text()
    assert "species00" in text and "species14" in text and "species39" in text
    assert "species15" not in text and "species29" not in text
    assert "15 more classes" in text and "No problems found" in text


def test_problem_and_error_formatting() -> None:
    problem = Problem("train_metadata.csv row 4", "bad_rating", "rating 'x' is not a number")
    assert str(problem) == "train_metadata.csv row 4: rating 'x' is not a number"
    error = DatasetError([problem])
    assert isinstance(error, ValueError) and error.problems == [problem]
    assert str(problem) in str(error)


def test_training_set_is_a_plain_dataclass(birdclef_set: Path) -> None:
    ts = load_training_set(birdclef_set)
    assert isinstance(ts, TrainingSet) and ts.root == birdclef_set
    assert load_training_set(birdclef_set / "train_metadata.csv").root == birdclef_set
