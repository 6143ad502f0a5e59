"""Bad inputs and faults at run time, through the command line: model files, inputs, output folders,
a full disk, training runs. Each row builds one bad input (among good recordings where a run goes on).

Every row asserts what a user relies on: the exit code (0 all done, 1 some recordings failed or a run
that could not go on, 2 bad input or usage: README, *Exit codes*), one line that names the file, folder
or field and says what is wrong, no traceback, and, where other recordings exist, that their outputs
are complete and equal to a run without the bad input. Bad recordings, labels and data sets are rows of
``tests/test_bad_inputs_data.py``; resuming after a kill is ``tests/test_predict.py``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from typer.testing import CliRunner, Result

from dawnchorus.cli.app import app
from dawnchorus.io.audio import write_audio
from dawnchorus.synth.soundscapes import make_dataset
from tests.conftest import synthetic_audio

runner = CliRunner()
RATE = 32000
GOOD = ("site_a.wav", "site_b.wav", "nested/site_c.wav")
GOOD_SECONDS = 12.0  # windows at 0, 5 and 10 s
ALL_DONE, SOME_FAILED, BAD_INPUT = 0, 1, 2  # README, Exit codes


@dataclass
class Outcome:
    """What a row ran, and what the user must see: the line naming ``names`` and matching ``reason``."""

    result: Result
    names: tuple[str, ...]
    reason: str
    good_out: Path | None = None  # a predict run whose good recordings must be complete and correct
    after: Callable[[], None] | None = None  # more checks: nothing written, nothing ran, a re-run resumes
    prefix: str = "error: "
    # A configuration error lists every bad field at once, one indented line each, under its line.
    fields: tuple[str, ...] = ()


@dataclass
class Bench:
    """What every row may use: the shared model file, a small training set, good recordings, tmp_path."""

    model: Path
    dataset: Path
    reference: pd.DataFrame  # predictions.csv of the good recordings alone, file names only
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    rows: dict[str, object] = field(default_factory=dict)

    def recordings(self, folder: Path | None = None) -> Path:
        """A folder holding the good recordings (copies, so a row may add to it)."""
        folder = folder or self.tmp / "recordings"
        for seed, name in enumerate(GOOD):
            write_audio(folder / name, synthetic_audio(GOOD_SECONDS, seed=seed), RATE)
        return folder

    def predict(self, *arguments: str | Path) -> Result:
        return runner.invoke(app, ["predict", str(self.model), *map(str, arguments), "--format", "csv"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("bad-inputs") / "data"
    make_dataset(
        data, species=3, soundscapes=1, seed=0, clips_per_species=(3, 5), soundscape_s=10.0, workers=1
    )
    return data


@pytest.fixture(scope="module")
def reference(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("reference")
    bench = Bench(model_file, root, pd.DataFrame(), root, pytest.MonkeyPatch())
    result = bench.predict(bench.recordings(), "--out", root / "out")
    assert result.exit_code == ALL_DONE, result.output
    return by_name(pd.read_csv(root / "out" / "predictions.csv"))


def by_name(table: pd.DataFrame) -> pd.DataFrame:
    table = table.assign(file=table["file"].map(lambda file: Path(file).name))
    return table.sort_values(["file", "start_s"], ignore_index=True)


# --- predict: a bad input among good recordings -----------------------------------------------------


def broken_symlink_in_input_folder(bench: Bench) -> Outcome:
    folder = bench.recordings()
    link, target = folder / "site_d.wav", bench.tmp / "unmounted" / "site_d.wav"
    link.symlink_to(target)
    out = bench.tmp / "out"
    return Outcome(
        bench.predict(folder, "--out", out), (str(link),), f"broken symbolic link: its target {target}",
        good_out=out, prefix="failed: ",
    )


def folder_that_cannot_be_listed(bench: Bench) -> Outcome:
    folder = bench.recordings()
    locked = folder / "locked"
    write_audio(locked / "site_d.wav", synthetic_audio(GOOD_SECONDS, seed=9), RATE)
    list_folder = os.scandir

    def refusing(path: str | Path = ".") -> object:  # root lists any folder: the OS refusing, as for a user
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return list_folder(path)

    bench.monkeypatch.setattr(os, "scandir", refusing)
    out = bench.tmp / "out"
    result = bench.predict(folder, "--out", out)
    bench.monkeypatch.undo()
    return Outcome(
        result, (str(locked),), r"folder cannot be read \(permission denied\)", good_out=out,
        prefix="failed: ",
    )


def unreadable_recording_among_good_ones(bench: Bench) -> Outcome:
    folder = bench.recordings()
    bad = folder / "site_d.wav"
    bad.write_text("field notes, not audio\n" * 40)
    out = bench.tmp / "out"
    return Outcome(
        bench.predict(folder, "--out", out), (str(bad),), "not decodable audio", good_out=out,
        prefix="failed: ",
    )


def every_recording_fails(bench: Bench) -> Outcome:
    folder = bench.tmp / "recordings"
    folder.mkdir()
    bad = folder / "site_a.wav"
    bad.write_text("not audio\n" * 40)
    out = bench.tmp / "out"

    def listed() -> None:
        assert pd.read_csv(out / "errors.csv")["file"].tolist() == [str(bad)]

    return Outcome(
        bench.predict(folder, "--out", out), (str(bad),), "not decodable audio", after=listed,
        prefix="failed: ",
    )


def disk_full_mid_run(bench: Bench) -> Outcome:
    folder = bench.recordings()
    out = bench.tmp / "out"
    parts = out / "parts"
    write_parquet = pd.DataFrame.to_parquet

    def disk_full_after_one_part(table: pd.DataFrame, path: Path, *args: object, **kwargs: object) -> None:
        if any(parts.glob("*/*.parquet")):  # parts/<tag>/<key>.parquet; what pyarrow raises on a full disk
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left")
        write_parquet(table, path, *args, **kwargs)

    bench.monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full_after_one_part)
    result = bench.predict(folder, "--out", out)
    bench.monkeypatch.undo()

    def kept_then_resumed() -> None:
        assert len(list(parts.glob("*/*.parquet"))) == 1  # what was finished stays
        resumed = bench.predict(folder, "--out", out)
        assert resumed.exit_code == ALL_DONE, resumed.output
        assert "2 recordings predicted, 1 already complete, 0 failed" in resumed.stdout
        assert_complete_and_correct(out, bench.reference)

    return Outcome(
        result, (str(parts),), r"cannot write this file: the disk is full \(no space left on device\); "
        "the recordings finished so far are kept", after=kept_then_resumed,
    )


# --- predict: a bad model file, option or output folder ---------------------------------------------


def nothing_written(*paths: Path) -> Callable[[], None]:
    def check() -> None:
        assert not any(path.exists() for path in paths), [str(p) for p in paths if p.exists()]

    return check


def missing_model_file(bench: Bench) -> Outcome:
    missing, out = bench.tmp / "runs" / "model.pt", bench.tmp / "out"
    result = runner.invoke(app, ["predict", str(missing), str(bench.recordings()), "--out", str(out)])
    return Outcome(result, (str(missing),), "model file not found", after=nothing_written(out))


def model_file_payload(bench: Bench) -> dict:
    return torch.load(bench.model, map_location="cpu", weights_only=True)


def predict_with_model(bench: Bench, model: Path) -> tuple[Result, Path]:
    out = bench.tmp / "out"
    result = runner.invoke(app, ["predict", str(model), str(bench.recordings()), "--out", str(out)])
    return result, out


def corrupt_model_file(bench: Bench) -> Outcome:
    model = bench.tmp / "model.pt"
    model.write_bytes(bench.model.read_bytes()[: bench.model.stat().st_size // 2])  # a copy cut short
    result, out = predict_with_model(bench, model)
    return Outcome(
        result, (str(model),), r"not a dawnchorus model file \(.*zip archive", after=nothing_written(out),
    )


class RunsCodeWhenUnpickled:
    """A pickled object whose loading writes a marker file: what a crafted file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def crafted_model_file(bench: Bench) -> Outcome:
    model, marker = bench.tmp / "model.pt", bench.tmp / "marker"
    torch.save({**model_file_payload(bench), "metadata": RunsCodeWhenUnpickled(marker)}, model)
    result, out = predict_with_model(bench, model)
    return Outcome(
        result, (str(model),), r"unsafe file, refused: .*\(getattr\).*nothing in it ran",
        after=nothing_written(marker, out),
    )


