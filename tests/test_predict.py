"""Prediction end to end: synth -> train (tiny) -> predict in every format -> evaluate; resume after
SIGKILL; bad recordings reported while good ones are predicted."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import dawnchorus
from dawnchorus import load_model
from dawnchorus.cli.app import app
from dawnchorus.config import (
    PredictSettings,
    build_config,
    build_predict_settings,
    load_config,
    load_predict_settings,
)
from dawnchorus.errors import AudioError, ConfigError
from dawnchorus.inference.run import predict_frame, run_prediction, run_tag, saved_windows_path
from dawnchorus.inference.windows import recording_key
from dawnchorus.io import outputs
from dawnchorus.io.annotations import read_audacity_labels, read_raven_table
from dawnchorus.io.audio import write_audio
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.run import train
from tests.conftest import (
    REPO,
    FirstSamples,
    Interrupted,
    kill_after_parts,
    synthetic_audio,
    write_model_file,
)

runner = CliRunner()
SOUNDSCAPE_S = 60.0
WINDOWS_PER_SOUNDSCAPE = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    make_dataset(data, species=4, soundscapes=3, seed=3, clips_per_species=(3, 8), workers=1)
    config = build_config(
        {
            "model": {"backbone": "test_efficientnet", "pretrained": False},
            "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "min_steps_per_epoch": 0},
        }
    )
    result = train(data, root / "run", config, progress_bar=False)
    return {"data": data, "model": result.model_path, "root": root}


def test_predict_every_format_then_evaluate(trained: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(trained["model"])
    soundscapes = trained["data"] / "test_soundscapes"
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(trained["model"]), str(soundscapes), "--out", str(out), "--threshold", "0.3"]
    )
    assert result.exit_code == 0, result.output
    recordings = sorted(soundscapes.glob("*.ogg"))
    expected_rows = WINDOWS_PER_SOUNDSCAPE * len(recordings)

    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == ["file", "start_s", "end_s", *model.labels]
    assert len(table) == expected_rows
    for _, group in table.groupby("file"):
        np.testing.assert_allclose(group["start_s"], np.arange(0, SOUNDSCAPE_S, 5.0))
        np.testing.assert_allclose(group["end_s"], np.arange(5.0, SOUNDSCAPE_S + 5, 5.0))
    probabilities = table[model.labels].to_numpy()
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    parquet = pd.read_parquet(out / "predictions.parquet")
    np.testing.assert_allclose(parquet[model.labels].to_numpy(), probabilities, atol=1e-6)

    sub22 = pd.read_csv(out / "submission_2022.csv")
    scored = model.scored_labels or model.labels
    assert len(sub22) == expected_rows * len(scored)
    first = recordings[0].stem
    assert f"{first}_{scored[0]}_5" in set(sub22["row_id"])
    assert sub22["target"].dtype == bool
    sub23 = pd.read_csv(out / "submission_2023.csv")
    assert len(sub23) == expected_rows and f"{first}_60" in set(sub23["row_id"])

    detections = (table[model.labels] >= 0.3).to_numpy().sum()
    raven_rows = sum(len(read_raven_table(p)) for p in (out / "raven").glob("*.txt"))
    audacity_rows = sum(len(read_audacity_labels(p)) for p in (out / "audacity").glob("*.txt"))
    assert len(list((out / "raven").glob("*.txt"))) == len(recordings)
    assert raven_rows == audacity_rows == detections

    labels_csv = trained["data"] / "test_labels.csv"
    evaluation = runner.invoke(
        app,
        [
            "evaluate",
            str(out / "predictions.csv"),
            str(labels_csv),
            "--model",
            str(trained["model"]),
            "--json",
        ],
    )
    assert evaluation.exit_code == 0, evaluation.output
    scores = json.loads(evaluation.output)
    assert scores["n_windows"] == expected_rows
    for key in ("cmap_padded", "f1_macro_2022", "balanced_accuracy"):
        assert 0.0 <= scores[key] <= 1.0
    printed = runner.invoke(app, ["evaluate", str(out / "predictions.parquet"), str(labels_csv)])
    assert printed.exit_code == 0, printed.output


def test_python_api_predict_and_tune_thresholds(trained: dict[str, Path], tmp_path: Path) -> None:
    model = load_model(trained["model"])
    recording = sorted((trained["data"] / "test_soundscapes").glob("*.ogg"))[0]
    frame = dawnchorus.predict(model, [recording], hop_s=2.5)
    assert frame.index.names == ["file", "start_s", "end_s"]
    assert list(frame.columns) == model.labels
    assert len(frame) == 23  # 60 s at a 2.5 s hop: every window adds new audio

    tuned = tmp_path / "tuned.pt"
    result = runner.invoke(
        app, ["tune-thresholds", str(trained["model"]), str(trained["data"]), "--out", str(tuned)]
    )
    assert result.exit_code == 0, result.output
    reloaded = load_model(tuned)
    assert len(reloaded.thresholds["per_class"]) == len(model.labels)
    assert 0.0 < reloaded.thresholds["global"] < 1.0


def test_bad_recordings_are_named_and_good_ones_predicted(model_file: Path, tmp_path: Path) -> None:
    model_path = model_file
    folder = tmp_path / "recordings"
    rng = np.random.default_rng(0)
    for name in ("good_a.ogg", "good_b.flac", "nested/good_c.wav"):
        write_audio(folder / name, rng.uniform(-0.2, 0.2, 32000 * 12), 32000)
    (folder / "empty.ogg").write_bytes(b"")
    (folder / "notes.ogg").write_text("field notes, not audio\n" * 40)
    corrupt = folder / "corrupt.flac"
    write_audio(corrupt, rng.uniform(-0.2, 0.2, 32000 * 6), 32000)
    corrupt.write_bytes(bytes(64) + corrupt.read_bytes()[64:])

    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_path), str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output  # some recordings failed: listed, the others complete
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(Path(f).name for f in table["file"].unique()) == ["good_a.ogg", "good_b.flac", "good_c.wav"]
    assert len(table) == 3 * 3  # 12 s -> windows at 0, 5, 10
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(Path(f).name for f in errors["file"]) == ["corrupt.flac", "empty.ogg", "notes.ogg"]
    reasons = dict(zip(errors["file"].map(lambda f: Path(f).name), errors["error"], strict=True))
    assert "empty" in reasons["empty.ogg"]
    assert "not decodable" in reasons["notes.ogg"]
    output = "".join(result.output.split())  # rich may wrap long paths
    for name in ("corrupt.flac", "empty.ogg", "notes.ogg"):
        assert name in output


def test_a_run_in_which_every_recording_failed_never_exits_0(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    folder.mkdir()
    for name in ("a.wav", "b.flac"):
        (folder / name).write_text("not audio\n" * 20)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_file), str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "0 recordings predicted, 0 already complete, 2 failed" in result.stdout
    assert sorted(Path(f).name for f in pd.read_csv(out / "errors.csv")["file"]) == ["a.wav", "b.flac"]
    rerun = runner.invoke(app, ["predict", str(model_file), str(folder), "--out", str(out)])
    assert rerun.exit_code == 1  # failed recordings are tried again, and fail again


def test_a_broken_link_and_a_folder_that_cannot_be_listed_are_named_in_errors_csv(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "recordings"
    for name in ("site_a.wav", "nested/site_b.wav", "locked/site_c.wav"):
        write_audio(folder / name, synthetic_audio(6.0, seed=len(name)), 32000)
    moved_away = tmp_path / "elsewhere" / "site_d.wav"
    (folder / "site_d.wav").symlink_to(moved_away)  # the drive it pointed to is not mounted
    locked = folder / "locked"
    list_folder = os.scandir

    def permission_denied_in_locked(path: str | Path = ".") -> object:  # root reads any folder: a seam
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return list_folder(path)

    monkeypatch.setattr(os, "scandir", permission_denied_in_locked)
    out = tmp_path / "out"
    command = ["predict", str(model_file), str(folder), "--out", str(out), "--format", "csv"]
    result = runner.invoke(app, command)
    monkeypatch.undo()

    assert "Traceback" not in result.output
    assert result.exit_code == 1, result.output
    errors = pd.read_csv(out / "errors.csv")
    assert dict(zip(errors["file"], errors["error"], strict=True)) == {
        str(locked): "folder cannot be read (permission denied): its recordings were left out",
        str(folder / "site_d.wav"): f"broken symbolic link: its target {moved_away} does not exist",
    }
    assert f"failed: {folder / 'site_d.wav'}: broken symbolic link" in result.stderr
    assert f"failed: {locked}: folder cannot be read (permission denied)" in result.stderr
    table = pd.read_csv(out / "predictions.csv")
    predicted = [str(folder / "nested" / "site_b.wav"), str(folder / "site_a.wav")]
    assert sorted(table["file"].unique()) == predicted
    assert "2 recordings predicted, 0 already complete, 2 failed" in result.stdout


def test_python_predict_raises_on_a_broken_link_or_leaves_it_out(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "recordings"
    write_audio(folder / "site_a.wav", synthetic_audio(6.0, seed=0), 32000)
    (folder / "site_b.wav").symlink_to(tmp_path / "gone.wav")
    model = load_model(model_file)
    with pytest.raises(AudioError) as raised:
        dawnchorus.predict(model, folder)
    link, gone = folder / "site_b.wav", tmp_path / "gone.wav"
    assert str(raised.value) == f"{link}: broken symbolic link: its target {gone} does not exist"
    table = predict_frame(model, folder, raise_errors=False)
    assert table.index.get_level_values("file").unique().tolist() == [str(folder / "site_a.wav")]


def test_a_full_disk_stops_predict_with_one_line_and_a_rerun_resumes(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "recordings"
    for index in range(4):
        write_audio(folder / f"site{index}.wav", synthetic_audio(12.0, seed=index), 32000)
    command = ["predict", str(model_file), str(folder), "--format", "csv"]
    clean = tmp_path / "clean"
    assert runner.invoke(app, [*command, "--out", str(clean)]).exit_code == 0
    out = tmp_path / "out"
    parts = out / "parts"
    write_parquet = pd.DataFrame.to_parquet

    def disk_full_after_two_parts(table: pd.DataFrame, path: Path, *args: object, **kwargs: object) -> None:
        if len(list(parts.glob("*/*.parquet"))) >= 2:  # what pyarrow raises on a full disk
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left")
        write_parquet(table, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full_after_two_parts)
    result = runner.invoke(app, [*command, "--out", str(out)])
    monkeypatch.undo()

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {parts}{os.sep}")  # names the file it could not write
    assert "cannot write this file: the disk is full (no space left on device)" in lines[0]
    assert f"the recordings finished so far are kept in {out}" in lines[0]
    kept = sorted(path.name for path in parts_of(out).iterdir())
    assert len(kept) == 2 and all(name.endswith(".parquet") and not name.startswith(".") for name in kept)

    resumed = runner.invoke(app, [*command, "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "2 recordings predicted, 2 already complete, 0 failed" in resumed.stdout
    expected = pd.read_csv(clean / "predictions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), expected)


# --- a re-run into the same folder: parts are keyed by the model file and the settings ----------------


def outputs_of(out: Path) -> dict[str, bytes]:
    """Every file a run left in ``out`` but its parts, by path inside ``out``."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.relative_to(out).parts[0] != "parts"]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture
