"""``RESULTS_DIR/run.json``: predict records its model(s), thresholds, settings and recordings; review
finds recordings and thresholds from it wherever it runs, and treats a run.json from elsewhere as data
(types checked, one line for a malformed one, its paths never reaching another file)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dawnchorus.cli.app import app as cli
from dawnchorus.errors import InputError
from dawnchorus.io.audio import write_audio
from dawnchorus.io.runinfo import (
    RUN_INFO_FILE,
    RunInfo,
    RunModel,
    RunRecording,
    read_run_info,
    write_run_info,
)
from dawnchorus.io.verdicts import REVIEWS_FILE, VerdictStore
from dawnchorus.review.app import create_app
from dawnchorus.review.items import open_run
from dawnchorus.version import __version__
from tests.conftest import synthetic_audio
from tests.review_run import Server

runner = CliRunner()
TUNED = {"aaa": 0.3, "bbb": 0.6, "ccc": 0.55}  # per-class thresholds of the tuned model


@contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def predict(folder: Path, *args: str) -> None:
    """``dawnchorus predict ARGS --engine torch`` run from ``folder`` (relative paths, as users type them)."""
    with working_folder(folder):
        result = runner.invoke(cli, ["predict", *args, "--engine", "torch"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def site(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A field site: rec/a.wav, rec/b.wav, a tuned model (per-class thresholds), a second model, and
    ``predict tuned.pt rec --out out/run`` run from the site folder."""
    from dawnchorus.models.modelfile import load_model

    root = tmp_path_factory.mktemp("site")
    for index, name in enumerate(("a", "b")):
        write_audio(root / "rec" / f"{name}.wav", synthetic_audio(12.0, seed=40 + index), 32000)
    model = load_model(model_file)
    model.thresholds = {"global": 0.5, "per_class": list(TUNED.values())}
    model.save(root / "tuned.pt")
    shutil.copy(model_file, root / "other.pt")
    predict(root, "tuned.pt", "rec", "--out", "out/run")
    return root


