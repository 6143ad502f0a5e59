"""The review app's JSON API (Starlette TestClient) and ``dawnchorus review`` as a user runs it: queues,
filters, verdicts, undo, media by recording id only, bad requests, tokens, export, and a real server
that two writers share and that ``kill -9`` cannot make lose an acknowledged verdict."""

from __future__ import annotations

import io
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dawnchorus.cli.app import app as cli
from dawnchorus.errors import InputError
from dawnchorus.io.annotations import read_raven_table
from dawnchorus.io.verdicts import REVIEWS_FILE, SCORE_BIN_EDGES, VerdictStore, read_verdicts
from dawnchorus.review.app import create_app
from dawnchorus.review.items import open_run
from tests.conftest import REPO
from tests.review_run import RECORDING_S, Server, predicted_run

runner = CliRunner()


@pytest.fixture(scope="module")
def predicted(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return predicted_run(tmp_path_factory.mktemp("review-run"), model_file)


@pytest.fixture
def results(predicted: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run folder (no verdicts, no cache); its recordings stay where predict read them."""
    copy = tmp_path / "results"
    shutil.copytree(predicted, copy, ignore=shutil.ignore_patterns(REVIEWS_FILE + "*", "review_cache"))
    return copy


def client_for(results: Path, token: str | None = None) -> TestClient:
    run = open_run(results)
    return TestClient(create_app(run, VerdictStore(results / REVIEWS_FILE), "tester", token))


@pytest.fixture
def client(results: Path) -> TestClient:
    return client_for(results)


def all_items(client: TestClient, **params: object) -> list[dict]:
    reply = client.get("/api/items", params={"limit": 500, **params})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["total"] == len(body["items"])
    return body["items"]


# ---- items, queues, filters -----------------------------------------------------------------------


def test_items_cover_every_window_and_label_with_the_documented_fields(
    client: TestClient, results: Path
) -> None:
    table = pd.read_parquet(results / "predictions.parquet")
    items = all_items(client)
    assert len(items) == len(table) * 3
    for item in items:
        assert {"id", "file", "start_s", "end_s", "label", "score"} <= set(item)
    first = items[0]
    row = table[(table["file"] == first["file"]) & (table["start_s"] == first["start_s"])].iloc[0]
    assert first["score"] == pytest.approx(float(row[first["label"]]), abs=1e-6)
    assert len({item["id"] for item in items}) == len(items)


def test_score_and_uncertain_and_time_orders(client: TestClient) -> None:
    scores = [item["score"] for item in all_items(client, order="score")]
    assert scores == sorted(scores, reverse=True)
    distance = [abs(i["score"] - i["threshold"]) for i in all_items(client, order="uncertain")]
    assert distance == sorted(distance)
    times = [(i["file"], i["start_s"]) for i in all_items(client, order="time")]
    assert times == sorted(times)


def test_random_queue_draws_every_species_and_score_bin_before_repeating_one(client: TestClient) -> None:
    items = all_items(client, order="random")
    strata = [(i["label"], i["score_bin"]) for i in items]
    distinct = set(strata)
    assert strata[: len(distinct)] and set(strata[: len(distinct)]) == distinct
    assert all(0 <= b < len(SCORE_BIN_EDGES) - 1 for _, b in strata)
    assert [i["id"] for i in all_items(client, order="random")] == [i["id"] for i in items]  # stable


def test_filters_species_recording_and_score_range(client: TestClient) -> None:
    only_bbb = all_items(client, species="bbb")
    assert only_bbb and {i["label"] for i in only_bbb} == {"bbb"}
    two = all_items(client, species="aaa,ccc")
    assert {i["label"] for i in two} == {"aaa", "ccc"}
    assert all_items(client, species=["aaa", "ccc"]) == two
    first = only_bbb[0]
    by_id = all_items(client, file=first["recording"])
    by_name = all_items(client, file=first["file"])
    assert by_id == by_name and {i["file"] for i in by_id} == {first["file"]}
    assert len(by_id) == int(RECORDING_S / 5) * 3
    middle = all_items(client, min_score=0.45, max_score=0.55)
    assert middle and all(0.45 <= i["score"] <= 0.55 for i in middle)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"order": "loudest"}, "order must be one of score, uncertain, random, time"),
        ({"species": "dodo"}, "species: dodo not among the model's labels"),
        ({"file": "nowhere.wav"}, "file: no recording"),
        ({"min_score": "high"}, "min_score: 'high' is not a number"),
        ({"limit": "-3"}, "limit"),
    ],
)
def test_bad_queries_get_422_naming_the_parameter(client: TestClient, params: dict, message: str) -> None:
    reply = client.get("/api/items", params=params)
    assert reply.status_code == 422
    assert message in reply.json()["error"]


# ---- verdicts -------------------------------------------------------------------------------------


def test_verdict_is_stored_listed_and_undone(client: TestClient, results: Path) -> None:
    item = all_items(client)[0]
    body = {"item_id": item["id"], "label": item["label"], "verdict": "present", "note": "clear song"}
    reply = client.post("/api/verdicts", json=body)
    assert reply.status_code == 201, reply.text
    verdict_id = reply.json()["id"]
    stored = read_verdicts(results)  # committed before the reply
    assert stored["id"].tolist() == [verdict_id]
    assert stored.iloc[0][["file", "label", "verdict", "note", "reviewer"]].tolist() == [
        item["file"], item["label"], "present", "clear song", "tester"]
    assert [v["id"] for v in client.get("/api/verdicts").json()["verdicts"]] == [verdict_id]
    again = all_items(client)[0]
    assert again["verdict"]["verdict"] == "present"
    assert len(all_items(client, unreviewed=1)) == len(all_items(client)) - 1
    assert client.delete(f"/api/verdicts/{verdict_id}").status_code == 200
    assert client.get("/api/verdicts").json()["verdicts"] == []
    assert read_verdicts(results).empty


def test_verdict_on_another_label_of_the_window_and_another_species(
    client: TestClient, results: Path
) -> None:
    item = all_items(client, species="aaa")[0]
    reply = client.post("/api/verdicts", json={"item_id": item["id"], "label": "bbb", "verdict": "other",
                                               "other_label": "norcar"})
    assert reply.status_code == 201, reply.text
    row = read_verdicts(results).iloc[0]
    assert (row["label"], row["verdict"], row["other_label"]) == ("bbb", "other", "norcar")
    assert row["item_id"] == item["id"].rsplit(":", 1)[0] + ":bbb"
    scores = {label: score for label, score in item["top"]}
    assert row["score"] == pytest.approx(scores["bbb"], abs=1e-6)


def test_random_queue_verdict_records_its_score_bin(client: TestClient, results: Path) -> None:
    item = all_items(client, order="random")[0]
    client.post("/api/verdicts", json={"item_id": item["id"], "verdict": "absent", "queue": "random"})
    row = read_verdicts(results).iloc[0]
    assert (row["queue"], row["score_bin"]) == ("random", item["score_bin"])


def test_a_verdict_on_another_label_of_a_random_item_is_not_in_the_random_sample(
    client: TestClient, results: Path
) -> None:
    item = all_items(client, order="random")[0]
    other = next(label for label, _ in item["top"] if label != item["label"])
    answer = client.post(
        "/api/verdicts", json={"item_id": item["id"], "label": other, "verdict": "absent", "queue": "random"}
    )
    assert answer.status_code in (200, 201), answer.text
    row = read_verdicts(results).iloc[0]
    assert (row["label"], row["queue"], row["score_bin"]) == (other, "", -1)  # kept, but not a sample item


def test_progress_counts_detections_and_verdicts_per_species(client: TestClient, results: Path) -> None:
    table = pd.read_parquet(results / "predictions.parquet")
    for item in all_items(client, species="ccc")[:3]:
        client.post("/api/verdicts", json={"item_id": item["id"], "verdict": "present"})
    rows = {row["label"]: row for row in client.get("/api/progress").json()["species"]}
    assert rows["ccc"]["present"] == rows["ccc"]["reviewed"] == 3
    assert rows["aaa"]["reviewed"] == 0
    assert rows["bbb"]["detections"] == int((table["bbb"] >= 0.5).sum())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "request body: not JSON"),
        (b"[1, 2]", "request body: a JSON object"),
        (b'{"verdict": "present"}', "item_id: missing"),
        (b'{"item_id": "nope:0:aaa", "verdict": "present"}', "item_id: 'nope:0:aaa' is not an item of"),
        (b'{"item_id": "ITEM", "verdict": "maybe"}', "verdict: must be one of present, absent, unsure, oth"),
        (b'{"item_id": "ITEM", "verdict": "other"}', "other_label: needed with verdict 'other'"),
        (b'{"item_id": "ITEM", "verdict": "present", "label": "dodo"}', "label: 'dodo' is not one of"),
        (b'{"item_id": "ITEM", "verdict": "present", "score": 1}', "unknown field(s) score"),
        (b'{"item_id": "ITEM", "verdict": "present", "note": 5}', "note: must be a string"),
        (b'{"item_id": "ITEM", "verdict": "present", "queue": "mine"}', "queue: must be one of"),
    ],
)
def test_malformed_verdict_gets_422_with_the_field_and_nothing_is_stored(
    client: TestClient, results: Path, body: bytes, message: str
) -> None:
    item = all_items(client)[0]
    reply = client.post("/api/verdicts", content=body.replace(b"ITEM", item["id"].encode()),
                        headers={"Content-Type": "application/json"})
    assert reply.status_code == 422
    assert message in reply.json()["error"]
    assert read_verdicts(results).empty


@pytest.mark.parametrize("path", ["/api/verdicts/999", "/api/verdicts/abc", "/api/verdicts/-1"])
def test_undo_of_an_unknown_verdict_is_404(client: TestClient, path: str) -> None:
    reply = client.delete(path)
    assert reply.status_code == 404
    assert "error" in reply.json()


# ---- media: by recording id and window only -------------------------------------------------------


def test_spectrogram_and_audio_of_a_window_with_context_are_served_and_cached(client: TestClient,
                                                                              results: Path) -> None:
    middle = next(i for i in all_items(client, order="time") if i["start_s"] == 10.0)
    first = next(i for i in all_items(client, order="time") if i["start_s"] == 0.0)
    image = client.get(middle["spectrogram"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    width, height = struct.unpack(">II", image.content[16:24])
    assert width > 100 and height > 50
    assert (results / "review_cache" / middle["recording"] / "10000.png").is_file()

    def seconds(url: str) -> float:
        reply = client.get(url)
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav"
        samples, rate = sf.read(io.BytesIO(reply.content))
        return len(samples) / rate

    assert seconds(middle["audio"]) == pytest.approx(5.0)
    assert seconds(middle["audio_context"]) == pytest.approx(7.0)  # a second either side
    assert seconds(first["audio_context"]) == pytest.approx(6.0)  # nothing before the start


@pytest.mark.parametrize(
    "path",
    [
        "/api/audio/../../etc/passwd",
        "/api/audio/..%2F..%2F..%2Fetc%2Fpasswd/0.wav",
        "/api/spectrogram/%2e%2e%2f%2e%2e%2fpredictions/0.png",
        "/api/spectrogram/unknown-0123456789/0.png",
        "/api/audio/RECORDING/999000.wav",
        "/api/audio/RECORDING/abc.wav",
        "/static/../reviews.sqlite",
        "/static/%2e%2e/app.py",
        "/static/..%2F..%2Fio%2Fverdicts.py",
        "/api/items/../../predictions.csv",
    ],
)
def test_paths_outside_the_run_and_unknown_ids_get_404(client: TestClient, path: str) -> None:
    recording = all_items(client)[0]["recording"]
    reply = client.get(path.replace("RECORDING", recording))
    assert reply.status_code == 404
    assert b"root:" not in reply.content and b"import" not in reply.content


def test_missing_recording_is_a_404_naming_it(client: TestClient, results: Path, tmp_path: Path) -> None:
    item = all_items(client)[0]
    Path(item["file"]).rename(tmp_path / "moved.wav")
    try:
        reply = client_for(results).get(item["spectrogram"])
        assert reply.status_code == 404
        assert "not found on disk" in reply.json()["error"]
    finally:
        (tmp_path / "moved.wav").rename(item["file"])


# ---- token ----------------------------------------------------------------------------------------


def test_with_a_token_every_api_request_must_carry_it(results: Path) -> None:
    client = client_for(results, token="s3cret")
    assert client.get("/").status_code == 200  # the page itself; it reads the token from its address
    assert client.get("/api/items").status_code == 403
    assert client.get("/api/items", params={"token": "wrong"}).status_code == 403
    assert client.get("/api/items", params={"token": "s3cret"}).status_code == 200
    assert client.get("/api/info", headers={"X-Review-Token": "s3cret"}).status_code == 200
    assert client.post("/api/verdicts", json={}).status_code == 403


def test_page_and_its_files_are_served_by_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "dawnchorus review" in page.text
    assert "http" not in re.sub(r"<!--.*?-->", "", page.text)  # no CDN
    for name in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert client.get("/" + name).status_code == 200


# ---- the command: export, errors ------------------------------------------------------------------


def test_export_raven_and_csv_give_the_verified_selections(client: TestClient, results: Path,
                                                           tmp_path: Path) -> None:
    items = all_items(client, order="time")
    given = {items[0]["id"]: "present", items[1]["id"]: "absent", items[4]["id"]: "unsure"}
    for item_id, verdict in given.items():
        client.post("/api/verdicts", json={"item_id": item_id, "verdict": verdict})
    other = {"item_id": items[7]["id"], "verdict": "other", "other_label": "norcar"}
    client.post("/api/verdicts", json=other)
    raven = tmp_path / "verified.selections.txt"
    result = runner.invoke(cli, ["review", str(results), "--export", "raven", "--out", str(raven)])
    assert result.exit_code == 0, result.output
    assert "2 verified selection(s)" in result.output
    table = read_raven_table(raven)
    assert table["Species Code"].tolist() == [items[0]["label"], "norcar"]
    assert table["Begin Path"].tolist() == [items[0]["file"], items[7]["file"]]
    assert table["File Offset (s)"].tolist() == [items[0]["start_s"], items[7]["start_s"]]
    csv = tmp_path / "verified.csv"
    assert runner.invoke(cli, ["review", str(results), "--export", "csv", "--out", str(csv)]).exit_code == 0
    exported = pd.read_csv(csv)
    assert exported["verdict"].tolist() == ["present", "other"]
    assert exported["model_label"].tolist() == [items[0]["label"], items[7]["label"]]
    assert client.get("/api/export", params={"format": "raven"}).text == raven.read_text()


def test_raven_begin_times_follow_the_recordings_one_after_another(client: TestClient, results: Path,
                                                                   tmp_path: Path) -> None:
    items = all_items(client, order="time")
    last_file = [i for i in items if i["file"] == items[-1]["file"]]
    client.post("/api/verdicts", json={"item_id": last_file[0]["id"], "verdict": "present"})
    reply = client.get("/api/export", params={"format": "raven"})
    out = tmp_path / "t.txt"
    out.write_text(reply.text)
    row = read_raven_table(out).iloc[0]
    # the third recording: after two of RECORDING_S each
    assert row["Begin Time (s)"] == pytest.approx(2 * RECORDING_S + last_file[0]["start_s"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--export", "raven"], "--export needs --out PATH"),
        (["--export", "pdf", "--out", "x"], "--export must be one of raven, csv"),
        (["--out", "x.txt"], "--out goes with --export"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(results: Path, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["review", str(results), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_folder_that_is_not_a_run_gives_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "x.csv")
    result = runner.invoke(cli, ["review", str(tmp_path), "--export", "csv", "--out", out])
    assert result.exit_code == 2
    assert "not a dawnchorus predict output folder" in result.output
    missing = runner.invoke(cli, ["review", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no such folder" in missing.output


def test_missing_extra_names_the_install_command(results: Path) -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
        "from dawnchorus.cli.app import main\n"
        f"sys.argv = ['dawnchorus', 'review', {str(results)!r}]\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert 'pip install "dawnchorus[review]"' in done.stderr
    assert "Traceback" not in done.stderr


# ---- a real server: two writers, kill -9, Ctrl-C ------------------------------------------------


def test_two_servers_and_four_threads_writing_at_once_keep_every_verdict(results: Path) -> None:
    servers = [Server(results), Server(results)]  # two processes on one store: two reviewers
    try:
        with httpx.Client() as http:
            items = http.get(servers[0].url + "api/items", params={"limit": 500}).json()["items"]
        acknowledged: list[int] = []
        lock = threading.Lock()

        def review(worker: int) -> None:
            base = servers[worker % 2].url
            with httpx.Client(timeout=60) as http:
                for item in items[worker::4]:
                    reply = http.post(base + "api/verdicts", json={
                        "item_id": item["id"], "verdict": "present" if worker % 2 else "absent",
                        "reviewer": f"reviewer{worker}"})
                    assert reply.status_code == 201, reply.text
                    with lock:
                        acknowledged.append(reply.json()["id"])

        threads = [threading.Thread(target=review, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(acknowledged) == len(items)
    finally:
        for server in servers:
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
    assert servers[0].process.returncode == -signal.SIGKILL
    stored = read_verdicts(results)
    assert sorted(stored["id"]) == sorted(acknowledged)
    assert len(set(stored["item_id"])) == len(items)


def test_ctrl_c_stops_the_server_and_prints_the_verdicts_per_species(results: Path) -> None:
    server = Server(results, "--reviewer", "ana")
    with httpx.Client() as http:
        item = http.get(server.url + "api/items", params={"species": "bbb"}).json()["items"][0]
        http.post(server.url + "api/verdicts", json={"item_id": item["id"], "verdict": "present"})
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0
    output = server.rest()
    assert "bbb: 1 present" in output
    assert read_verdicts(results)["reviewer"].tolist() == ["ana"]


def test_another_host_prints_a_token_and_refuses_requests_without_it(results: Path) -> None:
    server = Server(results, "--host", "0.0.0.0")
    try:
        assert "?token=" in server.url
        base, token = server.url.split("?token=")
        base = base.replace("0.0.0.0", "127.0.0.1")
        with httpx.Client() as http:
            assert http.get(base + "api/items").status_code == 403
            assert http.get(base + "api/items", params={"token": token}).status_code == 200
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()


def test_scores_of_the_items_are_the_run_table(client: TestClient, results: Path) -> None:
    table = pd.read_csv(results / "predictions.csv")
    items = all_items(client, order="time", species="aaa")
    assert np.allclose([i["score"] for i in items], table.sort_values(["file", "start_s"])["aaa"], atol=1e-5)


def test_kill_9_mid_review_loses_no_acknowledged_verdict(results: Path) -> None:
    server = Server(results)
    with httpx.Client() as http:
        items = http.get(server.url + "api/items", params={"limit": 500}).json()["items"]
    acknowledged: list[int] = []
    twenty = threading.Event()

    def review() -> None:
        with httpx.Client(timeout=60) as http:
            for item in items * 5:  # more than it gets to post before the kill
                try:
                    body = {"item_id": item["id"], "verdict": "present"}
                    reply = http.post(server.url + "api/verdicts", json=body)
                except httpx.TransportError:
                    return  # the server is gone
                acknowledged.append(reply.json()["id"])
                if len(acknowledged) == 20:
                    twenty.set()

    writer = threading.Thread(target=review)
    writer.start()
    assert twenty.wait(timeout=300)
    server.process.send_signal(signal.SIGKILL)  # while the writer is still posting
    server.process.wait()
    writer.join()
    assert len(acknowledged) < len(items) * 5
    stored = set(VerdictStore(results / REVIEWS_FILE).history()["id"])
    assert set(acknowledged) <= stored
    assert len(stored - set(acknowledged)) <= 1  # at most the one committed as the server died


# ---- thresholds: from the model file ----------------------------------------------------------------


def test_model_thresholds_set_the_uncertain_queue_and_detections(results: Path, model_file: Path,
                                                                 tmp_path: Path) -> None:
    from dawnchorus.models.modelfile import load_model

    model = load_model(model_file)
    model.thresholds = {"global": 0.5, "per_class": [0.3, 0.6, 0.55]}
    tuned = model.save(tmp_path / "tuned.pt")
    server = Server(results, "--model", str(tuned))  # as a user starts it
    try:
        assert f"thresholds: {tuned}" in "".join(server.lines)
        with httpx.Client() as http:
            info = http.get(server.url + "api/info").json()
        assert info["thresholds"] == {"aaa": 0.3, "bbb": 0.6, "ccc": 0.55}
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    run = open_run(results, thresholds=info["thresholds"])
    client = TestClient(create_app(run, VerdictStore(results / REVIEWS_FILE)))
    items = all_items(client, order="uncertain")
    assert {i["label"]: i["threshold"] for i in items} == {"aaa": 0.3, "bbb": 0.6, "ccc": 0.55}
    distance = [abs(i["score"] - i["threshold"]) for i in items]
    assert distance == sorted(distance)
    table = pd.read_parquet(results / "predictions.parquet")
    rows = {row["label"]: row for row in client.get("/api/progress").json()["species"]}
    assert rows["aaa"]["detections"] == int((table["aaa"] >= 0.3).sum())


def test_a_model_without_the_runs_labels_is_refused_in_one_line(results: Path) -> None:
    with pytest.raises(InputError, match="no threshold for 1 label"):
        open_run(results, thresholds={"aaa": 0.5, "bbb": 0.5}, source="other.pt")
    with pytest.raises(InputError, match="--threshold: 2.0 is not between 0 and 1"):
        open_run(results, threshold=2.0)


def test_a_verdict_that_cannot_be_saved_is_a_503_naming_the_store(client: TestClient, results: Path) -> None:
    item = all_items(client)[0]
    (results / REVIEWS_FILE).unlink()
    (results / REVIEWS_FILE).mkdir()  # the store is gone and cannot be re-created
    reply = client.post("/api/verdicts", json={"item_id": item["id"], "verdict": "present"})
    assert reply.status_code == 503
    assert "reviews.sqlite: verdict store cannot be used" in reply.json()["error"]


def test_media_are_served_when_the_cache_cannot_be_written(client: TestClient, results: Path) -> None:
    (results / "review_cache").write_text("a file where the cache folder would go")
    item = all_items(client)[0]
    image = client.get(item["spectrogram"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    sound = client.get(item["audio"])
    assert sound.status_code == 200 and sound.content.startswith(b"RIFF")


def test_a_port_in_use_gives_one_line_and_exit_2(results: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["review", str(results), "--port", str(port)])
    assert result.exit_code == 2
    assert f"--host 127.0.0.1 --port {port}: cannot listen there" in result.output
    assert "Traceback" not in result.output
