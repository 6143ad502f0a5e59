"""Audio I/O: formats, ranges, streaming windows, memory bound, and every bad-input kind."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from dawnchorus.errors import (
    AudioDecodeError,
    AudioEmptyError,
    AudioError,
    AudioFileNotFoundError,
    AudioNonFiniteError,
    AudioTruncatedError,
)
from dawnchorus.io import audio

RATE = 32000


def tone(seconds: float, rate: int = RATE, freq: float = 1000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def ramp(seconds: float, rate: int) -> np.ndarray:
    """A slowly rising signal whose value tells the time (lossless formats keep it exactly)."""
    n = int(seconds * rate)
    return (np.arange(n) / n * 0.9).astype(np.float32)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_formats_load_to_mono_float32_at_target_rate(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    audio.write_audio(path, tone(2.0, 22050), 22050)
    samples = audio.load(path, sample_rate=RATE)
    assert samples.dtype == np.float32 and samples.ndim == 1
    # mp3 encoders add padding frames; the others are exact in length.
    assert abs(len(samples) - 2 * RATE) <= (0.1 * RATE if suffix == ".mp3" else 1)
    spectrum = np.abs(np.fft.rfft(samples[:RATE]))
    assert abs(np.argmax(spectrum) - 1000) <= 2  # the tone survives decoding and resampling


def test_opus_when_libsndfile_supports_it(tmp_path: Path) -> None:
    path = tmp_path / "clip.opus"
    try:
        sf.write(path, tone(1.0, 48000), 48000, format="OGG", subtype="OPUS")
    except (sf.LibsndfileError, ValueError, TypeError):
        pytest.skip("this libsndfile has no Opus encoder")
    assert len(audio.load(path, sample_rate=RATE)) == pytest.approx(RATE, abs=400)


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = tone(1.0), np.zeros(RATE, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(audio.load(path), left / 2, atol=1e-6)


def test_time_range_reads_only_that_range(tmp_path: Path) -> None:
    rate = 8000
    signal = ramp(10.0, rate)
    path = tmp_path / "ramp.wav"
    sf.write(path, signal, rate, subtype="FLOAT")
    part = audio.load(path, offset_s=3.0, duration_s=2.0)
    np.testing.assert_array_equal(part, signal[3 * rate : 5 * rate])
    tail = audio.load(path, offset_s=9.5, duration_s=5.0)
    assert len(tail) == rate // 2


def test_info_reads_header(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    audio.write_audio(path, tone(3.0, 44100), 44100)
    facts = audio.info(path)
    assert (facts.sample_rate, facts.channels, facts.frames) == (44100, 1, 3 * 44100)
    assert facts.duration_s == pytest.approx(3.0)


def test_crop_or_pad_modes() -> None:
    signal = np.arange(10, dtype=np.float32)
    assert list(audio.crop_or_pad(signal, 4, "start")) == [0, 1, 2, 3]
    assert list(audio.crop_or_pad(signal, 4, "center")) == [3, 4, 5, 6]
    rng = np.random.default_rng(0)
    starts = {audio.crop_or_pad(signal, 4, "random", rng)[0] for _ in range(50)}
    assert len(starts) > 3 and max(starts) <= 6
    padded = audio.crop_or_pad(signal, 15, "start")
    assert len(padded) == 15 and padded[10:].sum() == 0
    with pytest.raises(ValueError, match="crop mode"):
        audio.crop_or_pad(signal, 4, "middle")


@pytest.mark.parametrize(
    ("seconds", "hop", "expected"), [(60, 5, 12), (60, 2.5, 23), (62, 5, 13), (3, 5, 1), (5, 5, 1)]
)
def test_window_count(seconds: float, hop: float, expected: int) -> None:
    assert audio.window_count(int(seconds * 100), 500, int(hop * 100)) == expected


@pytest.mark.parametrize("native_rate", [32000, 44100])
def test_iter_windows_matches_whole_file_decode(tmp_path: Path, native_rate: int) -> None:
    path = tmp_path / "long.flac"
    rng = np.random.default_rng(1)
    audio.write_audio(path, rng.uniform(-0.5, 0.5, int(23 * native_rate)), native_rate)
    whole = audio.load(path, sample_rate=RATE)
    # A small block forces many reads, so window boundaries cross block boundaries.
    windows = list(audio.iter_windows(path, RATE, 5.0, 2.5, block_s=1.3))
    assert len(windows) == audio.window_count(len(whole), 5 * RATE, int(2.5 * RATE)) == 9
    for window in windows:
        begin = int(window.start_s * RATE)
        reference = whole[begin : begin + 5 * RATE]
        assert window.samples.shape == (5 * RATE,)
        assert window.end_s == pytest.approx(window.start_s + 5.0)
        np.testing.assert_allclose(window.samples[: len(reference)], reference, atol=1e-4)
    assert not windows[-1].samples[len(whole) - int(windows[-1].start_s * RATE) :].any()


def test_real_recordings_decode(real_data: Path) -> None:
    manifest = pd.read_csv(real_data / "manifest.csv")
    for row in manifest.itertuples():
        samples = audio.load(real_data / row.path, sample_rate=RATE)
        assert samples.dtype == np.float32 and np.isfinite(samples).all()
        assert len(samples) / RATE == pytest.approx(row.duration_s, abs=0.05), row.path
    stereo = real_data / "focal/eurstp1/XC663885.flac"
    assert audio.info(stereo).channels == 2 and audio.load(stereo).ndim == 1


def test_streaming_a_three_hour_file_keeps_memory_bounded(tmp_path: Path) -> None:
    rate, hours = 16000, 3
    path = tmp_path / "three_hours.flac"
    block = np.random.default_rng(0).uniform(-0.1, 0.1, 60 * rate).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC") as handle:
        for _ in range(hours * 60):
            handle.write(block)
    file_bytes_as_float = hours * 3600 * RATE * 4  # ~1.4 GB if it were held whole at 32 kHz
    tracemalloc.start()
    count = 0
    for window in audio.iter_windows(path, RATE, 5.0):
        count += 1
        assert window.samples.shape == (5 * RATE,)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == hours * 3600 // 5
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < file_bytes_as_float / 20


# --- bad input: one AudioError subclass per kind, message names the file and the reason ---------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileNotFoundError, match="nope.ogg: file not found"):
        audio.load(tmp_path / "nope.ogg")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileNotFoundError, match="not a regular file"):
        audio.load(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.ogg"
    path.write_bytes(b"")
    with pytest.raises(AudioEmptyError, match=r"empty.ogg: empty file \(0 bytes\)"):
        audio.load(path)


def test_zero_length_audio(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(AudioEmptyError, match="silent.wav: zero-length audio"):
        audio.load(path)
    with pytest.raises(AudioEmptyError):
        list(audio.iter_windows(path, RATE, 5.0))


def test_text_file_with_audio_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.ogg"
    path.write_text("these are field notes, not audio\n" * 20)
    with pytest.raises(AudioDecodeError, match="notes.ogg: not decodable audio"):
        audio.load(path)


def test_a_file_this_user_may_not_read_is_permission_denied(
    tmp_path: Path, deny_reading: Callable[[Path], None]
) -> None:
    path = tmp_path / "locked.ogg"
    audio.write_audio(path, tone(2.0), RATE)
    deny_reading(path)
    for read in (audio.info, audio.load, lambda p: list(audio.iter_windows(p, RATE, 1.0))):
        with pytest.raises(AudioDecodeError, match="locked.ogg: permission denied"):
            read(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.flac"
    audio.write_audio(path, tone(2.0), RATE)
    data = bytearray(path.read_bytes())
    data[:64] = bytes(64)  # destroy the header
    path.write_bytes(bytes(data))
    with pytest.raises(AudioDecodeError, match="corrupt.flac"):
        audio.load(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, tone(4.0), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioTruncatedError, match="cut.wav: truncated"):
        audio.load(path)
    with pytest.raises(AudioTruncatedError, match="cut.wav: truncated"):
        list(audio.iter_windows(path, RATE, 1.0))


def test_truncated_ogg_is_an_audio_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.ogg"
    audio.write_audio(path, tone(6.0), RATE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioError, match="cut.ogg"):
        audio.load(path)


def noise_file(path: Path, seconds: float, seed: int = 0) -> Path:
    """Noise (nothing for a compressor to shrink) written in ``path``'s format."""
    audio.write_audio(path, np.random.default_rng(seed).uniform(-0.3, 0.3, int(seconds * RATE)), RATE)
    return path


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("suffix", [".ogg", ".flac"])
def test_a_compressed_file_cut_in_half_is_truncated_whichever_way_it_is_read(
    tmp_path: Path, suffix: str
) -> None:
    # libsndfile reads a cut OGG as a shorter recording without an error (its length comes from the
    # last whole page), and stops a cut FLAC with "lost sync" as it would on damaged bytes.
    path = cut_in_half(noise_file(tmp_path / f"cut{suffix}", 20.0))
    match = (rf"cut\{suffix}: truncated: (the header declares 20\.000 s but the end of the file does "
             r"not decode|the file ends inside an Ogg page)")
    with pytest.raises(AudioTruncatedError, match=match):
        audio.load(path)
    with pytest.raises(AudioTruncatedError, match=match):
        list(audio.iter_windows(path, RATE, 5.0, block_s=3.0))
    # a chunk of a long file streamed from a window past the cut (distributed prediction)
    with pytest.raises(AudioTruncatedError, match=match):
        list(audio.iter_windows(path, RATE, 5.0, first_window=3))
    with pytest.raises(AudioTruncatedError, match=match):  # data check reads headers only
        audio.info(path)


