"""Song-bout soundscapes (``make_dataset(bouts=True)``): bouts span the windows they should, the labels
keep the generator's overlap rule, the output is the same for a seed, the default is untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dawnchorus.cli.app import app
from dawnchorus.io.audio import load
from dawnchorus.synth.soundscapes import (
    BOUT_COLUMNS,
    BOUT_S_RANGE,
    SOUNDSCAPE_RATE,
    WINDOW_S,
    make_dataset,
)

SET = dict(species=5, clips_per_species=(1, 2), soundscapes=3, soundscape_s=60.0)


@pytest.fixture(scope="module")
def bout_set(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("bouts") / "set"
    return out, make_dataset(out, seed=0, workers=1, bouts=True, clean_copies=True, **SET)


def labels_by_window(root: Path) -> dict[str, list[set[str]]]:
    table = pd.read_csv(root / "test_labels.csv")
    return {
        audio_id: [set() if birds == "nocall" else set(birds.split()) for birds in rows.birds]
        for audio_id, rows in table.groupby("audio_id", sort=False)
    }


def test_a_bout_labels_every_window_inside_it_and_none_it_does_not_reach(bout_set):
    root, summary = bout_set
    bouts = pd.read_csv(root / "test_bouts.csv")
    labels = labels_by_window(root)
    assert tuple(bouts.columns) == BOUT_COLUMNS
    assert set(bouts.audio_id) == set(summary.soundscape_ids)
    assert set(bouts.species) <= set(summary.species)
    assert ((bouts.end_s - bouts.start_s) <= BOUT_S_RANGE[1] + WINDOW_S).all()
    assert ((bouts.start_s % WINDOW_S) > 0).all()  # drawn anywhere, not on the grid
    spans = 0
    for bout in bouts.itertuples():
        windows = labels[bout.audio_id]
        first, last = int(np.ceil(bout.start_s / WINDOW_S)), int(bout.end_s // WINDOW_S)  # inside
        assert all(bout.species in windows[w] for w in range(first, last))
        spans = max(spans, last - first)
    assert spans >= 4  # songs across many windows
    for audio_id, windows in labels.items():
        mine = bouts[bouts.audio_id == audio_id]
        for w, birds in enumerate(windows):
            lo, hi = w * WINDOW_S, (w + 1) * WINDOW_S
            reaching = set(mine[(mine.start_s < hi) & (mine.end_s > lo)].species)
            assert birds <= reaching  # a label only where one of its bouts overlaps the window
    assert any(not birds for windows in labels.values() for birds in windows)  # some silence


def test_labelled_windows_hold_call_sound_in_the_clean_copies(bout_set):
    root, summary = bout_set
    labels = labels_by_window(root)
    for audio_id in summary.soundscape_ids:
        clean = load(root / "test_soundscapes_clean" / f"{audio_id}.ogg")
        assert len(clean) == 60 * SOUNDSCAPE_RATE
        frames = np.sqrt(np.mean(clean.reshape(-1, SOUNDSCAPE_RATE // 100) ** 2, axis=1))  # 10 ms
        active_s = (frames > 0.01 * frames.max()).reshape(-1, 500).sum(axis=1) / 100
        labelled = np.array([bool(birds) for birds in labels[audio_id]])
        assert (active_s[labelled] >= 0.03).all()  # as for the default soundscapes
        assert (active_s[~labelled] < 0.6).all()


def test_bouts_are_the_same_for_a_seed_whatever_the_workers(tmp_path, bout_set):
    root, _ = bout_set
    again = make_dataset(tmp_path / "again", seed=0, workers=2, bouts=True, clean_copies=True, **SET)
    for name in ("test_labels.csv", "test_bouts.csv", "train_metadata.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes()
    for audio_id in again.soundscape_ids:
        path = Path("test_soundscapes") / f"{audio_id}.ogg"
        assert np.array_equal(load(tmp_path / "again" / path), load(root / path))
    other = make_dataset(tmp_path / "other", seed=1, workers=1, bouts=True, **SET)
    assert (tmp_path / "other" / "test_bouts.csv").read_bytes() != (root / "test_bouts.csv").read_bytes()
    assert other.soundscape_ids != again.soundscape_ids


def test_without_bouts_no_bout_list_is_written(tmp_path):
    make_dataset(tmp_path / "plain", seed=0, workers=1, **dict(SET, soundscapes=1, soundscape_s=15.0))
    assert (tmp_path / "plain" / "test_labels.csv").is_file()
    assert not (tmp_path / "plain" / "test_bouts.csv").exists()


# The command line: what it writes with --bouts and without it (species and soundscapes kept small).
CLI_SET = ["--species", "4", "--soundscapes", "2", "--seed", "0", "--workers", "1"]


def run_synth(out: Path, *extra: str) -> str:
    result = CliRunner().invoke(app, ["synth", str(out), *CLI_SET, *extra])
    assert result.exit_code == 0, result.output
    return result.output


def same_data_set(one: Path, other: Path) -> None:
    for name in ("train_metadata.csv", "scored_birds.json", "test_labels.csv"):
        assert (one / name).read_bytes() == (other / name).read_bytes(), name
    scapes = sorted(p.relative_to(one) for p in (one / "test_soundscapes").iterdir())
    assert scapes == sorted(p.relative_to(other) for p in (other / "test_soundscapes").iterdir())
    for path in scapes:
        assert np.array_equal(load(one / path), load(other / path)), path


def test_synth_bouts_on_the_command_line_writes_song_bout_soundscapes(tmp_path):
    output = run_synth(tmp_path / "cli", "--bouts")
    assert "soundscapes of song bouts" in output
    bouts = pd.read_csv(tmp_path / "cli" / "test_bouts.csv")
    assert tuple(bouts.columns) == BOUT_COLUMNS and len(bouts) > 0
    runs = []  # how many neighbouring windows each species is labelled in, in a row
    for windows in labels_by_window(tmp_path / "cli").values():
        for species in set().union(*windows):
            run = 0
            for birds in windows:
                run = run + 1 if species in birds else 0
                runs.append(run)
    assert max(runs) >= 3  # a bout spans consecutive windows
    make_dataset(tmp_path / "api", species=4, soundscapes=2, seed=0, workers=1, bouts=True)
    same_data_set(tmp_path / "cli", tmp_path / "api")  # the generator's bouts, nothing else


def test_synth_without_bouts_writes_the_default_data_set_unchanged(tmp_path):
    run_synth(tmp_path / "cli")
    assert not (tmp_path / "cli" / "test_bouts.csv").exists()
    make_dataset(tmp_path / "api", species=4, soundscapes=2, seed=0, workers=1)
    same_data_set(tmp_path / "cli", tmp_path / "api")


def test_synth_help_describes_bouts():
    result = CliRunner().invoke(app, ["synth", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "--bouts" in result.output and "song bouts" in result.output