@pytest.fixture
def results(site: Path, tmp_path: Path) -> Path:
    """A copy of the site's run folder elsewhere (its run.json names the site's recordings)."""
    copy = tmp_path / "copied" / "run"
    shutil.copytree(site / "out" / "run", copy)
    return copy


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """The working folder is one where no recording of the site is (as for a user reviewing later)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    with working_folder(folder):
        yield folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_run_json(results: Path, change) -> None:
    path = results / RUN_INFO_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ---- written by predict --------------------------------------------------------------------------


def test_predict_records_model_thresholds_settings_and_each_recording(site: Path) -> None:
    run = site / "out" / "run"
    info = read_run_info(run)
    assert info is not None and info.format == 1 and info.dawnchorus == __version__
    assert info.models == (RunModel(str((site / "tuned.pt").resolve()), sha256(site / "tuned.pt"), 1.0),)
    assert info.labels == ("aaa", "bbb", "ccc")
    assert info.thresholds == TUNED
    assert info.settings == {
        "hop_s": 5.0, "smoothing": None, "overlap_average": False, "max_scaling": None, "calibrated": False,
        "engine": "torch", "threshold": None,
    }
    assert info.tag == next((run / "parts").iterdir()).name
    table = pd.read_csv(run / "predictions.csv")
    assert set(info.recordings) == set(table["file"]) == {"rec/a.wav", "rec/b.wav"}
    for file, recording in info.recordings.items():
        where = (site / file).resolve()
        assert recording == RunRecording(file, str(where), os.path.getsize(where))


def test_an_ensemble_lists_every_member_and_its_weight(site: Path) -> None:
    predict(site, "tuned.pt", "other.pt", "rec", "--weights", "3,1", "--out", "out/ensemble")
    info = read_run_info(site / "out" / "ensemble")
    assert info is not None and info.single_model is None
    assert [(m.path, m.sha256) for m in info.models] == [
        (str((site / name).resolve()), sha256(site / name)) for name in ("tuned.pt", "other.pt")
    ]
    assert [m.weight for m in info.models] == pytest.approx([0.75, 0.25])
    # the thresholds applied: the members' per-class ones, weighted (the other model's are 0.5)
    assert info.thresholds == pytest.approx({k: 0.75 * t + 0.25 * 0.5 for k, t in TUNED.items()}, abs=1e-6)
    assert set(info.recordings) == {"rec/a.wav", "rec/b.wav"}


def test_a_resumed_run_rewrites_it_and_keeps_the_tables_spelling(site: Path, results: Path) -> None:
    # resumed from the site with the recordings spelt absolutely and another threshold: nothing is
    # recomputed, the tables keep the first run's 'file' values, and run.json says what this run applied
    predict(site, "tuned.pt", str(site / "rec"), "--out", str(results), "--threshold", "0.2")
    info = read_run_info(results)
    assert info is not None
    assert info.thresholds == {"aaa": 0.2, "bbb": 0.2, "ccc": 0.2}
    assert info.settings["threshold"] == 0.2
    assert set(info.recordings) == set(pd.read_csv(results / "predictions.csv")["file"]) == {
        "rec/a.wav", "rec/b.wav"
    }


def test_a_recording_removed_during_the_run_is_left_out_and_the_run_finishes(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dawnchorus.inference.run as run_module

    shutil.copytree(site / "rec", tmp_path / "rec")
    shutil.copy(site / "tuned.pt", tmp_path / "tuned.pt")
    write_errors = run_module.write_errors

    def remove_then_write(*args):  # the recording goes while the run closes, after it was predicted
        (tmp_path / "rec" / "b.wav").unlink()
        return write_errors(*args)

    monkeypatch.setattr(run_module, "write_errors", remove_then_write)
    predict(tmp_path, "tuned.pt", "rec", "--out", "out")
    info = read_run_info(tmp_path / "out")
    assert info is not None and set(info.recordings) == {"rec/a.wav"}


def test_written_and_read_back_equal(tmp_path: Path) -> None:
    info = RunInfo(
        models=(RunModel("/m/one.pt", "a" * 64, 0.5), RunModel(None, "b" * 64, 0.5)),
        labels=("x", "y"),
        thresholds={"x": 0.25, "y": 0.75},
        settings={"hop_s": 2.5, "smoothing": [1.0, 2.0, 1.0], "overlap_average": True, "engine": "onnx"},
        recordings={"r.wav": RunRecording("r.wav", "/data/r.wav", 10)},
        tag="t",
    )
    assert write_run_info(tmp_path, info) == tmp_path / RUN_INFO_FILE
    assert read_run_info(tmp_path) == info
    assert read_run_info(tmp_path / "none") is None


# ---- read by review ------------------------------------------------------------------------------


def test_review_from_another_folder_finds_recordings_and_thresholds(results: Path, site: Path,
                                                                    elsewhere: Path) -> None:
    run = open_run(results)
    assert run.thresholds == TUNED
    assert RUN_INFO_FILE in run.threshold_source
    assert sorted(run.files.values()) == ["rec/a.wav", "rec/b.wav"]
    for rid, name in run.files.items():
        assert run.recordings[rid] == (site / name).resolve()
    client = TestClient(create_app(run, VerdictStore(results / REVIEWS_FILE)))
    item = client.get("/api/items").json()["items"][0]
    sound = client.get(item["audio"])
    assert sound.status_code == 200 and sound.content.startswith(b"RIFF")


def test_review_command_started_elsewhere_serves_audio_with_the_runs_thresholds(results: Path) -> None:
    server = Server(results)  # started in the repository folder, not where predict ran
    try:
        assert "run.json" in "".join(server.lines) and "not found" not in "".join(server.lines)
        with httpx.Client() as http:
            info = http.get(server.url + "api/info").json()
            item = http.get(server.url + "api/items").json()["items"][0]
            sound = http.get(server.url + item["audio"].lstrip("/"))
        assert info["thresholds"] == TUNED
        assert all(r["found"] for r in info["recordings"])
        assert sound.status_code == 200 and sound.content.startswith(b"RIFF")
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()


def test_model_and_threshold_options_win_over_run_json(results: Path, site: Path) -> None:
    assert open_run(results, threshold=0.4).thresholds == {"aaa": 0.4, "bbb": 0.4, "ccc": 0.4}
    given = {"aaa": 0.1, "bbb": 0.2, "ccc": 0.3}
    assert open_run(results, thresholds=given, source="m.pt").thresholds == given


def test_a_run_without_run_json_reviews_as_before(results: Path) -> None:
    (results / RUN_INFO_FILE).unlink()
    run = open_run(results)
    assert run.thresholds == {"aaa": 0.5, "bbb": 0.5, "ccc": 0.5}
    assert run.threshold_source == "0.5 (no model given)"


def test_without_combined_tables_the_parts_of_run_json_s_tag_are_reviewed(results: Path) -> None:
    for name in ("predictions.parquet", "predictions.csv"):
        (results / name).unlink()
    info = read_run_info(results)
    assert info is not None
    own = results / "parts" / info.tag
    newer = results / "parts" / "m0000000000000000-h5000ms-nosmooth-noavg"  # another run's, written later
    newer.mkdir()
    for part in own.glob("*.parquet"):
        table = pd.read_parquet(part)
        table[["aaa", "bbb", "ccc"]] = 0.0
        table.to_parquet(newer / part.name)
    os.utime(newer, (own.stat().st_mtime + 100,) * 2)
    run = open_run(results)
    expected = pd.concat([pd.read_parquet(p) for p in sorted(own.glob("*.parquet"))])
    assert run.scores().sum() == pytest.approx(expected[["aaa", "bbb", "ccc"]].to_numpy().sum(), rel=1e-6)
    assert run.scores().sum() > 0
    (results / RUN_INFO_FILE).unlink()  # without run.json: the newest parts folder, as before
    assert open_run(results).scores().sum() == 0


def test_run_json_of_other_labels_is_refused_in_one_line(results: Path) -> None:
    def other_labels(data: dict) -> None:
        data["labels"], data["thresholds"] = ["x"], {"x": 0.5}

    edit_run_json(results, other_labels)
    with pytest.raises(InputError, match=r"run.json: thresholds: none for 3 label\(s\).*another run"):
        open_run(results)
    assert open_run(results, threshold=0.5).thresholds["aaa"] == 0.5  # the option still works


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["thresholds"].update(bbb="high"), "thresholds.bbb: must be a number, not a string"),
        (lambda d: d["thresholds"].update(bbb=1.5), "thresholds.bbb: 1.5 is not between 0 and 1"),
        (lambda d: d["recordings"][0].update(path="rec/a.wav"), "recordings[0].path: 'rec/a.wav' is not"),
        (lambda d: d["recordings"][1].update(size="big"), "recordings[1].size: must be an integer, not a"),
        (lambda d: d["recordings"][0].update(path="/x/../a.wav"), "recordings[0].path: '/x/../a.wav' has a"),
        (lambda d: d["recordings"][1].pop("file"), "recordings[1].file: missing"),
        (lambda d: d.update(recordings={"a": 1}), "recordings: must be a list, not an object"),
        (lambda d: d.update(format=99), "format: 99: written by a newer dawnchorus"),
        (lambda d: d.update(tag="../../etc"), "tag: '../../etc' is not a parts folder name"),
        (lambda d: d.pop("models"), "models: missing"),
        (lambda d: d["models"][0].update(sha256="xyz"), "models[0].sha256: must be 64 lower-case hex"),
        (lambda d: d["labels"].append(7), "labels[3]: must be a non-empty string, not an integer"),
        (lambda d: d["settings"].update(overlap_average="yes"), "settings.overlap_average: must be true/"),
    ],
)
def test_malformed_run_json_is_one_line_naming_the_field_and_exit_2(
    results: Path, tmp_path: Path, change, message: str
) -> None:
    edit_run_json(results, change)
    out = tmp_path / "verified.csv"
    result = runner.invoke(cli, ["review", str(results), "--export", "csv", "--out", str(out)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {results / RUN_INFO_FILE}: {message}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "not valid JSON"), ("[1, 2]", "(top level): must be a JSON object, not a list"),
     ('{"format": NaN}', "not valid JSON (NaN is not a number JSON allows"),
     ("[" * 100_000, "not valid JSON (nested too deeply)")],
)
def test_run_json_that_is_not_an_object_is_one_line(
    results: Path, tmp_path: Path, text: str, message: str
) -> None:
    (results / RUN_INFO_FILE).write_text(text)
    out = str(tmp_path / "x.csv")
    result = runner.invoke(cli, ["review", str(results), "--export", "csv", "--out", out])
    assert result.exit_code == 2
    assert f"{results / RUN_INFO_FILE}: {message}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("target", ["other name", "same name, other size", "system file"])
def test_a_run_json_path_never_reaches_another_file(results: Path, site: Path, tmp_path: Path,
                                                    elsewhere: Path, target: str) -> None:
    impostor = {
        "other name": site / "rec" / "b.wav",  # a recording of the run, under another recording's name
        "same name, other size": tmp_path / "x" / "a.wav",
        "system file": Path("/etc/passwd"),
    }[target]
    if target == "same name, other size":
        write_audio(impostor, synthetic_audio(3.0, seed=99), 32000)
    edit_run_json(results, lambda d: next(r for r in d["recordings"] if r["file"] == "rec/a.wav").update(
        path=str(impostor)
    ))
    run = open_run(results)
    by_name = {name: run.recordings[rid] for rid, name in run.files.items()}
    assert by_name["rec/a.wav"] is None  # not where run.json says, not found otherwise: no sound
    assert by_name["rec/b.wav"] == (site / "rec" / "b.wav").resolve()
    client = TestClient(create_app(run, VerdictStore(results / REVIEWS_FILE)))
    items = client.get("/api/items", params={"file": "rec/a.wav", "limit": 1}).json()["items"]
    reply = client.get(items[0]["audio"])
    assert reply.status_code == 404 and "not found on disk" in reply.json()["error"]


def name_in_tables(results: Path, old: str, new: str) -> None:
    """The run's table names recording ``old`` as ``new`` (as a folder from elsewhere may)."""
    table = pd.read_parquet(results / "predictions.parquet")
    table["file"] = table["file"].replace(old, new)
    table.to_parquet(results / "predictions.parquet")
    (results / "predictions.csv").unlink()