def model_file_without_labels(bench: Bench) -> Outcome:
    payload = model_file_payload(bench)
    del payload["labels"]
    model = bench.tmp / "model.pt"
    torch.save(payload, model)
    result, out = predict_with_model(bench, model)
    return Outcome(
        result, (str(model),), "damaged model file: it has no 'labels' entry", after=nothing_written(out),
    )


def unknown_backbone(bench: Bench) -> Outcome:
    payload = model_file_payload(bench)
    settings = json.loads(payload["config"])
    settings["model"]["backbone"] = "birdnet_v9_from_2031"
    model = bench.tmp / "model.pt"
    torch.save({**payload, "config": json.dumps(settings)}, model)
    result, out = predict_with_model(bench, model)
    reason = rf"'birdnet_v9_from_2031' is not in the installed timm {re.escape(timm.__version__)}"
    return Outcome(result, (str(model),), reason, after=nothing_written(out))


def bad_predict_config_key(bench: Bench) -> Outcome:
    config = bench.tmp / "predict.yaml"
    config.write_text("hop: 2.5\n")  # the setting is hop_s
    out = bench.tmp / "out"
    result = bench.predict(bench.recordings(), "--out", out, "--config", config)
    return Outcome(
        result, (str(config),), "invalid configuration", fields=("hop: unknown setting",),
        after=nothing_written(out),
    )


