"""Shared fixtures: real recordings from ../shared/data/real (skipped when absent), and the one small
model file the prediction, export and report tests run."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:  # torch and the models are imported by the fixtures that need them
    from dawnchorus.models.classifier import SpectrogramClassifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path | None:
    """The shared real-recordings folder, or None when this checkout has none beside it."""
    configured = os.environ.get("DAWNCHORUS_REAL_DATA")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "data" / "real"
    return candidate if (candidate / "manifest.csv").is_file() else None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path to the real recordings (focal/, background/, manifest.csv); skips when absent."""
    found = real_data_dir()
    if found is None:
        pytest.skip("real recordings not found: set DAWNCHORUS_REAL_DATA or put shared/ beside the repo")
    return found


# --- the shared model file ------------------------------------------------------------------------------

MODEL_LABELS = ("aaa", "bbb", "ccc")


def synthetic_audio(seconds: float, seed: int, sample_rate: int = 32000) -> np.ndarray:
    """Pink noise with frequency-modulated whistles: bird-like enough to give varied outputs."""
    from dawnchorus.augment.noise import coloured_noise

    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    audio = 0.05 * coloured_noise(n, sample_rate, 1.0, rng)
    length = int(0.4 * sample_rate)
    tau = np.arange(length) / sample_rate
    for start in rng.uniform(0, max(seconds - 1, 0.1), size=max(1, int(seconds))):
        f0 = rng.uniform(2000, 7000)
        call = np.sin(2 * np.pi * (f0 * tau + 800 * np.sin(2 * np.pi * 6 * tau) / 6)) * np.hanning(length)
        begin = int(start * sample_rate)
        audio[begin : begin + length] += 0.3 * call[: n - begin]
    return audio.astype(np.float32)


def calibrate_batch_norm(network: SpectrogramClassifier, audio: np.ndarray) -> None:
    """Set batch-norm running statistics from ``audio`` windows (random ones leave eval activations near
    zero, and statistics of other data make activations explode); leaves the network in eval mode."""
    import torch

    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    network.train()
    with torch.no_grad():
        network(torch.from_numpy(audio))
    for norm in norms:
        norm.momentum = 0.1
    network.eval()


def write_model_file(
    path: Path,
    labels: Sequence[str] = MODEL_LABELS,
    backbone: str = "test_efficientnet",
    seed: int = 0,
    calibration: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    **model_settings: Any,
) -> Path:
    """An untrained model file whose outputs still depend on the audio: weights drawn with ``seed``,
    batch-norm statistics from ``calibration`` windows (default: 30 s of :func:`synthetic_audio`)."""
    import torch

    from dawnchorus.config import build_config
    from dawnchorus.models.classifier import SpectrogramClassifier, build_model
    from dawnchorus.models.features import LogMel
    from dawnchorus.models.modelfile import save_model_file

    config = build_config({"model": {"backbone": backbone, "pretrained": False, **model_settings}})
    torch.manual_seed(seed)
    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, len(labels))
    )
    if calibration is None:
        audio = synthetic_audio(30.0, seed=11, sample_rate=config.audio.sample_rate)
        calibration = audio.reshape(-1, config.audio.clip_samples)
    calibrate_batch_norm(network, calibration)
    return save_model_file(path, network, list(labels), config, metadata=metadata)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared small model file (test_efficientnet, labels aaa, bbb, ccc); tests that change it or
    its folder copy it first."""
    return write_model_file(tmp_path_factory.mktemp("shared-model") / "model.pt")


# --- unreadable files -----------------------------------------------------------------------------------


@pytest.fixture
def deny_reading(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make a file unreadable to this process: mode 000, and where the tests run as root (which reads any
    file) the operating system's ``open`` refusing that one path with EACCES, as it would for a user."""

    def deny(path: Path) -> None:
        path.chmod(0)
        if os.geteuid() != 0:
            return
        real_open = os.open
        denied = os.path.abspath(path)

        def refusing_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if os.path.abspath(os.fsdecode(file)) == denied:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))
            return real_open(file, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)

    return deny


class FirstSamples:
    """A stand-in engine whose 'probabilities' are samples 1000-1002 of each window (so every row can
    be checked against its own window); counts the windows it classified."""

    def __init__(self) -> None:
        self.windows = 0

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        self.windows += len(audio)
        return audio[:, 1000:1003].copy()


class Interrupted(Exception):
    pass


def stop_after_segments(count: int) -> Callable[..., None]:
    """A ``progress`` callback for ``run_prediction`` that raises :class:`Interrupted` once ``count``
    segments of a long recording are saved (the segment indices it saw are on ``.seen``)."""
    seen: list[int] = []

    def progress(result: Any, done: int, total: int) -> None:
        if result.segment is not None:
            seen.append(result.segment.index)
            if len(seen) == count:
                raise Interrupted

    progress.seen = seen  # type: ignore[attr-defined]
    return progress


def finished_parts(parts: Path) -> list[Path]:
    """The finished parts under ``parts/<tag>/``: a write cut short by a kill leaves a hidden
    temporary file, never a finished part."""
    return [p for p in parts.glob("*/*.parquet") if not p.name.startswith(".")]


def kill_after_parts(process: Any, parts: Path, count: int = 3) -> int:
    """SIGKILL ``process`` (a ``subprocess.Popen``) once ``count`` parts are finished under ``parts``;
    the number finished when it died."""
    import signal
    import time

    while process.poll() is None and len(finished_parts(parts)) < count:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return len(finished_parts(parts))