@pytest.mark.parametrize("target", ["absolute path elsewhere", "../ out of the site", "link out of the site",
                                    "system file"])
def test_without_run_json_a_tables_name_never_reaches_a_file_outside_the_recordings(
    results: Path, site: Path, tmp_path: Path, target: str
) -> None:
    """The fallback from the tables' ``file`` column gets run.json's checks: only audio files under the
    working folder, the results folder's parent or an --audio folder, links followed."""
    private = tmp_path / "private" / "a.wav"  # a recording of the user's that is not of this run
    write_audio(private, synthetic_audio(12.0, seed=40), 32000)
    (results / RUN_INFO_FILE).unlink()
    if target == "link out of the site":
        (site / "rec" / "linked.wav").symlink_to(private)
    impostor = {
        "absolute path elsewhere": str(private),
        "../ out of the site": os.path.relpath(private, site),
        "link out of the site": "rec/linked.wav",
        "system file": "/etc/passwd",
    }[target]
    name_in_tables(results, "rec/a.wav", impostor)
    try:
        with working_folder(site):  # where predict ran: rec/b.wav is found as the table names it
            run = open_run(results)
    finally:
        (site / "rec" / "linked.wav").unlink(missing_ok=True)
    by_name = {name: run.recordings[rid] for rid, name in run.files.items()}
    assert by_name[impostor] is None
    assert by_name["rec/b.wav"] == (site / "rec" / "b.wav").resolve()
    client = TestClient(create_app(run, VerdictStore(results / REVIEWS_FILE)))
    items = client.get("/api/items", params={"file": impostor, "limit": 1}).json()["items"]
    for media in ("audio", "spectrogram"):
        reply = client.get(items[0][media])
        assert reply.status_code == 404 and "not found on disk" in reply.json()["error"]