def test_an_mp3_cut_in_half_is_truncated_when_its_header_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp3"
    try:
        noise_file(path, 20.0)
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("this libsndfile cannot write MP3")
    cut_in_half(path)
    with pytest.raises(AudioTruncatedError, match=r"cut.mp3: truncated: the header declares 20\.000 s"):
        audio.info(path)


def test_a_cut_ogg_says_how_much_audio_precedes_the_cut(tmp_path: Path) -> None:
    path = cut_in_half(noise_file(tmp_path / "cut.ogg", 20.0))
    with pytest.raises(AudioTruncatedError, match=r"ends inside an Ogg page") as caught:
        audio.info(path)
    seconds = float(caught.value.reason.split("(")[-1].split(" s ")[0])
    assert 8.0 < seconds < 10.5  # half the bytes of noise: about half the audio


def test_an_ogg_stream_without_its_end_page_is_truncated(tmp_path: Path) -> None:
    path = noise_file(tmp_path / "unfinished.ogg", 6.0)
    data = bytearray(path.read_bytes())
    last_page = data.rfind(b"OggS")
    assert data[last_page + 5] & 0x04  # a finished stream: its last page is flagged end-of-stream
    data[last_page + 5] &= ~0x04
    path.write_bytes(bytes(data))
    with pytest.raises(AudioTruncatedError, match="unfinished.ogg: truncated: .*not marked end-of-stream"):
        audio.load(path)


