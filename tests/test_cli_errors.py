"""The command line's error contract: a DawnchorusError is one `error: ...` line on stderr and the
error's exit code (2 bad input, 1 failed run), never a traceback; anything else is a bug and surfaces."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import timm
import torch
import typer
from typer.testing import CliRunner

import dawnchorus.errors
import dawnchorus.report.html
from dawnchorus.cli.app import DawnchorusGroup, app
from dawnchorus.config import build_config
from dawnchorus.errors import AudioError, ConfigError, DatasetError, DawnchorusError
from dawnchorus.models.classifier import SpectrogramClassifier, build_model
from dawnchorus.models.features import LogMel
from dawnchorus.models.modelfile import save_model_file
from dawnchorus.synth.soundscapes import make_dataset
from tests.conftest import REPO

runner = CliRunner()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# --- the two failures the issue names ---------------------------------------------------------------


def test_train_offline_with_default_pretrained_weights_prints_one_line_naming_the_way_out(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    make_dataset(
        data, species=3, soundscapes=1, seed=0, clips_per_species=(3, 6), soundscape_s=10.0, workers=1
    )
    # The real entry point, offline, with empty caches: no weights can be found or fetched.
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "COLUMNS": "80",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "dawnchorus", "train", str(data), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr + completed.stdout
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, completed.stderr
    line = lines[0]
    assert "no network to download ImageNet weights for mobilenetv4_conv_small" in line
    assert "--no-pretrained" in line and "--weights FILE" in line
    assert not (tmp_path / "run").exists()  # refused before the run folder (config.yaml, cache) was made


def model_file_with_backbone(path: Path, backbone: str) -> Path:
    """A valid model file, then its stored backbone name rewritten (as a newer timm would have it)."""
    config = build_config({"model": {"backbone": "test_efficientnet", "pretrained": False}})
    torch.manual_seed(0)
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, 3)
    )
    save_model_file(path, network, ["aaa", "bbb", "ccc"], config)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    stored = json.loads(payload["config"])
    stored["model"]["backbone"] = backbone
    payload["config"] = json.dumps(stored)
    torch.save(payload, path)
    return path


def test_predict_with_a_backbone_the_installed_timm_lacks_names_both_in_one_line(tmp_path: Path) -> None:
    unknown = "birdnet_v9_from_2031"
    model = model_file_with_backbone(tmp_path / "deep" / ("long-folder-name-" * 4) / "model.pt", unknown)
    recording = tmp_path / "rec.wav"
    sf.write(recording, np.zeros(32000 * 6, dtype=np.float32), 32000)

    result = runner.invoke(app, ["predict", str(model), str(recording), "--out", str(tmp_path / "out")])

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not the error escaping
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # a path longer than the terminal is not wrapped
    assert lines[0].startswith(f"error: {model}: ")
    assert repr(unknown) in lines[0] and f"timm {timm.__version__}" in lines[0]
    assert not (tmp_path / "out").exists()


# --- the handler itself -----------------------------------------------------------------------------


def every_error_class() -> list[type[DawnchorusError]]:
    classes = [
        value
        for value in vars(dawnchorus.errors).values()
        if inspect.isclass(value) and issubclass(value, DawnchorusError)
    ]
    return sorted(classes, key=lambda cls: cls.__name__)


def make_error(cls: type[DawnchorusError], message: str) -> DawnchorusError:
    if issubclass(cls, AudioError):
        return cls("/recordings/site 4/2024-05-01.flac", message)
    if issubclass(cls, DatasetError):
        return cls([message])
    return cls(message)


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda cls: cls.__name__)
def test_every_dawnchorus_error_in_a_command_is_one_message_and_its_exit_code(
    cls: type[DawnchorusError], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = "the problem, named: " + "x" * 120  # longer than the 80 columns CliRunner gives
    error = make_error(cls, message)

    def build_report(run_dir: Path) -> Path:
        raise error

    monkeypatch.setattr(dawnchorus.report.html, "build_report", build_report)
    result = runner.invoke(app, ["report", str(tmp_path)])

    assert result.exit_code == cls.exit_code
    assert cls.exit_code == (2 if issubclass(cls, dawnchorus.errors.InputError) else 1)
    assert result.stderr == f"error: {error}\n"  # whole, unwrapped, and nothing else
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit)  # a clean exit, not the error escaping


def test_errors_inside_a_command_group_are_caught_too() -> None:
    """`dawnchorus data check` is a command of a nested group; the top group's handler covers it."""
    top = typer.Typer(cls=DawnchorusGroup)
    group = typer.Typer()
    top.add_typer(group, name="data")

    @top.command()
    def other() -> None:
        """A second command, so the app stays a group."""

    @group.command("check")
    def check() -> None:
        raise ConfigError("settings.yaml: train.epochs: must be positive")

    result = runner.invoke(top, ["data", "check"])
    assert result.exit_code == 2
    assert result.stderr == "error: settings.yaml: train.epochs: must be positive\n"


@pytest.mark.parametrize("bug", [RuntimeError, ValueError, KeyError], ids=lambda cls: cls.__name__)
def test_a_bug_is_not_swallowed(
    bug: type[Exception], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def build_report(run_dir: Path) -> Path:
        raise bug("a bug in dawnchorus")

    monkeypatch.setattr(dawnchorus.report.html, "build_report", build_report)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert type(result.exception) is bug
    assert result.exit_code == 1
    assert "error:" not in result.stderr
    with pytest.raises(bug):
        runner.invoke(app, ["report", str(tmp_path)], catch_exceptions=False)


def test_the_console_script_is_the_app_that_catches() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module_name, _, attribute = scripts["dawnchorus"].partition(":")
    module = __import__(module_name, fromlist=[attribute])
    assert getattr(module, attribute) is app


def test_python_dash_m_goes_through_the_same_handler(tmp_path: Path) -> None:
    missing = tmp_path / ("a-folder-with-a-long-name-" * 4) / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "dawnchorus", "report", str(missing)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "60"},
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [f"error: {missing}: folder not found"]
    assert "Traceback" not in completed.stderr



@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("hop_s: 2.5\nformats: [csv\n", "at line 3, column 1: expected ',' or ']', but got '<stream end>'"),
        ("hop_s: 2.5: 5\n", "at line 1, column 11: mapping values are not allowed here"),
        ("hop_s: 2.5\n\x00\n", "(unacceptable character #x0000: special characters are not allowed in"),
    ],
    ids=["unclosed-list", "colon", "control-character"],
)
def test_a_config_file_that_is_not_yaml_is_one_line_saying_where(
    model_file: Path, tmp_path: Path, text: str, where: str
) -> None:
    """The parser's own message spans several lines (the text under a caret): the user gets one line
    naming the file, the line and column, and the problem, from the CLI and from the Python API."""
    from dawnchorus.config import load_predict_settings

    config = tmp_path / "settings.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_predict_settings(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: not valid YAML {where}") and "\n" not in message
    recording = tmp_path / "rec.wav"
    sf.write(recording, np.zeros(32_000 * 6, np.float32), 32_000)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(model_file), str(recording), "--out", str(out),
                                      "--config", str(config)])
    assert result.exit_code == 2 and not out.exists()
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {message}"]