def test_an_audio_folder_s_file_of_another_size_than_run_json_records_is_not_the_recording(
    results: Path, site: Path, tmp_path: Path, elsewhere: Path
) -> None:
    given = tmp_path / "given"
    write_audio(given / "a.wav", synthetic_audio(3.0, seed=99), 32000)  # same name, another recording
    shutil.copy(site / "rec" / "b.wav", given / "b.wav")  # the run's b.wav, moved here
    edit_run_json(results, lambda d: [r.update(path="/moved/away/" + Path(r["path"]).name)
                                      for r in d["recordings"]])
    run = open_run(results, audio_dirs=[given])
    by_name = {name: run.recordings[rid] for rid, name in run.files.items()}
    assert by_name["rec/a.wav"] is None
    assert by_name["rec/b.wav"] == (given / "b.wav").resolve()


# ---- calibrate takes the run's model from it --------------------------------------------------------


def reviewed_copy(site: Path, folder: Path) -> Path:
    """``predict`` with a copy of the tuned model into folder/out, and a verdict on every item of the
    random queue (present when its score is at least 0.5)."""
    shutil.copytree(site / "rec", folder / "rec")
    shutil.copy(site / "tuned.pt", folder / "model.pt")
    predict(folder, "model.pt", "rec", "--out", "out")
    results = folder / "out"
    run = open_run(results)
    store = VerdictStore(results / REVIEWS_FILE)
    for item in run.query(order="random", limit=500)[1]:
        verdict = "present" if item["score"] >= 0.5 else "absent"
        fields = {k: item[k] for k in ("file", "start_s", "end_s", "label", "score")}
        store.add(item_id=item["id"], verdict=verdict, queue="random", score_bin=item["score_bin"], **fields)
    return results


