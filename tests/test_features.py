"""LogMel frontend: agreement with librosa, shapes, tone placement, normalisation, autograd, AMP."""

from __future__ import annotations

import warnings

import librosa
import numpy as np
import pytest
import torch

from dawnchorus.config import AudioSettings, FrontendSettings
from dawnchorus.io.audio import load
from dawnchorus.models.features import LogMel

SR = 32000
# Largest allowed |ours - librosa| in dB. float32 STFT rounding gives ~2e-3 dB at 80 dB below the
# maximum (measured 1.6e-3 dB on the chirp, 2.4e-4 dB on the great-tit clip).
TOLERANCE_DB = 0.01


def chirp(seconds: float = 5.0, f0: float = 200.0, f1: float = 13000.0) -> np.ndarray:
    """A linear sweep from f0 to f1 Hz at amplitude 0.5."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2)
    return (0.5 * np.sin(phase)).astype(np.float32)


def tone(frequency: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def librosa_log_mel(signal: np.ndarray, top_db: float | None) -> np.ndarray:
    """The reference: librosa in float64 with the same filterbank and reflect padding."""
    power = librosa.feature.melspectrogram(
        y=signal.astype(np.float64),
        sr=SR,
        n_fft=2048,
        hop_length=512,
        n_mels=128,
        fmin=50.0,
        fmax=14000.0,
        center=True,
        pad_mode="reflect",
        power=2.0,
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=top_db)


def ours(signal: np.ndarray, **kwargs) -> np.ndarray:
    frontend = LogMel(normalize="none", **kwargs)
    return frontend(torch.from_numpy(signal)[None])[0, 0].numpy()


def test_five_seconds_give_128_by_313():
    frontend = LogMel()
    spec = frontend(torch.randn(2, 5 * SR))
    assert spec.shape == (2, 1, 128, 313)
    assert spec.dtype == torch.float32
    assert frontend.frames_for(5 * SR) == 313
    assert frontend.frames_for(1000) == 2


def test_chirp_matches_librosa():
    signal = chirp()
    reference = librosa_log_mel(signal, top_db=80.0)
    result = ours(signal, top_db=80.0)
    assert result.shape == reference.shape
    assert np.abs(result - reference).max() < TOLERANCE_DB


def test_without_top_db_matches_librosa_on_bins_within_80_db_of_the_peak():
    noise = np.random.default_rng(0).normal(0.0, 0.01, 5 * SR).astype(np.float32)
    signal = chirp() + noise
    reference = librosa_log_mel(signal, top_db=None)
    result = ours(signal, top_db=None)
    audible = reference > reference.max() - 80.0
    assert audible.mean() > 0.9
    assert np.abs(result - reference)[audible].max() < TOLERANCE_DB
    assert result.min() >= -100.0  # 10 * log10(1e-10) floor


def test_real_great_tit_recording_matches_librosa(real_data):
    path = real_data / "focal" / "gretit1" / "2021-B32-0415_05-3.flac"
    signal = load(path, sample_rate=SR)
    reference = librosa_log_mel(signal, top_db=80.0)
    result = ours(signal, top_db=80.0)
    assert result.shape == (128, 1 + len(signal) // 512)
    assert np.abs(result - reference).max() < TOLERANCE_DB


@pytest.mark.parametrize("band", [10, 45, 80, 115])
def test_tone_peaks_in_the_band_with_the_nearest_centre(band):
    frontend = LogMel(normalize="none")
    centres = frontend.mel_center_frequencies().numpy()
    # A quarter of the way towards the next band: still nearest to `band`.
    frequency = centres[band] + 0.25 * (centres[band + 1] - centres[band])
    spec = frontend(torch.from_numpy(tone(frequency))[None])[0, 0]
    peak_band = int(spec.mean(dim=-1).argmax())
    assert peak_band == int(np.abs(centres - frequency).argmin()) == band


def test_per_sample_normalisation_gives_zero_mean_unit_std_per_item():
    batch = torch.stack([torch.from_numpy(chirp(1.0)) * 0.01, torch.randn(SR) * 3.0])
    spec = LogMel(normalize="per_sample")(batch)
    means = spec.mean(dim=(1, 2, 3))
    stds = spec.std(dim=(1, 2, 3), unbiased=False)
    torch.testing.assert_close(means, torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(stds, torch.ones(2), atol=1e-4, rtol=0)


def test_silence_stays_finite():
    spec = LogMel()(torch.zeros(2, SR))
    assert torch.isfinite(spec).all()
    assert torch.count_nonzero(spec) == 0


def test_batch_items_are_independent():
    quiet = torch.from_numpy(tone(1000.0)) * 0.001
    loud = torch.randn(SR)
    frontend = LogMel(normalize="none")
    together = frontend(torch.stack([quiet, loud]))
    torch.testing.assert_close(together[0], frontend(quiet[None])[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(together[1], frontend(loud[None])[0], atol=1e-3, rtol=0)
    # top_db clips each item against its own maximum.
    for item in together:
        assert item.max() - item.min() <= 80.0 + 1e-3


def test_gradients_flow_to_the_waveform():
    audio = torch.randn(2, SR, requires_grad=True)
    LogMel()(audio).square().mean().backward()
    assert audio.grad is not None
    assert torch.isfinite(audio.grad).all()
    assert audio.grad.abs().sum() > 0


def test_autocast_bfloat16_still_gives_float32_and_the_same_values():
    frontend = LogMel()
    audio = torch.randn(2, SR)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = frontend(audio)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, frontend(audio))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Constant folding:UserWarning")
def test_onnx_export_matches_eager(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is absent")
    frontend = LogMel()
    path = tmp_path / "logmel.onnx"
    torch.onnx.export(
        frontend,
        (torch.randn(2, 2 * SR),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["audio"],
        output_names=["spec"],
        dynamic_axes={"audio": {0: "batch", 1: "t"}},
    )
    audio = torch.randn(3, 3 * SR)
    exported = onnxruntime.InferenceSession(str(path)).run(None, {"audio": audio.numpy()})[0]
    assert exported.shape == (3, 1, 128, frontend.frames_for(3 * SR))
    np.testing.assert_allclose(exported, frontend(audio).numpy(), atol=1e-4, rtol=0)


def test_from_settings_uses_every_setting():
    audio = AudioSettings(sample_rate=22050)
    frontend = FrontendSettings(
        n_fft=1024,
        hop_length=256,
        n_mels=64,
        fmin=100.0,
        fmax=10000.0,
        top_db=None,
        normalize="none",
    )
    logmel = LogMel.from_settings(audio, frontend)
    assert (logmel.sample_rate, logmel.n_fft, logmel.hop_length, logmel.n_mels) == (22050, 1024, 256, 64)
    assert (logmel.fmin, logmel.fmax, logmel.top_db, logmel.normalize) == (100.0, 10000.0, None, "none")
    assert logmel(torch.randn(1, 22050)).shape == (1, 1, 64, 1 + 22050 // 256)


def test_filterbank_and_window_are_not_saved_in_the_state_dict():
    assert LogMel().state_dict() == {}


@pytest.mark.parametrize(
    ("audio", "message"),
    [(torch.randn(SR), r"\(batch, samples\)"), (torch.randn(1, 500), "at least 1025 samples")],
)
def test_bad_input_shapes_are_explained(audio, message):
    with pytest.raises(ValueError, match=message):
        LogMel()(audio)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmax": 20000.0}, "Nyquist"),
        ({"fmin": 5000.0, "fmax": 4000.0}, "fmin < fmax"),
        ({"n_mels": 0}, "n_mels must be positive"),
        ({"top_db": -5.0}, "top_db"),
        ({"normalize": "global"}, "normalize"),
    ],
)
def test_bad_parameters_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LogMel(**kwargs)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (32000, 2048, 128, 50.0, 14000.0),  # the default frontend
        (32000, 1024, 64, 0.0, 16000.0),
        (22050, 512, 40, 300.0, 8000.0),
        (48000, 4096, 256, 20.0, 24000.0),
        (16000, 400, 80, 1000.0, 8000.0),  # fmin where the log part of the mel scale starts
        (32000, 2048, 128, 999.9, 1000.5),  # every band at the bend: librosa warns of empty filters
    ],
)
def test_filterbank_is_librosas_bit_for_bit(sample_rate, n_fft, n_mels, fmin, fmax):
    """The frontend builds librosa's Slaney filterbank without importing librosa.filters (scipy.signal,
    numba: ~0.5 s of prediction's start-up); a trained model's spectrogram must not move by one bit."""
    from dawnchorus.models.features import slaney_mel_filterbank

    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        expected = librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney"
        )
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        built = slaney_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    assert built.dtype == expected.dtype and built.shape == expected.shape
    assert built.tobytes() == expected.tobytes()
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frontend = LogMel(sample_rate, n_fft, 512, n_mels, fmin, fmax)
    assert frontend.mel_fb.numpy().tobytes() == expected.tobytes()


def unfused_log_mel(frontend: LogMel, audio: torch.Tensor) -> torch.Tensor:
    """The frontend as first written (and trained with): the full power spectrum ``real² + imag²``,
    then the whole filterbank, dB and normalisation."""
    spectrum = torch.stft(
        audio, n_fft=frontend.n_fft, hop_length=frontend.hop_length, window=frontend.window,
        center=True, pad_mode="reflect", return_complex=True,
    )
    mel = torch.matmul(frontend.mel_fb, spectrum.real.square() + spectrum.imag.square())
    decibels = 10.0 * torch.log10(mel.clamp(min=1e-10))
    decibels = torch.maximum(decibels, decibels.amax(dim=(-2, -1), keepdim=True) - frontend.top_db)
    if frontend.normalize == "per_sample":
        mean = decibels.mean(dim=(-2, -1), keepdim=True)
        decibels = (decibels - mean) / (decibels.std(dim=(-2, -1), keepdim=True, unbiased=False) + 1e-6)
    return decibels.unsqueeze(1)


@pytest.mark.parametrize("normalize", ["per_sample", "none"])
def test_fused_power_and_mel_projection_equal_the_unfused_frontend(normalize, real_data):
    frontend = LogMel(normalize=normalize)
    great_tit = load(real_data / "focal" / "gretit1" / "2021-B32-0415_05-3.flac", SR)[: 5 * SR]  # 2.2 s
    great_tit = np.pad(great_tit, (0, 5 * SR - len(great_tit)))
    audio = torch.from_numpy(np.stack([chirp(), great_tit, np.zeros(5 * SR, np.float32)]))
    kept = audio.clone()
    with torch.inference_mode():  # the in-place path prediction takes
        fused = frontend(audio)
    reference = unfused_log_mel(frontend, audio)
    tolerance = 1e-4 if normalize == "none" else 1e-5  # dB, or standard deviations
    torch.testing.assert_close(fused, reference, atol=tolerance, rtol=0)
    assert torch.equal(audio, kept)  # the input is never squared in place
    assert frontend.mel_bins == (4, 896)  # 50 Hz - 14 kHz of 1025 bins at 32 kHz


def test_fused_frontend_gives_the_unfused_gradients():
    audio = torch.randn(2, SR, requires_grad=True)
    LogMel()(audio).square().mean().backward()
    fused = audio.grad.clone()
    audio.grad = None
    unfused_log_mel(LogMel(), audio).square().mean().backward()
    torch.testing.assert_close(fused, audio.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax"),
    [
        (32000, 2048, 512, 128, 50.0, 14000.0),  # the default frontend
        (32000, 1024, 320, 64, 0.0, 16000.0),
        (22050, 512, 256, 40, 300.0, 8000.0),
        (48000, 4096, 1024, 250, 20.0, 24000.0),  # a last band of 2 filters
        (32000, 2048, 512, 128, 999.9, 1000.5),  # empty filters: bands over no bin
    ],
)
def test_banded_mel_projection_equals_the_dense_filterbank(
    sample_rate, n_fft, hop_length, n_mels, fmin, fmax
):
    """On CPU the mel projection multiplies each band of 8 filters over the bins it covers only (~8x
    fewer multiply-adds): the mel power must be the dense product's to float32 rounding, every band
    (empty filters included: zero power) in its place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frontend = LogMel(sample_rate, n_fft, hop_length, n_mels, fmin, fmax)
    seconds = np.arange(2 * sample_rate) / sample_rate
    sweep = 0.5 * np.sin(2 * np.pi * (100 * seconds + 0.25 * sample_rate / 2 * seconds**2 / 2))
    noise = np.random.default_rng(0).standard_normal(len(seconds))
    audio = torch.from_numpy(np.stack([sweep, 0.1 * noise]).astype(np.float32))
    with torch.inference_mode():
        banded = frontend._mel_power(audio.clone())
        spectrum = torch.stft(
            audio, n_fft=n_fft, hop_length=hop_length, window=frontend.window, center=True,
            pad_mode="reflect", return_complex=True,
        )
        dense = torch.matmul(frontend.mel_fb, spectrum.real.square() + spectrum.imag.square())
    assert banded.shape == dense.shape
    assert torch.equal(banded == 0, dense == 0)  # empty filters stay exactly zero
    relative = (banded - dense).abs() / dense.abs().clamp(min=1e-30)
    assert float(relative.max()) < 1e-5

