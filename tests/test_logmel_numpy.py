"""The numpy log-mel frontend (prediction without torch): the torch frontend's values on real audio
for several settings, its errors, and that it imports no torch."""

from __future__ import annotations

import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from dawnchorus.io.audio import load
from dawnchorus.models.features import LogMel
from dawnchorus.models.logmel_numpy import NumpyLogMel

SR = 32000


def real_batch(real_data, sample_rate: int = SR, seconds: float = 5.0) -> np.ndarray:
    """A focal great tit, a rainy ambience, a chirp and silence: 4 windows of ``seconds``."""
    samples = int(seconds * sample_rate)
    focal = load(real_data / "focal" / "gretit1" / "2021-B32-0415_05-3.flac", sample_rate)[:samples]
    backgrounds = sorted((real_data / "background").rglob("*.*"))
    ambience = load(backgrounds[0], sample_rate)[:samples]
    t = np.arange(samples) / sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + (0.4 * sample_rate - 200) / (2 * seconds) * t**2))
    windows = [np.pad(w, (0, samples - len(w))) for w in (focal, ambience, chirp, np.zeros(samples))]
    return np.stack(windows).astype(np.float32)


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the default frontend (the one trained models use)
        {"top_db": None, "normalize": "none"},  # plain dB
        {"n_mels": 64, "fmin": 0.0, "fmax": 16000.0},
        {"n_fft": 1024, "hop_length": 320},
        {"sample_rate": 22050, "n_fft": 512, "hop_length": 256, "n_mels": 40, "fmin": 300.0, "fmax": 8000.0},
    ],
)
def test_numpy_frontend_gives_the_torch_frontends_values(settings, real_data):
    """Prediction with an ONNX graph may compute the log-mel in numpy: the CNN must see what the
    training frontend gives, to float32 rounding. Two float32 FFTs differ by rounding noise ~130 dB
    below a window's peak; near the ``top_db`` floor (80 dB below it) that is ~1e-3 dB, as torch's
    own STFT differs from librosa's float64 one (tests/test_features.py). Measured: real windows
    within 3.2e-5 sd with the default frontend (1.2e-4 with n_fft 1024), the chirp's floor 1.2e-4."""
    audio = real_batch(real_data, settings.get("sample_rate", SR))
    expected = LogMel(**settings).eval()(torch.from_numpy(audio)).detach().numpy()
    got = NumpyLogMel(**settings)(audio)
    assert got.dtype == np.float32 and got.shape == expected.shape and got.flags.c_contiguous
    if settings.get("normalize") == "none":  # dB: bins within 80 dB of the window's peak
        near = expected >= expected.max(axis=(1, 2, 3), keepdims=True) - 80.0
        np.testing.assert_allclose(got[near], expected[near], atol=2e-3, rtol=0)
        return
    np.testing.assert_allclose(got[:2], expected[:2], atol=2e-4, rtol=0)  # recordings: sd
    np.testing.assert_allclose(got, expected, atol=3e-4, rtol=0)  # the chirp's floor, silence


def test_numpy_frontend_of_empty_filters_matches_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_frontend = LogMel(fmin=999.9, fmax=1000.5).eval()
        numpy_frontend = NumpyLogMel(fmin=999.9, fmax=1000.5)
    audio = np.random.default_rng(1).standard_normal((2, SR)).astype(np.float32)
    expected = torch_frontend(torch.from_numpy(audio)).detach().numpy()
    np.testing.assert_allclose(numpy_frontend(audio), expected, atol=6e-5, rtol=0)


def test_numpy_frontend_from_settings_and_frames():
    from dawnchorus.config import AudioSettings, FrontendSettings

    frontend = NumpyLogMel.from_settings(AudioSettings(), FrontendSettings())
    reference = LogMel.from_settings(AudioSettings(), FrontendSettings())
    assert frontend.frames_for(5 * SR) == reference.frames_for(5 * SR) == 313
    assert frontend(np.zeros((1, 5 * SR), np.float32)).shape == (1, 1, 128, 313)


@pytest.mark.parametrize(
    ("audio", "message"),
    [(np.zeros(SR, np.float32), r"\(batch, samples\)"), (np.zeros((1, 500), np.float32), "at least 1025")],
)
def test_numpy_frontend_explains_bad_input(audio, message):
    with pytest.raises(ValueError, match=message):
        NumpyLogMel()(audio)


def test_numpy_frontend_refuses_what_the_torch_one_refuses():
    with pytest.raises(ValueError, match="Nyquist"):
        NumpyLogMel(fmax=20000.0)


def test_numpy_frontend_imports_no_torch():
    code = (
        "import sys, numpy as np\n"
        "from dawnchorus.models.logmel_numpy import NumpyLogMel\n"
        "NumpyLogMel()(np.zeros((1, 160000), np.float32))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("samples", [1025, 1026, 32768, 32000])
def test_numpy_frontend_of_any_length_and_an_odd_n_fft_matches_torch(samples):
    """Reflect padding down to the shortest waveform the frontends take, buffers reused across
    lengths, and the frame count of an odd ``n_fft`` (torch's STFT gives 64 frames of 32768 samples
    with n_fft 2047 and hop 512, not 1 + 32768 // 512)."""
    audio = np.random.default_rng(samples).standard_normal((2, samples)).astype(np.float32)
    for n_fft in (2048, 2047):
        torch_frontend, numpy_frontend = LogMel(n_fft=n_fft).eval(), NumpyLogMel(n_fft=n_fft)
        expected = torch_frontend(torch.from_numpy(audio)).detach().numpy()
        assert numpy_frontend.frames_for(samples) == torch_frontend.frames_for(samples) == expected.shape[-1]
        np.testing.assert_allclose(numpy_frontend(audio), expected, atol=3e-4, rtol=0)


def test_numpy_frontend_gives_each_thread_its_own_values():
    """predict's lanes call one frontend from several threads: each computes in buffers of its own."""
    frontend = NumpyLogMel()
    rng = np.random.default_rng(3)
    scales = (0.01, 1.0, 30.0, 3.0)
    batches = [rng.standard_normal((2, 5 * SR)).astype(np.float32) * scale for scale in scales]
    expected = [frontend(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            results = list(pool.map(frontend, batches * 4))
            for got, want in zip(results, expected * 4, strict=True):
                np.testing.assert_array_equal(got, want)