def test_calibrate_fits_the_model_run_json_names_while_it_is_unchanged(site: Path, tmp_path: Path) -> None:
    results = reviewed_copy(site, tmp_path)
    model = tmp_path / "model.pt"
    before = sha256(model)
    shown = runner.invoke(cli, ["calibrate", str(results), "--min-verdicts", "2"])
    assert shown.exit_code == 0, shown.output
    assert f"model: {model.resolve()} (named by {results / RUN_INFO_FILE})" in shown.output
    assert "per-species precision" in shown.output and "for" in shown.output  # the fit is shown ...
    assert "not written:" in shown.output and sha256(model) == before  # ... but the file is never rewritten
    copy = tmp_path / "calibrated.pt"
    written = runner.invoke(cli, ["calibrate", str(results), "--min-verdicts", "2", "--out", str(copy)])
    assert written.exit_code == 0 and "calibrated:" in written.output and copy.is_file()
    assert sha256(model) == before
    given = runner.invoke(cli, ["calibrate", str(results), "--model", str(model), "--min-verdicts", "2"])
    assert given.exit_code == 0 and "calibrated:" in given.output and "named by" not in given.output
    assert sha256(model) != before  # named: written in place
    # now the file is not the one that predicted the run: the table only, and why
    again = runner.invoke(cli, ["calibrate", str(results), "--min-verdicts", "2"])
    assert again.exit_code == 0, again.output
    assert "has changed since the run" in again.output and "calibrated:" not in again.output
    refused = runner.invoke(cli, ["calibrate", str(results), "--out", str(tmp_path / "x.pt")])
    assert refused.exit_code == 2 and "--out needs --model" in refused.output


def test_calibrate_never_defaults_to_an_ensembles_members(site: Path, tmp_path: Path) -> None:
    results = reviewed_copy(site, tmp_path)
    edit_run_json(results, lambda d: d["models"].append({**d["models"][0], "weight": 0.5}))
    result = runner.invoke(cli, ["calibrate", str(results)])
    assert result.exit_code == 0, result.output
    assert "the run was an ensemble of 2 models" in result.output and "calibrated:" not in result.output


def test_train_reviewed_finds_the_recordings_from_another_folder(site: Path, tmp_path: Path) -> None:
    from dawnchorus.data.reviewed import read_reviewed_windows

    results = reviewed_copy(site, tmp_path / "predicted")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with working_folder(elsewhere):
        windows = read_reviewed_windows(results, ["aaa", "bbb", "ccc"])
    recordings = (tmp_path / "predicted" / "rec").resolve()
    assert set(windows.table["file"]) == {str(recordings / "a.wav"), str(recordings / "b.wav")}
