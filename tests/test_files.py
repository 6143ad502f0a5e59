"""The one atomic write, the clean-up of its stale temporaries, and usable cores (dawnchorus.io.files)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dawnchorus.errors import OutputError
from dawnchorus.io import files

DISK_FULL = "the disk is full (no space left on device)"

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


def test_a_full_disk_is_one_error_naming_the_file_and_the_previous_version_stays(tmp_path: Path) -> None:
    target = tmp_path / "parts" / "rec.parquet"
    target.parent.mkdir()
    target.write_text("previous version")

    def half_then_disk_full(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OutputError) as raised:
        files.atomic_write(target, half_then_disk_full)
    assert str(raised.value) == f"{target}: cannot write this file: {DISK_FULL}"
    assert target.read_text() == "previous version"
    assert [p.name for p in target.parent.iterdir()] == ["rec.parquet"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_model_file_written_to_a_full_disk_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save to a path says only "file write failed"; the model file's writer goes through a file
    object, so a full disk (here /dev/full, where the temporary is opened) is named as such."""
    from dawnchorus.models import modelfile

    real_open = open
    monkeypatch.setattr(modelfile, "open", lambda path, mode: real_open("/dev/full", mode), raising=False)
    target = tmp_path / "run" / "model.pt"
    with pytest.raises(OutputError) as raised:
        _tiny_model_file(target)
    assert str(raised.value) == f"{target}: cannot write this file: {DISK_FULL}"
    assert list(target.parent.iterdir()) == []


def test_a_file_where_a_folder_belongs_is_named(tmp_path: Path) -> None:
    blocking = tmp_path / "results"
    blocking.write_text("a file")
    with pytest.raises(OutputError) as raised:
        files.atomic_write(blocking / "evaluation.json", lambda tmp: tmp.write_text("{}"))
    target = blocking / "evaluation.json"
    assert str(raised.value) == f"{target}: cannot write this file: {blocking} is a file, not a folder"
    with pytest.raises(OutputError, match="cannot write this file: a folder of that name exists"):
        files.atomic_write(tmp_path, lambda tmp: tmp.write_text("{}"))


def test_output_folder_refuses_a_file_and_a_file_above_it(tmp_path: Path) -> None:
    existing = tmp_path / "predictions"
    existing.write_text("a file")
    with pytest.raises(OutputError) as raised:
        files.output_folder(existing)
    assert str(raised.value) == f"{existing}: cannot be the output folder: it is a file"
    with pytest.raises(OutputError) as raised:
        files.output_folder(existing / "run", "run folder")
    run = existing / "run"
    assert str(raised.value) == f"{run}: cannot create the run folder: {existing} is a file, not a folder"
    assert files.output_folder(tmp_path / "a" / "b").is_dir()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write in any folder")
def test_output_folder_refuses_a_folder_it_cannot_write_in(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError) as raised:
            files.output_folder(locked)
        assert str(raised.value) == f"{locked}: cannot write in the output folder: permission denied"
        with pytest.raises(OutputError) as raised:
            files.output_folder(locked / "run")
        assert str(raised.value).startswith(f"{locked / 'run'}: cannot create the output folder: permission")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux /sys, where nobody creates folders")
def test_output_folder_that_cannot_be_created_is_named() -> None:
    folder = Path("/sys/dawnchorus-test-output")
    with pytest.raises(OutputError) as raised:
        files.output_folder(folder)
    assert str(raised.value).startswith(f"{folder}: cannot create the output folder: permission denied")


def test_usable_cores_counts_the_cores_this_process_may_run_on() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert files.usable_cores() == expected >= 1


# ------------------------------------------------------------------ every writer's temporary


def _tiny_model_file(path: Path) -> Path:
    import torch

    from dawnchorus.config import build_config
    from dawnchorus.models.classifier import SpectrogramClassifier, build_model
    from dawnchorus.models.features import LogMel
    from dawnchorus.models.modelfile import save_model_file

    config = build_config({"model": {"backbone": "test_efficientnet", "pretrained": False}})
    torch.manual_seed(0)
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, 2)
    )
    return save_model_file(path, network, ["aaa", "bbb"], config)


def _write_outputs(folder: Path) -> None:
    import pandas as pd

    from dawnchorus.io import outputs

    table = pd.DataFrame({"file": ["a.wav"], "start_s": [0.0], "end_s": [5.0], "aaa": [0.9]})
    outputs.write_probabilities_csv(table, folder / "predictions.csv")
    outputs.write_probabilities_parquet(table, folder / "predictions.parquet")
    found = outputs.detections(table, ["aaa"], 0.5)
    outputs.write_raven_table(found, folder / "a.selections.txt")
    outputs.write_audacity_labels(found, folder / "a.txt")


def _write_model_file(folder: Path) -> None:
    _tiny_model_file(folder / "model.pt")


def _write_onnx(folder: Path) -> None:
    pytest.importorskip("onnx")
    from dawnchorus.inference.export import export_onnx
    from dawnchorus.models.modelfile import load_model

    model = load_model(_tiny_model_file(folder.parent / "model.pt"))
    export_onnx(model, folder / "model.onnx")


def _write_report(folder: Path) -> None:
    from dawnchorus.report.html import build_report

    _tiny_model_file(folder / "model.pt")
    build_report(folder)


def _write_audio_cache(folder: Path) -> None:
    import numpy as np
    import soundfile

    from dawnchorus.data.datasets import AudioCache

    recording = folder.parent / "call.wav"
    soundfile.write(recording, np.zeros(3200, dtype=np.float32), 32000)
    AudioCache(folder, sample_rate=16000).get(recording)


@pytest.mark.parametrize(
    "writer", [_write_outputs, _write_model_file, _write_onnx, _write_report, _write_audio_cache],
    ids=["outputs", "model_file", "onnx", "report", "audio_cache"],
)
def test_every_writers_temporary_is_recognised_and_cleaned(
    writer: Callable[[Path], None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each writer's temporary, left where a kill after the write (before the rename) would leave it,
    is removed by remove_stale_temporaries; the finished files are not."""
    folder = tmp_path / "out"
    folder.mkdir()
    leftovers: list[Path] = []
    real_replace = os.replace

    def replace_then_leave_the_temporary(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        shutil.copyfile(dst, src)  # what a process killed between writing and renaming leaves
        leftovers.append(Path(src))

    monkeypatch.setattr(os, "replace", replace_then_leave_the_temporary)
    writer(folder)
    monkeypatch.undo()
    ours = [path for path in leftovers if path.parent == folder]
    assert ours, "the writer wrote nothing through a rename into the folder"
    finished = {path for path in folder.iterdir() if path not in ours}
    assert files.remove_stale_temporaries(folder) == len(ours)
    assert {path for path in folder.iterdir()} == finished
    assert all(not files.is_temporary(path.name) for path in finished)