def rerun(model_file: Path, tmp_path: Path):
    """``rerun(out, *options)``: ``predict`` of a copy of the shared model (``tmp_path/model.pt``) on
    three recordings into ``out``; returns its summary line."""
    folder = tmp_path / "recordings"
    for index in range(3):
        write_audio(folder / f"site{index}.wav", synthetic_audio(12.0, seed=index), 32000)
    shutil.copy2(model_file, tmp_path / "model.pt")

    def predict(out: Path, *options: str) -> str:
        command = ["predict", str(tmp_path / "model.pt"), str(folder), "--out", str(out), "--engine", "torch"]
        result = runner.invoke(app, [*command, *options])
        assert result.exit_code == 0, result.output
        return " ".join(result.stdout.split())

    return predict


def test_a_rerun_with_a_retrained_model_file_recomputes_what_a_fresh_run_gives(rerun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rerun(out)
    first = outputs_of(out)
    write_model_file(tmp_path / "model.pt", seed=1)  # retrained: same labels, saved over the old file
    assert "3 recordings predicted, 0 already complete, 0 failed" in rerun(out)
    fresh = tmp_path / "fresh"
    rerun(fresh)
    assert outputs_of(out) == outputs_of(fresh)
    assert outputs_of(out)["predictions.csv"] != first["predictions.csv"]
    assert len(list((out / "parts").iterdir())) == 2  # the first model's parts are left in place


def test_a_rerun_with_another_hop_recomputes_and_one_with_the_same_settings_resumes(
    rerun, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rerun(out)
    first = outputs_of(out)
    assert "3 recordings predicted, 0 already complete, 0 failed" in rerun(out, "--hop", "2.5")
    fresh = tmp_path / "fresh"
    rerun(fresh, "--hop", "2.5")
    assert outputs_of(out) == outputs_of(fresh)
    assert (pd.read_csv(out / "predictions.csv")["start_s"] % 5 == 2.5).any()  # windows of the new hop
    assert "0 recordings predicted, 3 already complete, 0 failed" in rerun(out, "--hop", "2.5")
    assert outputs_of(out) == outputs_of(fresh)
    # back to the first settings (the clip length as the hop, given or not): their parts are reused
    assert "0 recordings predicted, 3 already complete, 0 failed" in rerun(out, "--hop", "5")
    assert outputs_of(out) == first


def test_the_run_tag_names_everything_that_changes_a_part_and_nothing_else(
    model_file: Path, tmp_path: Path
) -> None:
    model = load_model(model_file)
    tag = run_tag(model, PredictSettings())
    same = [
        PredictSettings(hop_s=5.0),  # the clip length
        PredictSettings(engine="onnx", batch_size=16, device="cpu", threshold=0.2, merge=True),
        PredictSettings(formats=["csv"], checkpoint_s=60.0, chunk_s=30.0),
        PredictSettings(hop_s=None, smoothing=None, overlap_average=False),
    ]
    assert {run_tag(model, settings) for settings in same} == {tag}
    assert run_tag(model, PredictSettings(smoothing=[1, 2, 1])) == run_tag(
        model, PredictSettings(smoothing=[0.25, 0.5, 0.25])  # normalised when applied: the same table
    )
    other = [
        PredictSettings(hop_s=2.5),
        PredictSettings(smoothing=[0.25, 0.5, 0.25]),
        PredictSettings(smoothing=[0.1, 0.2, 0.4, 0.2, 0.1]),
        PredictSettings(hop_s=2.5, overlap_average=True),
        PredictSettings(hop_s=2.5, smoothing=[0.25, 0.5, 0.25]),
    ]
    tags = [run_tag(model, settings) for settings in other]
    assert tag not in tags and len(set(tags)) == len(tags)
    retrained = load_model(write_model_file(tmp_path / "model.pt", seed=1))
    assert run_tag(retrained, PredictSettings()) != tag


def test_predict_out_pointing_at_a_file_is_one_line_and_nothing_is_written(
    model_file: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "site.wav"
    write_audio(recording, synthetic_audio(6.0, seed=0), 32000)
    existing = tmp_path / "predictions.csv"
    existing.write_text("file,start_s\n")
    result = runner.invoke(app, ["predict", str(model_file), str(recording), "--out", str(existing)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {existing}: cannot be the output folder: it is a file\n"
    assert existing.read_text() == "file,start_s\n"


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    model_path = write_model_file(tmp_path / "model.pt", backbone="efficientnet_b0")  # slow enough to kill
    folder = tmp_path / "recordings"
    rng = np.random.default_rng(1)
    count = 24
    for index in range(count):
        write_audio(folder / f"rec{index:02d}.ogg", rng.uniform(-0.2, 0.2, 32000 * 30), 32000)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dawnchorus", "predict", str(model_path), str(folder), "--out", str(out)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = kill_after_parts(process, out / "parts")
    assert 0 < done_before < count
    assert not (out / "predictions.csv").exists()

    rerun = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} already complete" in " ".join(rerun.stdout.split())
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == count * 6
    assert not table.duplicated(["file", "start_s"]).any()
    assert table["file"].nunique() == count
    assert not [p.name for p in parts_of(out).iterdir() if p.name.startswith(".")]  # no temporaries left
    shutil.rmtree(folder)


# --- long recordings are checkpointed in segments ------------------------------------------------------


EVERY_20_S = PredictSettings(checkpoint_s=20.0)  # long recordings saved in segments of 4 windows


@pytest.fixture
def long_recordings(model_file: Path, tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    folder = tmp_path / "long"
    write_audio(folder / "long_32k.flac", rng.uniform(-0.5, 0.5, int(32000 * 62)), 32000)
    write_audio(folder / "long_44k.wav", rng.uniform(-0.5, 0.5, int(44100 * 47)), 44100)
    write_audio(folder / "short.ogg", rng.uniform(-0.5, 0.5, 32000 * 12), 32000)
    return {"folder": folder, "model": model_file}


def parts_of(out: Path) -> Path:
    """The one parts folder (``parts/<tag>``) of the runs into ``out``."""
    (folder,) = (out / "parts").iterdir()
    return folder


def predicted(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "predictions.parquet")
    return table.sort_values(["file", "start_s"]).reset_index(drop=True)


def test_segmented_prediction_equals_the_whole_recording_run(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(long_recordings["model"])
    folder = long_recordings["folder"]
    whole = run_prediction(model, [folder], tmp_path / "whole", batch_function=FirstSamples())
    segmented = run_prediction(
        model, [long_recordings["folder"]], tmp_path / "seg", EVERY_20_S, batch_function=FirstSamples()
    )
    assert segmented.predicted == whole.predicted == 3 and segmented.windows == whole.windows == 13 + 10 + 3
    assert segmented.audio_seconds == pytest.approx(whole.audio_seconds)
    expected, found = predicted(tmp_path / "whole"), predicted(tmp_path / "seg")
    pd.testing.assert_frame_equal(found[["file", "start_s", "end_s"]], expected[["file", "start_s", "end_s"]])
    np.testing.assert_allclose(found[["aaa", "bbb", "ccc"]], expected[["aaa", "bbb", "ccc"]], atol=1e-6)
    assert expected[["aaa", "bbb", "ccc"]].to_numpy().std() > 0.1  # real samples, not constants
    assert not list(parts_of(tmp_path / "seg").glob("*.windows-*"))  # removed once assembled


def test_an_interrupted_long_recording_resumes_from_its_last_saved_segment(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(long_recordings["model"])
    reference = tmp_path / "reference"
    run_prediction(model, [long_recordings["folder"]], reference, batch_function=FirstSamples())
    out = tmp_path / "out"
    seen: list[int] = []

    def stop_after_two_segments(result, done: int, total: int) -> None:
        if result.segment is not None and result.path.name == "long_32k.flac":
            seen.append(result.segment.index)
            if len(seen) == 2:
                raise Interrupted

    first = FirstSamples()
    with pytest.raises(Interrupted):
        run_prediction(model, [long_recordings["folder"] / "long_32k.flac"], out, EVERY_20_S,
                       batch_function=first, progress=stop_after_two_segments)
    saved = sorted(p.name for p in parts_of(out).glob("*.windows-*"))
    ranges = [name.split(".")[-2] for name in saved]
    assert ranges == ["windows-hop5000ms-0000000-4", "windows-hop5000ms-0000004-4"]
    again = FirstSamples()
    summary = run_prediction(model, [long_recordings["folder"]], out, EVERY_20_S, batch_function=again)
    assert again.windows == (13 - 8) + 10 + 3  # the two saved segments (4 windows each) are not redone
    assert summary.predicted == 3
    pd.testing.assert_frame_equal(predicted(out), predicted(reference), atol=1e-6)
    assert not list(parts_of(out).glob("*.windows-*"))


def test_a_recording_with_every_segment_saved_is_only_assembled(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(long_recordings["model"])
    recording = long_recordings["folder"] / "long_32k.flac"
    out = tmp_path / "out"
    run_prediction(model, [recording], out, batch_function=FirstSamples())
    part = parts_of(out) / f"{recording_key(recording)}.parquet"
    expected = outputs.read_probabilities(part)
    for start in range(0, 13, 4):  # what a run killed before assembling leaves
        rows = expected.iloc[start : start + 4].reset_index(drop=True)
        count = 4 if start + 4 < 13 else None
        saved = saved_windows_path(part.parent, recording_key(recording), 5.0, start, count)
        outputs.write_probabilities_parquet(rows, saved)
    part.unlink()

    def no_engine(audio: np.ndarray) -> np.ndarray:
        raise AssertionError("nothing is left to compute")

    summary = run_prediction(model, [recording], out, EVERY_20_S, batch_function=no_engine)
    assert summary.predicted == 1 and not summary.failed
    pd.testing.assert_frame_equal(outputs.read_probabilities(part), expected)
    assert not list(parts_of(out).glob("*.windows-*"))


def test_a_resume_with_other_settings_never_mixes_saved_windows(
    long_recordings: dict[str, Path], tmp_path: Path
) -> None:
    model = load_model(long_recordings["model"])
    recording = long_recordings["folder"] / "long_32k.flac"
    reference = tmp_path / "reference"
    run_prediction(model, [recording], reference, batch_function=FirstSamples())
    out = tmp_path / "out"

    def stop_after_one_segment(result, done: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):  # segments of 4 windows (batch 4), one saved
        run_prediction(model, [recording], out, EVERY_20_S, batch_function=FirstSamples(),
                       progress=stop_after_one_segment)
    again = FirstSamples()  # batch 3: segments of 3 windows, none of which was saved
    settings = PredictSettings(checkpoint_s=20.0, batch_size=3)
    run_prediction(model, [recording], out, settings, batch_function=again)
    assert again.windows == 13
    pd.testing.assert_frame_equal(predicted(out), predicted(reference), atol=1e-6)
    assert not list(parts_of(out).glob("*.windows-*"))  # the old run's saved windows too


# --- prediction settings -----------------------------------------------------------------------------


def test_readme_cluster_yaml_is_valid_predict_settings(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("# cluster.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "cluster.yaml").write_text(block)
    settings = load_predict_settings(tmp_path / "cluster.yaml")
    assert settings.cluster.queue == "gpu" and settings.cluster.jobs == 10 and settings.cluster.gpus == 1
    assert settings.cluster.prologue[0] == "module load cuda"
    assert settings.batch_size == "auto" and settings.engine == "auto"  # the defaults of `predict`


def test_predict_settings_refuse_bad_values_naming_the_field(tmp_path: Path) -> None:
    assert build_predict_settings({"formats": "csv, raven"}).formats == ["csv", "raven"]
    for bad, message in [
        ({"hop_s": 0}, "hop_s: Input should be greater than 0"),
        ({"batch_size": 0}, "batch_size: must be a whole number >= 1 or 'auto'"),
        ({"formats": "csv,xls"}, "unknown output format.s. xls"),
        ({"engine": "tensorrt"}, "engine: Input should be 'auto', 'torch', 'onnx' or 'onnx-int8'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"threshold": 1.5}, "threshold: Input should be less than or equal to 1"),
        ({"cluster": {"partition": "short"}}, "cluster.partition: unknown setting"),
        ({"cluster": {"cores": 2, "processes": 3}}, r"processes \(3\) exceeds cores \(2\)"),
        ({"epochs": 3}, "epochs: unknown setting"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_predict_settings(bad)
    (tmp_path / "bad.yaml").write_text("cluster: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_predict_settings(tmp_path / "bad.yaml")


def test_training_config_carries_no_cluster_settings(tmp_path: Path) -> None:
    """An old run folder's config.yaml (with the cluster section it used to hold) still loads, without it."""
    old = tmp_path / "config.yaml"
    old.write_text("train: {epochs: 3}\ncluster: {queue: gpu, cores: 8}\n")
    config = load_config(old)
    assert config.train.epochs == 3
    assert "cluster" not in config.model_dump() and "cluster" not in build_config().model_dump()


def test_a_model_file_saved_with_a_cluster_section_still_loads(model_file: Path, tmp_path: Path) -> None:
    payload = torch.load(model_file, map_location="cpu", weights_only=True)
    stored = json.loads(payload["config"])
    stored["cluster"] = {"queue": "gpu", "cores": 8, "jobs": 2}  # what files saved by older versions carry
    payload["config"] = json.dumps(stored)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    model = load_model(old)
    assert "cluster" not in model.config.model_dump()
    assert model.labels == load_model(model_file).labels


def test_python_predict_takes_settings_or_their_fields(model_file: Path, tmp_path: Path) -> None:
    recording = tmp_path / "rec.wav"
    write_audio(recording, np.random.default_rng(3).uniform(-0.2, 0.2, 32000 * 12), 32000)
    model = load_model(model_file)
    by_field = dawnchorus.predict(model, recording, hop_s=2.5, engine="torch")
    by_settings = dawnchorus.predict(model_file, recording, PredictSettings(hop_s=2.5, engine="torch"))
    assert len(by_field) == 4  # 12 s at a 2.5 s hop: windows at 0, 2.5, 5, 7.5
    pd.testing.assert_frame_equal(by_field, by_settings)
    with pytest.raises(ConfigError, match="hop_s"):
        dawnchorus.predict(model, recording, hop_s=-1.0)


def test_predict_config_file_gives_settings_and_typed_options_override_it(
    model_file: Path, tmp_path: Path
) -> None:
    recording = tmp_path / "rec.wav"
    write_audio(recording, np.random.default_rng(4).uniform(-0.2, 0.2, 32000 * 12), 32000)
    settings = tmp_path / "predict.yaml"
    settings.write_text("hop_s: 2.5\nformats: [csv]\nengine: torch\ncluster:\n  queue: gpu\n")
    from_file = tmp_path / "from_file"
    result = runner.invoke(app, ["predict", str(model_file), str(recording), "--out", str(from_file),
                                 "--config", str(settings)])
    assert result.exit_code == 0, result.output
    assert "engine: torch" in result.output
    assert len(pd.read_csv(from_file / "predictions.csv")) == 4
    assert not (from_file / "predictions.parquet").exists()
    overridden = tmp_path / "overridden"
    result = runner.invoke(app, ["predict", str(model_file), str(recording), "--out", str(overridden),
                                 "--config", str(settings), "--hop", "5", "--format", "parquet"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(overridden / "predictions.parquet")) == 3
    assert not (overridden / "predictions.csv").exists()
    settings.write_text("hop_s: -1\n")
    refused = runner.invoke(app, ["predict", str(model_file), str(recording), "--config", str(settings)])
    assert refused.exit_code == 2 and "hop_s" in refused.output