def missing_input_path(bench: Bench) -> Outcome:
    missing, out = bench.tmp / "site3", bench.tmp / "out"  # a mistyped folder
    result = bench.predict(bench.recordings(), missing, "--out", out)
    return Outcome(
        result, (str(missing),), r"input not found \(no such file or folder\)", after=nothing_written(out),
    )


def predict_out_is_a_file(bench: Bench) -> Outcome:
    out = bench.tmp / "predictions.csv"
    out.write_text("file,start_s\n")
    result = bench.predict(bench.recordings(), "--out", out)

    def untouched() -> None:
        assert out.read_text() == "file,start_s\n"

    return Outcome(result, (str(out),), "cannot be the output folder: it is a file", after=untouched)


def refuse_writing(bench: Bench, folder: Path) -> None:
    """Make ``folder`` unwritable: mode 500, and where the tests run as root (which writes anywhere) the
    operating system refusing to create a folder in it or to grant write access, as it would a user."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o500)
    bench.rows.setdefault("locked", []).append(folder)
    if os.geteuid() != 0:
        return
    make_folder, may = os.mkdir, os.access

    def refusing_mkdir(path: str | Path, *args: object, **kwargs: object) -> None:
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        make_folder(path, *args, **kwargs)

    def refusing_access(path: str | Path, mode: int, *args: object, **kwargs: object) -> bool:
        return False if Path(path) == folder and mode & os.W_OK else may(path, mode, *args, **kwargs)

    bench.monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    bench.monkeypatch.setattr(os, "access", refusing_access)


def predict_out_cannot_be_created(bench: Bench) -> Outcome:
    recordings = bench.recordings()
    shared = bench.tmp / "shared"
    refuse_writing(bench, shared)
    out = shared / "run"
    result = bench.predict(recordings, "--out", out)
    bench.monkeypatch.undo()
    return Outcome(
        result, (str(out),), "cannot create the output folder: permission denied", after=nothing_written(out),
    )


def predict_out_not_writable(bench: Bench) -> Outcome:
    recordings = bench.recordings()
    out = bench.tmp / "out"
    refuse_writing(bench, out)
    result = bench.predict(recordings, "--out", out)
    bench.monkeypatch.undo()
    return Outcome(result, (str(out),), "cannot write in the output folder: permission denied")


# --- train ------------------------------------------------------------------------------------------


def train(bench: Bench, *arguments: str | Path) -> Result:
    return runner.invoke(app, ["train", str(bench.dataset), "--no-pretrained", *map(str, arguments)])


def bad_train_config_key(bench: Bench) -> Outcome:
    config, run = bench.tmp / "train.yaml", bench.tmp / "run"
    config.write_text("train:\n  epoch: 3\n")  # the setting is epochs
    result = train(bench, "--out", run, "--config", config)
    return Outcome(
        result, (str(config),), "invalid configuration", fields=("train.epoch: unknown setting",),
        after=nothing_written(run),
    )


def mistyped_train_backbone(bench: Bench) -> Outcome:
    run = bench.tmp / "run"
    result = train(bench, "--out", run, "--backbone", "birdnte")
    return Outcome(
        result,
        ("'birdnte'",),
        "did you mean birdnet",
        after=nothing_written(run),
    )


def resume_without_checkpoint(bench: Bench) -> Outcome:
    run = bench.tmp / "run"
    result = train(bench, "--out", run, "--resume")
    return Outcome(
        result, (str(run / "checkpoints" / "last.ckpt"),), "no checkpoint", after=nothing_written(run),
    )


def crafted_checkpoint(bench: Bench) -> Outcome:
    run, marker = bench.tmp / "run", bench.tmp / "marker"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 1, "extra": RunsCodeWhenUnpickled(marker)}, last)
    result = train(bench, "--out", run, "--resume")
    return Outcome(
        result, (str(last),), r"not a training checkpoint that can be read safely .*nothing in it ran",
        after=nothing_written(marker, run / "config.yaml"),
    )


def empty_noise_dir(bench: Bench) -> Outcome:
    noise, run = bench.tmp / "noise", bench.tmp / "run"
    noise.mkdir()
    result = train(bench, "--out", run, "--noise-dir", noise)
    return Outcome(
        result, (f"noise folder {noise.resolve()}",), "contains no audio files", after=nothing_written(run),
    )


def non_audio_noise_dir(bench: Bench) -> Outcome:
    noise, run = bench.tmp / "noise", bench.tmp / "run"
    noise.mkdir()
    (noise / "rain.wav").write_text("rain recordings to come")
    result = train(bench, "--out", run, "--noise-dir", noise)
    return Outcome(
        result,
        (f"noise folder {noise.resolve()}", "rain.wav"),
        "none of its 1 audio files could be used: .*not decodable audio",
        after=nothing_written(run),
    )


def train_out_is_a_file(bench: Bench) -> Outcome:
    run = bench.tmp / "run"
    run.write_text("notes")
    return Outcome(train(bench, "--out", run), (str(run),), "cannot be the run folder: it is a file")


# --- evaluate ---------------------------------------------------------------------------------------


def evaluate(bench: Bench, out: Path) -> Result:
    predictions, labels = bench.tmp / "predictions.csv", bench.tmp / "labels.csv"
    table = bench.reference.assign(file=bench.reference["file"].map(lambda name: f"/data/{name}"))
    table.to_csv(predictions, index=False)
    stems = [Path(name).stem for name in GOOD]
    rows = [f"{stem}_{end},site,{stem},{end},aaa" for stem in stems for end in (5, 10, 15)]
    labels.write_text("row_id,site,audio_id,seconds,birds\n" + "\n".join(rows) + "\n")
    return runner.invoke(app, ["evaluate", str(predictions), str(labels), "--out", str(out)])


def evaluate_out_is_a_folder(bench: Bench) -> Outcome:
    out = bench.tmp / "results"
    out.mkdir()
    return Outcome(evaluate(bench, out), (str(out),), "cannot write this file: a folder of that name exists")


def evaluate_out_under_a_file(bench: Bench) -> Outcome:
    blocking = bench.tmp / "results"
    blocking.write_text("notes")
    out = blocking / "evaluation.json"
    return Outcome(evaluate(bench, out), (str(out),), f"{re.escape(str(blocking))} is a file, not a folder")


@dataclass(frozen=True)
class Case:
    make: Callable[[Bench], Outcome]
    exit_code: int


CASES = {
    "broken-symlink-in-input-folder": Case(broken_symlink_in_input_folder, SOME_FAILED),
    "folder-that-cannot-be-listed": Case(folder_that_cannot_be_listed, SOME_FAILED),
    "unreadable-recording-among-good-ones": Case(unreadable_recording_among_good_ones, SOME_FAILED),
    "every-recording-fails": Case(every_recording_fails, SOME_FAILED),
    "disk-full-mid-run": Case(disk_full_mid_run, BAD_INPUT),
    "missing-model-file": Case(missing_model_file, BAD_INPUT),
    "corrupt-model-file": Case(corrupt_model_file, BAD_INPUT),
    "crafted-model-file": Case(crafted_model_file, BAD_INPUT),
    "model-file-without-labels": Case(model_file_without_labels, BAD_INPUT),
    "unknown-backbone": Case(unknown_backbone, BAD_INPUT),
    "bad-predict-config-key": Case(bad_predict_config_key, BAD_INPUT),
    "missing-input-path": Case(missing_input_path, BAD_INPUT),
    "predict-out-is-a-file": Case(predict_out_is_a_file, BAD_INPUT),
    "predict-out-cannot-be-created": Case(predict_out_cannot_be_created, BAD_INPUT),
    "predict-out-not-writable": Case(predict_out_not_writable, BAD_INPUT),
    "bad-train-config-key": Case(bad_train_config_key, BAD_INPUT),
    "mistyped-train-backbone": Case(mistyped_train_backbone, BAD_INPUT),
    "resume-without-checkpoint": Case(resume_without_checkpoint, SOME_FAILED),
    "crafted-checkpoint": Case(crafted_checkpoint, SOME_FAILED),
    "empty-noise-dir": Case(empty_noise_dir, BAD_INPUT),
    "non-audio-noise-dir": Case(non_audio_noise_dir, BAD_INPUT),
    "train-out-is-a-file": Case(train_out_is_a_file, BAD_INPUT),
    "evaluate-out-is-a-folder": Case(evaluate_out_is_a_folder, BAD_INPUT),
    "evaluate-out-under-a-file": Case(evaluate_out_under_a_file, BAD_INPUT),
}


def assert_complete_and_correct(out: Path, reference: pd.DataFrame) -> None:
    """Every window of every good recording is in predictions.csv, with the probabilities of a run
    on the good recordings alone."""
    table = by_name(pd.read_csv(out / "predictions.csv"))
    assert table[["file", "start_s", "end_s"]].equals(reference[["file", "start_s", "end_s"]])
    labels = [column for column in reference.columns if column not in ("file", "start_s", "end_s")]
    np.testing.assert_allclose(table[labels].to_numpy(), reference[labels].to_numpy(), atol=1e-5)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_bad_input_is_one_line_naming_it_and_its_exit_code(
    case: Case,
    model_file: Path,
    dataset: Path,
    reference: pd.DataFrame,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = Bench(model_file, dataset, reference, tmp_path, monkeypatch)
    try:
        outcome = case.make(bench)
    finally:
        monkeypatch.undo()
        for folder in bench.rows.get("locked", []):
            folder.chmod(0o700)
    result = outcome.result

    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.exit_code, result.output
    lines = result.stderr.splitlines()
    if case.exit_code == BAD_INPUT or outcome.prefix == "error: ":
        assert len(lines) == 1 + len(outcome.fields), result.stderr  # the one error line, whole
        assert [line.strip() for line in lines[1:]] == list(outcome.fields)
    matching = [
        line for line in lines if line.startswith(outcome.prefix) and all(n in line for n in outcome.names)
    ]
    assert len(matching) == 1, result.stderr
    assert re.search(outcome.reason, matching[0]), matching[0]
    if outcome.good_out is not None:
        assert_complete_and_correct(outcome.good_out, reference)
        errors = pd.read_csv(outcome.good_out / "errors.csv")
        assert outcome.names[0] in errors["file"].tolist()
    if outcome.after is not None:
        outcome.after()
