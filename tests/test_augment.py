"""Waveform and batch augmentations, the noise bank and the preview figure."""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.signal import welch
from torch.utils.data import DataLoader, Dataset

from dawnchorus.augment.batch import BatchAugment, cutmix_time, mixup, spec_augment
from dawnchorus.augment.noise import NoiseBank
from dawnchorus.augment.preview import preview_augmentations, preview_panels
from dawnchorus.augment.waveform import BackgroundNoise, WaveformAugment
from dawnchorus.config import AugmentSettings, FrontendSettings
from dawnchorus.io.audio import write_audio

SR = 16000
CLIP = 2 * SR

ALL_OFF = {
    "noise_p": 0.0, "colored_noise_p": 0.0, "gain_p": 0.0, "shift_p": 0.0,
    "pitch_shift_p": 0.0, "time_stretch_p": 0.0,
}


def only(step_p: str, **extra) -> AugmentSettings:
    """Settings with every waveform step off except ``step_p`` (probability 1)."""
    return AugmentSettings(**{**ALL_OFF, step_p: 1.0, **extra})


def tone(length: int = CLIP, freq: float = 1000.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(length) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


@pytest.fixture(scope="module")
def synthetic_noise_dir(tmp_path_factory) -> Path:
    """Two short noise files: 3 s of white noise and a 0.5 s loop (shorter than the clips)."""
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(1)
    write_audio(folder / "white.wav", 0.1 * rng.standard_normal(3 * SR), SR)
    write_audio(folder / "sub" / "short.flac", 0.1 * rng.standard_normal(SR // 2), SR)
    return folder


@pytest.fixture(scope="module")
def bird_free_noise_dir(real_data: Path, tmp_path_factory) -> Path:
    """Symlinks to the real background recordings that contain no birds."""
    manifest = pd.read_csv(real_data / "manifest.csv")
    rows = manifest[(manifest.kind == "background") & (manifest.contains_birds == "no")]
    folder = tmp_path_factory.mktemp("bird_free_noise")
    for relative in rows.path:
        (folder / Path(relative).name).symlink_to(real_data / relative)
    return folder


# --- pipeline contract ---------------------------------------------------------------------------


def test_steps_are_named_and_ordered_and_noise_needs_a_folder(synthetic_noise_dir):
    without = WaveformAugment(AugmentSettings(), SR)
    assert without.step_names == ["shift", "time_stretch", "pitch_shift", "colored_noise", "gain"]
    with_noise = WaveformAugment(AugmentSettings(noise_dir=synthetic_noise_dir), SR)
    assert with_noise.step_names[3] == "background_noise"
    assert isinstance(with_noise.step("background_noise"), BackgroundNoise)
    with pytest.raises(KeyError, match="no augmentation step 'reverb'"):
        without.step("reverb")


def test_probability_zero_is_the_identity():
    clip = tone()
    out = WaveformAugment(AugmentSettings(**ALL_OFF), SR, seed=0)(clip, SR)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, clip)


def test_every_step_keeps_float32_length_and_finiteness(synthetic_noise_dir):
    settings = AugmentSettings(noise_dir=synthetic_noise_dir, **{k: 1.0 for k in ALL_OFF})
    augment = WaveformAugment(settings, SR, seed=3)
    clip = tone().astype(np.float64)  # float64 input is accepted and converted
    for _ in range(3):
        out = augment(clip, SR)
        assert out.dtype == np.float32 and out.shape == clip.shape and np.isfinite(out).all()
        assert not np.allclose(out, clip)
    for name in augment.step_names:
        alone = augment.apply_step(name, clip, SR)
        assert alone.dtype == np.float32 and alone.shape == clip.shape and np.isfinite(alone).all()


def test_seeded_pipeline_is_reproducible_and_leaves_global_random_state_alone():
    settings = AugmentSettings(colored_noise_p=1.0, gain_p=1.0, shift_p=1.0)
    clip = tone()
    random.seed(123)
    np.random.seed(123)
    first = [WaveformAugment(settings, SR, seed=7)(clip, SR) for _ in range(2)]
    after_python, after_numpy = random.random(), np.random.random()
    random.seed(123)
    np.random.seed(123)
    assert (random.random(), np.random.random()) == (after_python, after_numpy)
    np.testing.assert_array_equal(first[0], first[1])
    other = WaveformAugment(settings, SR, seed=8)(clip, SR)
    assert not np.array_equal(first[0], other)
    generator_seeded = WaveformAugment(settings, SR, seed=np.random.default_rng(7))(clip, SR)
    np.testing.assert_array_equal(generator_seeded, first[0])


def test_pipeline_survives_pickling_for_spawned_workers(synthetic_noise_dir):
    augment = WaveformAugment(AugmentSettings(noise_dir=synthetic_noise_dir, noise_p=1.0), SR, seed=5)
    copy = pickle.loads(pickle.dumps(augment))
    np.testing.assert_array_equal(copy(tone(), SR), augment(tone(), SR))


class _AugmentedConstant(Dataset):
    def __init__(self, augment: WaveformAugment) -> None:
        self.augment = augment

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> np.ndarray:
        return self.augment(tone(SR // 4), SR)


def test_dataloader_workers_draw_different_augmentations():
    torch.manual_seed(0)
    augment = WaveformAugment(only("gain_p"), SR, seed=0)
    loader = DataLoader(_AugmentedConstant(augment), batch_size=1, num_workers=2)
    clips = [batch[0].numpy() for batch in loader]
    # Items 0 and 1 are the first item of worker 0 and of worker 1.
    assert not np.allclose(clips[0], clips[1])


def test_bad_input_is_rejected_with_a_clear_message():
    augment = WaveformAugment(AugmentSettings(), SR)
    with pytest.raises(ValueError, match="built for 16000 Hz but got a clip at 32000 Hz"):
        augment(tone(), 32000)
    with pytest.raises(ValueError, match=r"mono \(1-D\) clip, got shape \(2, 100\)"):
        augment(np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ValueError, match="NaN or infinite"):
        augment(np.full(100, np.nan, np.float32), SR)


# --- individual waveform steps -------------------------------------------------------------------


def test_gain_changes_level_by_the_drawn_decibels_within_range():
    augment = WaveformAugment(only("gain_p", gain_db=(-6.0, 9.0)), SR, seed=0)
    clip = tone()
    measured = []
    for _ in range(20):
        out = augment(clip, SR)
        gain = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2 / np.mean(clip**2))))
        drawn = 20 * np.log10(augment.step("gain").parameters["amplitude_ratio"])
        assert gain == pytest.approx(drawn, abs=1e-3)
        measured.append(gain)
    assert min(measured) >= -6.0 - 1e-3 and max(measured) <= 9.0 + 1e-3
    assert max(measured) - min(measured) > 5.0  # the draws spread over the range


def test_shift_moves_the_onset_and_does_not_roll_over():
    clip = np.zeros(CLIP, np.float32)
    onset = SR  # later than the largest shift, so the onset stays inside the clip
    clip[onset:] = tone(CLIP - onset)
    augment = WaveformAugment(only("shift_p", shift_fraction=0.3), SR, seed=1)
    moves = []
    for _ in range(10):
        out = augment(clip, SR)
        places = int(round(augment.step("shift").parameters["shift_amount"] * CLIP))
        loud = np.flatnonzero(np.abs(out) > 0.01)
        assert loud[0] == pytest.approx(onset + places, abs=5)
        if places < 0:
            assert not out[places:].any()  # the start did not wrap round to the end
        moves.append(places)
    assert all(abs(m) <= 0.3 * CLIP + 1 for m in moves) and min(moves) < 0 < max(moves)


def test_pitch_shift_moves_a_tone_by_the_drawn_semitones():
    augment = WaveformAugment(only("pitch_shift_p", pitch_semitones=(-3.0, 3.0)), SR, seed=0)
    clip = tone(SR, freq=1000.0)
    freqs = np.fft.rfftfreq(SR, 1 / SR)
    for _ in range(4):
        out = augment(clip, SR)
        semitones = augment.step("pitch_shift").parameters["num_semitones"]
        peak = freqs[np.abs(np.fft.rfft(out * np.hanning(SR))).argmax()]
        assert peak == pytest.approx(1000.0 * 2 ** (semitones / 12), abs=3.0)  # 1 Hz bins


def _burst_onset_and_length_s(samples: np.ndarray) -> tuple[float, float]:
    envelope = np.convolve(np.abs(samples), np.ones(160) / 160, mode="same")
    loud = np.flatnonzero(envelope > 0.1)
    return loud[0] / SR, (loud[-1] - loud[0]) / SR


def test_time_stretch_rescales_timing_and_keeps_the_length():
    clip = np.zeros(2 * SR, np.float32)
    clip[SR // 4 : SR // 4 + SR // 2] = tone(SR // 2)  # a 0.5 s call starting at 0.25 s
    augment = WaveformAugment(only("time_stretch_p", time_stretch_rate=(0.7, 1.3)), SR, seed=0)
    for _ in range(4):
        out = augment(clip, SR)
        rate = augment.step("time_stretch").parameters["rate"]
        onset, length = _burst_onset_and_length_s(out)
        assert out.shape == clip.shape
        assert onset == pytest.approx(0.25 / rate, abs=0.01)
        assert length == pytest.approx(0.5 / rate, abs=0.01)


@pytest.mark.parametrize("target_snr", [0.0, 10.0, 20.0])
def test_background_noise_is_mixed_at_the_drawn_snr(synthetic_noise_dir, target_snr):
    bank = NoiseBank(synthetic_noise_dir, SR)
    transform = BackgroundNoise(bank, min_snr_db=target_snr, max_snr_db=target_snr, p=1.0)
    clip = tone()
    measured = [snr_db(clip, transform(clip, SR)) for _ in range(5)]
    assert measured == pytest.approx([target_snr] * 5, abs=1.0)


def test_background_noise_loops_a_recording_shorter_than_the_clip(tmp_path):
    write_audio(tmp_path / "short.wav", 0.2 * np.random.default_rng(0).standard_normal(SR // 2), SR)
    transform = BackgroundNoise(NoiseBank(tmp_path, SR), 10.0, 10.0, p=1.0)
    clip = tone()
    noise = transform(clip, SR) - clip
    period = SR // 2
    assert np.abs(noise).min() < np.abs(noise).max()  # noise spans the whole clip
    np.testing.assert_allclose(noise[:period], noise[period : 2 * period], atol=1e-6)


def test_background_noise_validates_its_ranges(synthetic_noise_dir):
    bank = NoiseBank(synthetic_noise_dir, SR)
    with pytest.raises(ValueError, match=r"min_snr_db \(20.0\) must not exceed max_snr_db \(5.0\)"):
        BackgroundNoise(bank, 20.0, 5.0)
    with pytest.raises(ValueError, match="p must be in"):
        BackgroundNoise(bank, p=1.5)
    with pytest.raises(ValueError, match="must be a NoiseBank"):
        BackgroundNoise(str(synthetic_noise_dir))


def _spectral_slope_db_per_octave(noise: np.ndarray) -> float:
    freqs, power = welch(noise, fs=SR, nperseg=2048)
    band = (freqs >= 200) & (freqs <= 6000)
    slope, _ = np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)
    return float(slope)


def test_colored_noise_slope_follows_its_colour():
    augment = WaveformAugment(only("colored_noise_p", colored_noise_snr_db=(0.0, 0.0)), SR, seed=0)
    transform = augment.step("colored_noise")
    clip = tone(8 * SR)
    slopes = {}
    nominal = {"white": 0.0, "pink": -3.01, "brown": -6.02}
    for colour, decay in nominal.items():
        transform.min_f_decay = transform.max_f_decay = decay
        noise = augment(clip, SR) - clip
        slopes[colour] = _spectral_slope_db_per_octave(noise)
    for colour, decay in nominal.items():
        assert slopes[colour] == pytest.approx(decay, abs=0.5), colour
    assert slopes["white"] > slopes["pink"] + 2.0 > slopes["brown"] + 4.0


def test_colored_noise_default_draws_stay_between_brown_and_white():
    augment = WaveformAugment(only("colored_noise_p"), SR, seed=0)
    decays = []
    for _ in range(20):
        augment.apply_step("colored_noise", tone(SR // 4), SR)
        decays.append(augment.step("colored_noise").parameters["f_decay"])
    assert all(-6.02 <= d <= 0.0 for d in decays)
    pink_only = only("colored_noise_p", colored_noise_decay_db_per_octave=(-3.0, -3.0))
    pink = WaveformAugment(pink_only, SR, seed=0)
    pink.apply_step("colored_noise", tone(SR // 4), SR)
    assert pink.step("colored_noise").parameters["f_decay"] == pytest.approx(-3.0)


# --- noise bank ----------------------------------------------------------------------------------


def test_noise_bank_loads_the_real_bird_free_backgrounds(bird_free_noise_dir):
    bank = NoiseBank(bird_free_noise_dir, SR)
    assert len(bank) == 10
    assert bank.duration_s == pytest.approx(120.1, abs=0.5)
    assert all(clip.dtype == np.float32 and clip.ndim == 1 for clip in bank.clips)
    rng = np.random.default_rng(0)
    segments = [bank.random_segment(5 * SR, rng) for _ in range(20)]
    assert all(s.shape == (5 * SR,) and np.isfinite(s).all() for s in segments)
    assert len({float(np.round(np.std(s), 6)) for s in segments}) > 10  # varied draws
    # creek (5.0 s) and waterfall (4.9 s) are shorter than 6 s and get looped
    assert bank.random_segment(6 * SR, rng).shape == (6 * SR,)


def test_noise_bank_real_mixing_hits_the_snr(bird_free_noise_dir):
    augment = WaveformAugment(
        only("noise_p", noise_dir=bird_free_noise_dir, noise_snr_db=(3.0, 15.0)), SR, seed=0
    )
    clip = tone()
    for _ in range(10):
        out = augment(clip, SR)
        drawn = augment.step("background_noise").parameters["snr_db"]
        assert 3.0 <= drawn <= 15.0
        assert snr_db(clip, out) == pytest.approx(drawn, abs=1.0)


def test_noise_bank_skips_unreadable_files_with_a_warning_naming_them(synthetic_noise_dir, tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"this is not audio at all" * 10)
    write_audio(tmp_path / "silence.wav", np.zeros(SR), SR)
    write_audio(tmp_path / "good.wav", 0.1 * np.random.default_rng(0).standard_normal(SR), SR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank = NoiseBank(tmp_path, SR)
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.wav" in messages and "silence.wav" in messages and "silent" in messages
    assert [p.name for p in bank.paths] == ["good.wav"]


def test_noise_folder_without_audio_is_an_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match=f"noise folder {tmp_path} contains no audio files"):
        NoiseBank(tmp_path, SR)
    with pytest.raises(ValueError, match="contains no audio files"):
        WaveformAugment(AugmentSettings(noise_dir=tmp_path), SR)
    (tmp_path / "bad.ogg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of its 1 audio files could be used: .*bad.ogg: not decodable"):
        NoiseBank(tmp_path, SR)
    with pytest.raises(ValueError, match="does not exist"):
        NoiseBank(tmp_path / "missing", SR)


def test_noise_bank_is_cached_per_folder_and_rate(synthetic_noise_dir):
    first = NoiseBank.cached(synthetic_noise_dir, SR)
    assert NoiseBank.cached(synthetic_noise_dir, SR) is first
    assert NoiseBank.cached(synthetic_noise_dir, 8000) is not first
    assert WaveformAugment(AugmentSettings(noise_dir=synthetic_noise_dir), SR).noise_bank is first


# --- batch augmentations -------------------------------------------------------------------------


def test_mixup_is_a_convex_mix_with_union_targets():
    batch = 8
    x = torch.eye(batch)  # item i is the unit vector e_i, so the output reveals lam and perm
    targets = torch.eye(batch)
    mixed, union = mixup(x, targets, alpha=0.4, generator=torch.Generator().manual_seed(0))
    assert torch.all(mixed >= 0) and torch.allclose(mixed.sum(dim=1), torch.ones(batch))
    lam = mixed.diagonal()
    partners = torch.where(torch.eye(batch, dtype=torch.bool), 0.0, mixed).argmax(dim=1)
    for i in range(batch):
        expected = torch.zeros(batch)
        expected[i] = 1.0
        expected[partners[i]] = 1.0
        if lam[i] < 1.0:  # a partner was mixed in: the targets are the union of both
            assert torch.equal(union[i], expected)
    mixed_items = lam < 1.0  # items whose partner is themselves keep lam = 1
    assert mixed_items.any() and torch.allclose(lam[mixed_items], lam[mixed_items][0])


def test_mixup_is_reproducible_and_validates_alpha():
    x, targets = torch.randn(6, 1, 4, 5), torch.rand(6, 3)
    first = mixup(x, targets, 0.4, torch.Generator().manual_seed(3))
    second = mixup(x, targets, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.all(first[1] >= targets)
    with pytest.raises(ValueError, match="alpha must be positive"):
        mixup(x, targets, 0.0)
    with pytest.raises(ValueError, match="batch has 6 items but targets has 5 rows"):
        mixup(x, targets[:5], 0.4)


def test_cutmix_time_pastes_one_contiguous_partner_span_and_unions_targets():
    batch, bins, frames = 6, 4, 40
    spec = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 1, bins, frames)
    targets = torch.eye(batch)
    out, new_targets = cutmix_time(spec, targets, torch.Generator().manual_seed(1))
    assert out.shape == spec.shape
    for i in range(batch):
        columns = out[i, 0, 0]
        assert torch.all(out[i, 0] == columns)  # whole columns are pasted, every bin
        foreign = torch.nonzero(columns != i).flatten()
        if foreign.numel():  # partner differs from the item itself
            partner = int(columns[foreign[0]])
            assert torch.all(columns[foreign] == partner)
            assert foreign[-1] - foreign[0] + 1 == foreign.numel()  # one contiguous span
            assert 10 <= foreign.numel() <= 20  # 0.25..0.5 of 40 frames
            assert new_targets[i, partner] == 1 and new_targets[i, i] == 1
        else:
            assert torch.equal(new_targets[i], targets[i])


def _masked(out: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    return out != spec


def test_spec_augment_masks_time_columns_filled_with_the_item_mean():
    torch.manual_seed(0)
    spec = torch.rand(32, 1, 16, 50) + 1.0
    out = spec_augment(spec, time_masks=1, time_mask_fraction=0.2, freq_masks=0,
                       freq_mask_fraction=0.0, generator=torch.Generator().manual_seed(0))
    widths = []
    for i in range(len(spec)):
        changed = _masked(out[i, 0], spec[i, 0])
        columns = torch.nonzero(changed.all(dim=0)).flatten()
        assert torch.equal(changed.any(dim=0).nonzero().flatten(), columns)  # whole columns only
        if columns.numel():
            assert columns[-1] - columns[0] + 1 == columns.numel()
            assert torch.allclose(out[i, 0][:, columns], spec[i].mean())
        widths.append(columns.numel())
    assert max(widths) <= 10 and len(set(widths)) > 3  # widths 0..round(0.2 * 50)


def test_spec_augment_masks_frequency_rows_and_counts_add_up():
    spec = torch.rand(16, 64, 50) + 1.0
    out = spec_augment(spec, time_masks=0, time_mask_fraction=0.5, freq_masks=3,
                       freq_mask_fraction=0.1, generator=torch.Generator().manual_seed(2))
    for i in range(len(spec)):
        changed = _masked(out[i], spec[i])
        rows = changed.all(dim=1)
        assert torch.equal(changed.any(dim=1), rows)  # whole rows only
        assert rows.sum() <= 3 * round(0.1 * 64)
    assert _masked(out, spec).any()


def test_spec_augment_without_masks_or_items_is_the_identity():
    spec = torch.randn(4, 1, 8, 20)
    assert torch.equal(spec_augment(spec, 0, 0.5, 0, 0.5), spec)
    assert torch.equal(spec_augment(spec, 2, 0.0, 2, 0.0), spec)
    nobody = torch.zeros(4, dtype=torch.bool)
    assert torch.equal(spec_augment(spec, 2, 0.5, 2, 0.5, apply_to=nobody), spec)
    with pytest.raises(ValueError, match="time_mask_fraction must be in"):
        spec_augment(spec, 1, 1.5, 0, 0.0)


def test_batch_augment_is_the_identity_in_eval_and_active_in_training():
    settings = AugmentSettings(mixup_p=1.0, cutmix_p=1.0, specaugment_p=1.0)
    module = BatchAugment(settings, generator=torch.Generator().manual_seed(0))
    spec, targets = torch.randn(8, 1, 32, 40), torch.eye(8)
    module.eval()
    same_spec, same_targets = module(spec, targets)
    assert same_spec is spec and same_targets is targets
    module.train()
    changed, new_targets = module(spec, targets)
    assert changed.shape == spec.shape and not torch.equal(changed, spec)
    assert new_targets.shape == targets.shape and torch.all(new_targets >= targets)
    off = BatchAugment(AugmentSettings(mixup_p=0.0, cutmix_p=0.0, specaugment_p=0.0)).train()
    assert torch.equal(off(spec, targets)[0], spec)


# --- preview -------------------------------------------------------------------------------------


def test_preview_panels_cover_every_augmentation(synthetic_noise_dir):
    settings = AugmentSettings(noise_dir=synthetic_noise_dir)
    frontend = FrontendSettings(n_fft=512, hop_length=256, n_mels=32, fmax=7000.0)
    titles = [title for title, _ in preview_panels(tone(), settings, SR, 0, frontend)]
    assert titles[0] == "original"
    for word in ("time shift", "time stretch", "pitch shift", "background noise",
                 "coloured noise", "gain", "SpecAugment", "mixup"):
        assert any(title.startswith(word) for title in titles), word


def test_preview_writes_a_non_blank_png(tmp_path):
    chirp = np.sin(2 * np.pi * np.cumsum(np.linspace(500, 5000, 3 * SR)) / SR) * 0.3
    write_audio(tmp_path / "chirp.wav", chirp, SR)
    out = preview_augmentations(tmp_path / "chirp.wav", tmp_path / "figs" / "preview.png",
                                AugmentSettings(), sample_rate=SR, clip_s=3.0, seed=1)
    assert out == tmp_path / "figs" / "preview.png" and out.is_file()
    pixels = mpimg.imread(out)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.1
