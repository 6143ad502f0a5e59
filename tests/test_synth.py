"""Synthetic BirdCLEF-shaped data set: layout, labels, long tail, determinism, realism checks."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import signal

from dawnchorus.errors import AudioError, SynthError
from dawnchorus.io.audio import info, load
from dawnchorus.synth.calls import CALL_FAMILIES, draw_call_model, draw_species, render_call
from dawnchorus.synth.soundscapes import (
    CLIP_SAMPLE_RATES,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    SOUNDSCAPE_RATE,
    CallEvent,
    make_dataset,
    species_clip_counts,
    window_labels,
)

SMALL = dict(
    species=5, clips_per_species=(1, 6), soundscapes=1, soundscape_s=15.0, clean_copies=True
)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[Path, object]:
    """The default data set (12 species, 4 soundscapes of 60 s) with clean copies, seed 0."""
    out = tmp_path_factory.mktemp("synth") / "default"
    return out, make_dataset(out, seed=0, clean_copies=True, workers=1)


@pytest.fixture(scope="module")
def metadata(default_set) -> pd.DataFrame:
    return pd.read_csv(default_set[0] / "train_metadata.csv")


@pytest.fixture(scope="module")
def test_labels(default_set) -> pd.DataFrame:
    return pd.read_csv(default_set[0] / "test_labels.csv")


def decoded(root: Path) -> dict[str, np.ndarray]:
    """Every OGG under ``root`` decoded, by relative path."""
    return {str(p.relative_to(root)): load(p) for p in sorted(root.rglob("*.ogg"))}


# ------------------------------------------------------------------------------------------------
# Layout and metadata


def test_metadata_has_exactly_the_birdclef_2022_columns(metadata):
    assert tuple(metadata.columns) == METADATA_COLUMNS
    assert METADATA_COLUMNS == (
        "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
        "common_name", "author", "license", "rating", "time", "url", "filename",
    )
    assert not metadata.isna().any().any()


def test_metadata_values_look_like_birdclef(default_set, metadata):
    _, summary = default_set
    assert all(len(c) == 6 and c.isalpha() and c.islower() for c in summary.species)
    assert len(set(summary.species)) == len(summary.species) == 12
    assert set(metadata.primary_label) == set(summary.species)
    assert metadata.filename.str.fullmatch(r"[a-z]{6}/XC\d+\.ogg").all()
    assert (metadata.filename.str.split("/").str[0] == metadata.primary_label).all()
    assert metadata.filename.is_unique
    xc_ids = metadata.filename.str.extract(r"XC(\d+)")[0]
    assert (metadata.url == "https://www.xeno-canto.org/" + xc_ids).all()
    assert metadata.rating.between(0, 5).all() and ((metadata.rating * 2) % 1 == 0).all()
    assert metadata.latitude.between(-90, 90).all() and metadata.longitude.between(-180, 180).all()
    assert metadata.time.str.fullmatch(r"\d\d:\d\d").all()
    for text in metadata.type:
        kinds = ast.literal_eval(text)
        assert isinstance(kinds, list) and kinds and all(isinstance(k, str) for k in kinds)
    # One scientific and one common name per species.
    assert metadata.groupby("primary_label").scientific_name.nunique().eq(1).all()
    assert metadata.groupby("primary_label").common_name.nunique().eq(1).all()


def test_every_file_exists_decodes_and_rates_are_mixed(default_set, metadata):
    root, summary = default_set
    rates, seconds = set(), 0.0
    for filename in metadata.filename:
        path = root / "train_audio" / filename
        samples = load(path)
        rate = info(path).sample_rate
        rates.add(rate)
        duration = len(samples) / rate
        assert 1.0 <= duration <= 30.0 + 1e-3, filename
        assert np.abs(samples).max() > 0.1, f"{filename} is silent"
        seconds += duration
    assert rates == set(CLIP_SAMPLE_RATES)
    assert seconds == pytest.approx(summary.train_seconds, rel=1e-3)
    assert sorted(p.relative_to(root / "train_audio").as_posix()
                  for p in (root / "train_audio").rglob("*.ogg")) == sorted(metadata.filename)


def test_long_tail_with_single_clip_species_at_default_settings(default_set, metadata):
    _, summary = default_set
    counts = metadata.primary_label.value_counts()
    assert counts.max() == 40
    assert (counts == 1).sum() >= 1
    assert counts.to_dict() == summary.clips_per_species
    assert summary.n_clips == len(metadata) == sum(summary.clips_per_species.values())


def test_secondary_labels_parse_and_name_other_known_species(default_set, metadata):
    _, summary = default_set
    parsed = metadata.secondary_labels.map(ast.literal_eval)
    assert parsed.map(len).gt(0).sum() >= 5
    for primary, secondary in zip(metadata.primary_label, parsed, strict=True):
        assert isinstance(secondary, list)
        assert set(secondary) <= set(summary.species) - {primary}
    assert "[]" in set(metadata.secondary_labels)
    assert any(s.startswith("['") and s.endswith("']") for s in metadata.secondary_labels)


def test_scored_birds_are_most_of_the_species(default_set):
    root, summary = default_set
    scored = json.loads((root / "scored_birds.json").read_text())
    assert scored == sorted(scored) and set(scored) <= set(summary.species)
    assert len(summary.species) / 2 < len(scored) < len(summary.species)


# ------------------------------------------------------------------------------------------------
# Soundscapes


def test_soundscapes_have_the_requested_length_and_a_label_row_per_window(default_set, test_labels):
    root, summary = default_set
    assert tuple(test_labels.columns) == LABEL_COLUMNS
    assert len(summary.soundscape_ids) == 4
    assert len(test_labels) == 4 * 12
    for audio_id in summary.soundscape_ids:
        samples = load(root / "test_soundscapes" / f"{audio_id}.ogg")
        assert len(samples) == 60 * SOUNDSCAPE_RATE
        rows = test_labels[test_labels.audio_id == audio_id]
        assert rows.seconds.tolist() == list(range(5, 65, 5))
        assert (rows.row_id == audio_id + "_" + rows.seconds.astype(str)).all()
    birds = test_labels.birds.str.split(" ").explode()
    assert set(birds) - {"nocall"} <= set(summary.species)
    assert (test_labels.birds == "nocall").any()
    assert (test_labels.birds != "nocall").sum() >= 12


def test_clean_copies_align_with_noisy_soundscapes(default_set, test_labels):
    root, summary = default_set
    for audio_id in summary.soundscape_ids:
        noisy = load(root / "test_soundscapes" / f"{audio_id}.ogg")
        clean = load(root / "test_soundscapes_clean" / f"{audio_id}.ogg")
        assert len(noisy) == len(clean)
        background = noisy - clean
        assert np.sqrt(np.mean(background**2)) > 1e-3
        # The calls sit where the labels say: each labelled window holds call sound; a nocall
        # window at most a fragment shorter than 0.5 s (a call labelled in the next window).
        frames = np.sqrt(np.mean(clean.reshape(-1, SOUNDSCAPE_RATE // 100) ** 2, axis=1))  # 10 ms
        active_s = (frames > 0.01 * frames.max()).reshape(-1, 500).sum(axis=1) / 100
        birds = test_labels[test_labels.audio_id == audio_id].birds.to_numpy()
        assert (active_s[birds != "nocall"] >= 0.03).all()
        assert (active_s[birds == "nocall"] < 0.6).all()


def test_window_labels_follow_the_overlap_rule():
    events = [
        CallEvent("aaaaaa", 1.0, 2.0, 0.0),  # inside window 1
        CallEvent("bbbbbb", 4.0, 5.4, 0.0),  # 1.0 s in window 1, 0.4 s in window 2
        CallEvent("cccccc", 8.0, 10.6, 0.0),  # 2.0 s in window 2, 0.6 s in window 3
        CallEvent("dddddd", 14.9, 15.2, 0.0),  # short call cut by a boundary: mostly in window 4
    ]
    assert window_labels(events, 4) == [["aaaaaa", "bbbbbb"], ["cccccc"], ["cccccc"], ["dddddd"]]


# ------------------------------------------------------------------------------------------------
# Determinism and parallelism


def test_same_seed_gives_identical_data_whatever_the_workers(tmp_path):
    one = make_dataset(tmp_path / "one", seed=3, workers=1, **SMALL)
    two = make_dataset(tmp_path / "two", seed=3, workers=2, **SMALL)
    other = make_dataset(tmp_path / "other", seed=4, workers=1, **SMALL)
    for name in ("train_metadata.csv", "test_labels.csv", "scored_birds.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    audio_one, audio_two = decoded(tmp_path / "one"), decoded(tmp_path / "two")
    assert audio_one.keys() == audio_two.keys()
    assert all(np.array_equal(audio_one[k], audio_two[k]) for k in audio_one)
    assert one.species == two.species and one.clips_per_species == two.clips_per_species
    assert other.species != one.species
    assert (tmp_path / "other" / "train_metadata.csv").read_bytes() != (
        tmp_path / "one" / "train_metadata.csv"
    ).read_bytes()
    first_other = decoded(tmp_path / "other" / "test_soundscapes")
    first_one = decoded(tmp_path / "one" / "test_soundscapes")
    assert not np.array_equal(next(iter(first_other.values())), next(iter(first_one.values())))


def test_progress_reports_each_stage_to_completion(tmp_path):
    calls: list[tuple[str, int, int]] = []
    summary = make_dataset(tmp_path / "p", seed=1, workers=1, progress=lambda *a: calls.append(a),
                           **SMALL)
    assert ("train_audio", summary.n_clips, summary.n_clips) in calls
    assert ("test_soundscapes", 1, 1) in calls
    assert calls[0] == ("train_audio", 0, summary.n_clips)


# ------------------------------------------------------------------------------------------------
# Species are learnable


def log_spectrum(samples: np.ndarray) -> np.ndarray:
    _, _, power = signal.stft(samples, nperseg=1024, noverlap=512)
    energy = np.abs(power) ** 2
    frame_energy = energy.sum(axis=0)
    active = frame_energy >= np.quantile(frame_energy, 0.7)
    return np.log10(energy[:, active].mean(axis=1) + 1e-10)


def test_species_are_separable_by_a_nearest_centroid_on_mean_spectra(default_set, metadata):
    root, _ = default_set
    features = np.stack(
        [log_spectrum(load(root / "train_audio" / f, 22050)) for f in metadata.filename]
    )
    labels = metadata.primary_label.to_numpy()
    species = [s for s in np.unique(labels) if (labels == s).sum() >= 2]
    correct = total = 0
    for i in np.flatnonzero(np.isin(labels, species)):
        keep = np.arange(len(labels)) != i
        centroids = np.stack([features[keep & (labels == s)].mean(axis=0) for s in species])
        guess = species[int(np.argmin(np.linalg.norm(centroids - features[i], axis=1)))]
        correct += guess == labels[i]
        total += 1
    accuracy, chance = correct / total, 1 / len(species)
    assert accuracy >= max(0.6, 4 * chance), f"accuracy {accuracy:.2f} vs chance {chance:.2f}"


@pytest.mark.parametrize("family", CALL_FAMILIES)
def test_each_call_family_sounds_in_its_band_and_follows_pitch(family):
    model = draw_call_model(family, np.random.default_rng(7))
    spread = model.bandwidth_hz / 2 + abs(model.glide) * model.centre_hz / 2
    low = max(model.centre_hz - spread, 500.0 if family == "sweep" else 0.0)
    high = model.centre_hz + spread

    def peak_hz(pitch: float) -> float:
        call = render_call(model, 32000, np.random.default_rng(1), pitch=pitch)
        assert call.dtype == np.float32 and np.abs(call).max() == pytest.approx(1.0)
        spectrum = np.abs(np.fft.rfft(call)) ** 2
        return float(np.fft.rfftfreq(len(call), 1 / 32000)[np.argmax(spectrum)])

    assert 0.9 * low <= peak_hz(1.0) <= 1.1 * high
    assert peak_hz(1.06) > peak_hz(1.0)


def test_species_are_drawn_from_every_family_deterministically():
    first, again = draw_species(10, seed=5), draw_species(10, seed=5)
    assert first == again
    assert {sp.call.family for sp in first} == set(CALL_FAMILIES)
    assert [sp.code for sp in first] == sorted(sp.code for sp in first)
    assert all(1000 <= sp.call.centre_hz <= 10000 for sp in draw_species(100, seed=1))


# ------------------------------------------------------------------------------------------------
# Clip counts


def test_clip_counts_are_zipf_like_and_hit_a_total_exactly():
    default = species_clip_counts(12)
    assert default[0] == 40 and default[-1] == 1
    assert default == sorted(default, reverse=True)
    birdclef = species_clip_counts(152, (1, 500), total_clips=15000)
    assert sum(birdclef) == 15000 and len(birdclef) == 152
    assert max(birdclef) == 500 and birdclef.count(1) >= 1
    assert birdclef == sorted(birdclef, reverse=True)
    with pytest.raises(SynthError, match="total_clips=10"):
        species_clip_counts(12, (1, 40), total_clips=10)


# ------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(species=0), "species must be"),
        (dict(soundscapes=-1), "soundscapes must be"),
        (dict(soundscape_s=7.0), "soundscape_s must be a positive multiple of 5"),
        (dict(clips_per_species=(0, 3)), "clips_per_species"),
        (dict(workers=0), "workers must be"),
        (dict(seed=-1), "seed must be"),
    ],
)
def test_bad_arguments_name_the_parameter(tmp_path, kwargs, message):
    with pytest.raises(SynthError, match=message):
        make_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_noise_dir_must_hold_audio(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthError, match=r"noise_dir .*empty: no audio files"):
        make_dataset(tmp_path / "x", noise_dir=tmp_path / "empty")
    with pytest.raises(SynthError, match="folder not found"):
        make_dataset(tmp_path / "x", noise_dir=tmp_path / "missing")
    (tmp_path / "empty" / "broken.wav").write_bytes(b"not audio at all" * 64)
    with pytest.raises(AudioError, match=r"broken\.wav: not decodable"):
        make_dataset(tmp_path / "x", noise_dir=tmp_path / "empty")
    assert not (tmp_path / "x").exists()


def test_an_existing_data_set_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "set"
    make_dataset(out, seed=1, workers=1, **SMALL)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="already holds a data set"):
        make_dataset(out, seed=1, workers=1, **SMALL)
    summary = make_dataset(out, seed=2, workers=1, overwrite=True, **{**SMALL, "species": 3})
    assert (out / "notes.txt").read_text() == "mine"
    on_disk = {p.name for p in (out / "train_audio").iterdir()}
    assert on_disk == set(summary.species)


# ------------------------------------------------------------------------------------------------
# Real background recordings


def best_normalised_correlation(background: np.ndarray, recording: np.ndarray) -> float:
    """Best normalised correlation of ``background`` with a same-length stretch of ``recording``."""
    background = background - background.mean()
    products = signal.fftconvolve(recording, background[::-1], mode="valid")
    energy = np.concatenate([[0.0], np.cumsum(recording.astype(np.float64) ** 2)])
    n = len(background)
    window_norm = np.sqrt(np.maximum(energy[n:] - energy[:-n], 1e-12))
    return float(np.max(np.abs(products) / (window_norm * np.linalg.norm(background))))


def test_noise_dir_recordings_form_the_soundscape_background(real_data, tmp_path):
    manifest = pd.read_csv(real_data / "manifest.csv")
    quiet = manifest[(manifest.contains_birds == "no") & (manifest.duration_s > 5.5)]
    assert len(quiet) >= 3
    bank = tmp_path / "noise"
    bank.mkdir()
    for relative in quiet.path:
        (bank / Path(relative).name).symlink_to(real_data / relative)
    recordings = [load(real_data / p, SOUNDSCAPE_RATE) for p in quiet.path]

    settings = dict(species=3, clips_per_species=(1, 2), soundscapes=2, soundscape_s=5.0,
                    clean_copies=True, workers=1, seed=11)
    with_bank = make_dataset(tmp_path / "with", noise_dir=bank, **settings)
    make_dataset(tmp_path / "without", **settings)
    for audio_id in with_bank.soundscape_ids:
        def best(root: Path, audio_id: str = audio_id) -> float:
            noisy = load(root / "test_soundscapes" / f"{audio_id}.ogg")
            clean = load(root / "test_soundscapes_clean" / f"{audio_id}.ogg")
            return max(best_normalised_correlation(noisy - clean, r) for r in recordings)

        assert best(tmp_path / "with") > 0.3
        assert best(tmp_path / "without") < 0.1
        # The calls do not depend on the background: the clean copies match up to the mix gain.
        clean_with, clean_without = (
            load(tmp_path / run / "test_soundscapes_clean" / f"{audio_id}.ogg")
            for run in ("with", "without")
        )
        if np.abs(clean_with).max() > 0:
            assert np.corrcoef(clean_with, clean_without)[0, 1] > 0.99