def test_whole_ogg_and_flac_files_are_not_truncated(tmp_path: Path) -> None:
    for suffix in (".ogg", ".flac"):
        path = noise_file(tmp_path / f"whole{suffix}", 20.0)
        assert len(audio.load(path)) == 20 * RATE
        assert len(list(audio.iter_windows(path, RATE, 5.0, first_window=3))) == 1


def test_a_flac_damaged_mid_file_is_a_decode_error_at_its_position(tmp_path: Path) -> None:
    path = noise_file(tmp_path / "damaged.flac", 20.0)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(2000)
    path.write_bytes(bytes(data))
    position = r"damaged.flac: decoding failed mid-file at (9|10)\.\d+ s"
    with pytest.raises(AudioDecodeError, match=position) as caught:
        audio.load(path)
    assert not isinstance(caught.value, AudioTruncatedError)


def test_non_finite_samples(tmp_path: Path) -> None:
    signal = tone(1.0)
    signal[1234] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, signal, RATE, subtype="FLOAT")
    with pytest.raises(AudioNonFiniteError, match="nan.wav: non-finite samples"):
        audio.load(path)


def test_non_finite_samples_are_reported_where_the_first_one_is(tmp_path: Path) -> None:
    signal = tone(40.0)
    signal[int(7.25 * RATE)] = np.nan
    signal[int(33.5 * RATE)] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, signal, RATE, subtype="FLOAT")
    first = r"nan.wav: non-finite samples \(NaN or inf\), the first at 7\.250 s"
    with pytest.raises(AudioNonFiniteError, match=first):
        audio.load(path)
    with pytest.raises(AudioNonFiniteError, match=first):  # inside the second 5 s read block
        list(audio.iter_windows(path, RATE, 5.0, block_s=5.0))
    with pytest.raises(AudioNonFiniteError, match=r"the first at 33\.500 s"):
        list(audio.iter_windows(path, RATE, 5.0, first_window=4))


def test_offset_outside_recording(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, tone(1.0), RATE)
    with pytest.raises(AudioError, match="outside the recording"):
        audio.load(path, offset_s=3.0)


def test_find_audio_files(tmp_path: Path) -> None:
    for name in ["a/x.ogg", "a/b/y.FLAC", "c/z.txt", "w.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in audio.find_audio_files(tmp_path)]
    assert found == ["a/b/y.FLAC", "a/x.ogg", "w.wav"]
