"""Noisy-student rounds that resume and students that start from their teacher: a killed
``train --unlabelled --rounds 2`` continued with ``--resume`` keeps its finished rounds' models and rows,
a run of other settings, data or recordings is refused in one line, and a warm-started student's first
step sees exactly its teacher's weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.errors import TrainingError
from dawnchorus.inference.windows import expand_inputs
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.module import BirdModule
from dawnchorus.training.rounds import STATE_NAME, RoundsState, run_fingerprint, self_train
from tests.conftest import kill_after_parts, write_model_file
from tests.test_self_training import small_config, split_off_pool, write_settings

runner = CliRunner()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 synthetic species, one labelled 10-s validation soundscape, two unlabelled ones in the pool."""
    root = tmp_path_factory.mktemp("rounds")
    make_dataset(root / "data", species=3, soundscapes=3, seed=0, clips_per_species=(3, 4),
                 soundscape_s=10.0, workers=1)
    split_off_pool(root / "data", root / "pool", keep=1)
    return {"data": root / "data", "pool": root / "pool"}


def digest(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bigger_pool(small_set: dict[str, Path], tmp_path: Path) -> Path:
    """The unlabelled pool four times over (8 recordings): pseudo-labelling takes long enough to kill."""
    pool = tmp_path / "pool"
    pool.mkdir()
    for copy in range(4):
        for recording in sorted(small_set["pool"].iterdir()):
            shutil.copyfile(recording, pool / f"{copy}-{recording.name}")
    return pool


@pytest.mark.slow
def test_a_killed_round_resumes_keeping_the_teacher_and_the_finished_rounds(
    small_set: dict[str, Path], bigger_pool: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "dawnchorus", "train", str(small_set["data"]), "--out", str(run),
               "--unlabelled", str(bigger_pool), "--rounds", "2",
               "--config", str(write_settings(tmp_path, small_config()))]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before = kill_after_parts(process, run / "round2" / "pseudo" / "teacher" / "parts", count=2)
    assert 0 < done_before < 8  # killed while round 2 pseudo-labelled the pool
    finished = {index: digest(run / f"round{index}" / "model.pt") for index in (0, 1)}
    rows_before = pd.read_csv(run / "rounds.csv")
    assert rows_before["round"].tolist() == [0, 1]
    assert not (run / "round2" / "model.pt").exists()

    rerun = subprocess.run([*command, "--resume"], env=environment, capture_output=True, text=True,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    output = " ".join(rerun.stdout.split())
    assert "round 0: finished earlier, kept" in output and "round 1: finished earlier, kept" in output
    assert f"pseudo-labels of {done_before} recording(s) kept from an earlier run" in output
    assert {index: digest(run / f"round{index}" / "model.pt") for index in (0, 1)} == finished
    rows = pd.read_csv(run / "rounds.csv")
    assert rows["round"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(rows.iloc[:2], rows_before)
    assert rows["windows_kept"].tolist()[2] == 8 * 2  # every window of the 8 pool recordings, once
    assert (run / "model.pt").read_bytes() == (run / "round2" / "model.pt").read_bytes()


@pytest.fixture
def started_run(small_set: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """A run folder whose state says it was made from small_config() on small_set's data and pool
    (what an interrupted run leaves before its first round finishes)."""
    pool, data = tmp_path / "pool", tmp_path / "data"
    shutil.copytree(small_set["pool"], pool)
    shutil.copytree(small_set["data"], data)
    run = tmp_path / "run"
    run.mkdir()
    fingerprint = run_fingerprint(small_config(), data, expand_inputs([pool]), run_dir=run)
    RoundsState.start(run, fingerprint, resume=False)
    return {"data": data, "pool": pool, "run": run}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("settings", "settings"),
        ("recording added", "unlabelled recordings"),
        ("clip rewritten", "training data"),
    ],
)
def test_resuming_a_run_of_other_settings_data_or_recordings_is_refused(
    started_run: dict[str, Path], change: str, named: str
) -> None:
    config = small_config()
    if change == "settings":
        config = small_config(mix_p=0.25)
    elif change == "recording added":
        source = next(started_run["pool"].iterdir())
        shutil.copyfile(source, started_run["pool"] / "another.ogg")
    else:
        clip = next((started_run["data"] / "train_audio").rglob("*.ogg"))
        clip.write_bytes(clip.read_bytes() + b"\0")
    with pytest.raises(TrainingError) as refused:
        self_train(started_run["data"], started_run["run"], config, unlabelled=[started_run["pool"]],
                   resume=True)
    message = str(refused.value)
    assert f"made from other {named};" in message and "use a new --out" in message
    assert "\n" not in message
    assert not (started_run["run"] / "round0").exists()  # refused before any work


def test_more_rounds_or_other_workers_resume_the_same_run(
    small_set: dict[str, Path], tmp_path: Path
) -> None:
    recordings = expand_inputs([small_set["pool"]])
    first = run_fingerprint(small_config(rounds=2), small_set["data"], recordings)
    later = small_config(rounds=3)
    later.train.num_workers = 2
    assert run_fingerprint(later, small_set["data"], recordings) == first
    assert run_fingerprint(small_config(student_init="pretrained"), small_set["data"], recordings) != first


def test_the_command_line_refuses_a_changed_resume_in_one_line(
    started_run: dict[str, Path], tmp_path: Path
) -> None:
    settings = write_settings(tmp_path, small_config())
    base = ["train", str(started_run["data"]), "--out", str(started_run["run"]), "--unlabelled",
            str(started_run["pool"]), "--config", str(settings), "--resume"]
    result = runner.invoke(app, [*base, "--epochs", "3"])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "made from other settings; use a new --out, or run without --resume" in said
    assert "Traceback" not in result.output
    (started_run["run"] / STATE_NAME).unlink()
    result = runner.invoke(app, base)
    assert result.exit_code == 1
    assert "holds no self-training run to continue" in " ".join(result.output.split())


# --- students that start from their teacher ---------------------------------------------------------


@pytest.fixture
def first_step_weights(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """The classifier weights of every training run as its first step sees them."""
    seen: list[dict[str, torch.Tensor]] = []

    def on_train_start(module: BirdModule) -> None:
        seen.append({k: v.detach().cpu().clone() for k, v in module.network.classifier.state_dict().items()})

    monkeypatch.setattr(BirdModule, "on_train_start", on_train_start, raising=False)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("init", ["teacher", "pretrained"])
def test_a_warm_started_student_starts_from_its_teachers_weights(
    small_set: dict[str, Path], tmp_path: Path, first_step_weights: list[dict[str, torch.Tensor]], init: str
) -> None:
    labels = sorted(p.name for p in (small_set["data"] / "train_audio").iterdir())
    teacher = write_model_file(tmp_path / "teacher.pt", labels=labels, backbone="test_efficientnet",
                               pretrained=False, drop_rate=0.0)
    lines: list[str] = []
    result = self_train(small_set["data"], tmp_path / "run", small_config(student_init=init),
                        unlabelled=[small_set["pool"]], teacher=teacher, log=lines.append)
    (student_start,) = first_step_weights
    stored = torch.load(teacher, weights_only=True)["state_dict"]
    same = all(torch.equal(student_start[key], stored[key]) for key in stored)
    assert same == (init == "teacher")
    assert not any("pretrained weights" in line for line in lines), lines
    trained = torch.load(result.model_path, weights_only=True)["state_dict"]
    assert not all(torch.equal(trained[key], stored[key]) for key in stored)  # the student learnt


@pytest.mark.slow
def test_a_student_of_another_network_starts_pretrained_and_says_why(
    small_set: dict[str, Path], tmp_path: Path, first_step_weights: list[dict[str, torch.Tensor]]
) -> None:
    labels = sorted(p.name for p in (small_set["data"] / "train_audio").iterdir())
    teacher = write_model_file(tmp_path / "teacher.pt", labels=labels, backbone="test_efficientnet")
    lines: list[str] = []
    self_train(small_set["data"], tmp_path / "run",
               small_config(student_init="teacher", student_backbone="resnet10t"),
               unlabelled=[small_set["pool"]], teacher=teacher, log=lines.append)
    assert any(
        "round 1: the student starts from the backbone's pretrained weights (its teacher is another "
        "network (test_efficientnet" in line for line in lines
    ), lines


def test_a_clip_changed_behind_a_linked_folder_changes_the_fingerprint(
    small_set: dict[str, Path], tmp_path: Path
) -> None:
    data, view = tmp_path / "data", tmp_path / "view"
    shutil.copytree(small_set["data"], data)
    view.mkdir()
    for name in ("train_metadata.csv", "train_audio"):  # a training view of links, as the benches make
        (view / name).symlink_to(data / name)
    recordings = expand_inputs([small_set["pool"]])
    before = run_fingerprint(small_config(), view, recordings)
    clip = next((data / "train_audio").rglob("*.ogg"))
    clip.write_bytes(clip.read_bytes() + b"\0")
    after = run_fingerprint(small_config(), view, recordings)
    assert after["data"] != before["data"]
    assert after["config"] == before["config"] and after["unlabelled"] == before["unlabelled"]


@pytest.mark.slow
def test_an_interrupted_students_training_continues_from_its_checkpoint_only_when_it_was_this_run(
    small_set: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dawnchorus.training.rounds as rounds

    run = tmp_path / "run"
    config = small_config(rounds=2)
    self_train(small_set["data"], run, config, unlabelled=[small_set["pool"]])
    kept = digest(run / "round1" / "model.pt")
    # What a kill during round 2's training leaves: its checkpoints, no model, the state saying so.
    state = json.loads((run / STATE_NAME).read_text())
    state["rounds"] = state["rounds"][:2]
    state["training"] = {"round": 2, "teacher_sha256": state["rounds"][1]["sha256"]}
    (run / STATE_NAME).write_text(json.dumps(state))
    (run / "round2" / "model.pt").unlink()
    calls: list[tuple[str, bool]] = []
    real_train = rounds.train

    def recording_train(data: Path, out: Path, *args: object, **options: object) -> object:
        calls.append((Path(out).name, bool(options.get("resume"))))
        return real_train(data, out, *args, **options)

    monkeypatch.setattr(rounds, "train", recording_train)
    self_train(small_set["data"], run, config, unlabelled=[small_set["pool"]], resume=True)
    assert calls == [("round2", True)]
    assert digest(run / "round1" / "model.pt") == kept
    assert pd.read_csv(run / "rounds.csv")["round"].tolist() == [0, 1, 2]

    # A checkpoint the state does not vouch for (another teacher) is never continued: removed, trained anew.
    state = json.loads((run / STATE_NAME).read_text())
    state["rounds"] = state["rounds"][:2]
    state["training"] = {"round": 2, "teacher_sha256": "another teacher"}
    (run / STATE_NAME).write_text(json.dumps(state))
    calls.clear()
    self_train(small_set["data"], run, config, unlabelled=[small_set["pool"]], resume=True)
    assert calls == [("round2", False)]
