"""Synthetic BirdCLEF-shaped data set: focal clips and noisy soundscapes from synthetic species.

:func:`make_dataset` writes exactly the BirdCLEF 2022 layout (``train_metadata.csv``,
``train_audio/<code>/XC<id>.ogg``, ``scored_birds.json``) plus labelled test soundscapes in the
BirdCLEF 2021 style (``test_soundscapes/<audio_id>.ogg`` and ``test_labels.csv``).

Each species is a :class:`~dawnchorus.synth.calls.CallModel` (the species and their calls live in
:mod:`dawnchorus.synth.calls`; this module assembles the data set from them). Every clip is a
different individual (pitch, tempo and phrase length vary), so species are learnable yet
confusable. Training clips are clean focal recordings; soundscapes mix calls at low signal-to-noise
ratios, with distance filtering and reverberation, over coloured noise, wind, insects and
(optionally) real background recordings (read through :class:`~dawnchorus.augment.noise.NoiseBank`,
the bank training uses).

With ``bouts=True`` the soundscapes hold **song bouts** instead of independent calls per window:
each bird sings over a stretch of 10-60 s, repeating its phrases with natural gaps, starting
anywhere relative to the 5-s grid, so a species is present in runs of neighbouring windows and its
phrases cross window edges, as in real dawn choruses (what smoothing over neighbouring windows and
overlapping windows rely on). The bouts are listed in ``test_bouts.csv``; the window labels follow
the same rule either way.

Everything is drawn from ``numpy`` generators seeded by ``(seed, stream, index)``, so the output is
the same for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import ast
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import signal

from dawnchorus.augment.noise import (
    NoiseBank,
    coloured_noise,
    random_looped_segment,
    rms,
    shaped_noise,
    unit_rms,
)
from dawnchorus.errors import SynthError
from dawnchorus.io.audio import find_audio_files, info, write_audio
from dawnchorus.io.files import usable_cores
from dawnchorus.synth.calls import (
    CallModel,
    Species,
    draw_individual,
    draw_species,
    max_species,
    render_call,
    stream_rng,
)

CLIP_SAMPLE_RATES = (22050, 32000, 44100, 48000)
CLIP_SAMPLE_RATE_WEIGHTS = (0.2, 0.4, 0.25, 0.15)
SOUNDSCAPE_RATE = 32000
WINDOW_S = 5.0
MIN_CLIP_S, MAX_CLIP_S = 1.0, 30.0
SNR_DB_RANGE = (-5.0, 15.0)
CLEAN_FLOOR_DB = -40.0  # the clean copies' recorder self-noise, relative to the field background
# A call labels a window when it overlaps it by this much, or lies entirely inside it.
MIN_LABEL_OVERLAP_S = 0.5
CALLS_PER_WINDOW_WEIGHTS = (0.3, 0.35, 0.25, 0.1)  # P(0, 1, 2, 3 calls start in a window)
SCORED_FRACTION = 0.8
# Song bouts (make_dataset(bouts=True)): a bird's singing stretch, the silence between its phrases
# (at most WINDOW_S - 2 * MIN_LABEL_OVERLAP_S, so every window lying inside a bout holds >= 0.5 s
# of one of its phrases and is labelled), bouts per minute beyond the first (Poisson mean), the
# birds of a soundscape, and each phrase's level around its bird's (distance).
BOUT_S_RANGE = (10.0, 60.0)
BOUT_GAP_S_RANGE = (0.5, 3.5)
BOUTS_PER_MINUTE = 2.0
BOUT_BIRDS_RANGE = (2, 4)
BOUT_LEVEL_JITTER_DB = 1.5

METADATA_COLUMNS = (
    "primary_label", "secondary_labels", "type", "latitude", "longitude", "scientific_name",
    "common_name", "author", "license", "rating", "time", "url", "filename",
)
LABEL_COLUMNS = ("row_id", "audio_id", "seconds", "birds")
OUTPUT_NAMES = (
    "train_metadata.csv", "train_audio", "scored_birds.json", "test_soundscapes",
    "test_soundscapes_clean", "test_labels.csv", "test_bouts.csv",
)
BOUT_COLUMNS = ("audio_id", "species", "start_s", "end_s")

# Seed streams (synth.calls.stream_rng): each concern draws from its own generator so one never
# shifts another; stream 1 is the species catalogue (synth.calls.SPECIES_STREAM).
_METADATA_STREAM, _CLIP_STREAM, _SOUNDSCAPE_STREAM, _SCORED_STREAM = range(2, 6)
_NOISE_LOOP_STREAM = 6
# Focal clips get faint noise cut from per-process loops of this many seconds (an FFT per clip
# would cost as much as the calls themselves).
NOISE_LOOP_S = 8.0
NOISE_LOOP_EXPONENTS = (0.0, 1.0, 2.0)


_FIRST_NAMES = (
    "Ana", "Bernd", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kavya",
    "Lucia", "Mateo", "Nadia", "Oskar", "Priya", "Rafael", "Sofia", "Tomas", "Yusuf",
)
_LAST_NAMES = (
    "Almeida", "Berg", "Costa", "Dubois", "Eriksen", "Fontaine", "Garcia", "Hoffmann", "Ito",
    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe", "Rossi", "Silva",
    "Tanaka", "Weber",
)
_LICENSES = (
    "Creative Commons Attribution-NonCommercial-ShareAlike 3.0",
    "Creative Commons Attribution-NonCommercial-ShareAlike 4.0",
    "Creative Commons Attribution-ShareAlike 3.0",
    "Creative Commons Attribution-ShareAlike 4.0",
)
_RATINGS = tuple(np.arange(0.0, 5.01, 0.5).round(1))
_RATING_WEIGHTS = (0.05, 0.005, 0.01, 0.01, 0.03, 0.04, 0.1, 0.12, 0.2, 0.185, 0.25)
_TYPES_BY_FAMILY = {
    "whistle": (("song",), ("song",), ("call", "song"), ("call",)),
    "trill": (("song",), ("song",), ("call", "song")),
    "harmonic": (("call",), ("call",), ("alarm call",), ("call", "song")),
    "buzz": (("call",), ("song",), ("call", "song")),
    "sweep": (("call",), ("flight call",), ("call", "song")),
}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`make_dataset` wrote."""

    out: Path
    species: tuple[str, ...]
    clips_per_species: dict[str, int]
    n_clips: int
    train_seconds: float
    soundscape_ids: tuple[str, ...]
    soundscape_seconds: float
    bytes_written: int
    elapsed_s: float


# ----------------------------------------------------------------------------------------------
# Small signal helpers


def _smooth_envelope(
    n: int, sample_rate: int, rng: np.random.Generator, period_s: float, depth: float
) -> np.ndarray:
    """A slowly varying positive gain (mean about 1): random log-normal points joined linearly."""
    points = max(2, int(n / sample_rate / period_s) + 2)
    values = np.exp(depth * rng.standard_normal(points))
    return np.interp(np.arange(n), np.linspace(0, n, points), values / values.mean())


def _add_at(target: np.ndarray, sound: np.ndarray, start: int, gain: float = 1.0) -> None:
    end = min(len(target), start + len(sound))
    if end > start:
        target[start:end] += gain * sound[: end - start]


# ----------------------------------------------------------------------------------------------
# Training clips (worker side)


@dataclass(frozen=True)
class _ClipTask:
    index: int
    seed: int
    path: Path
    sample_rate: int
    duration_s: float
    primary: CallModel
    secondary: tuple[CallModel, ...]


def _render_clip(task: _ClipTask) -> np.ndarray:
    """A focal recording: the primary bird's phrases, quieter other species, faint clean noise."""
    rng = stream_rng(task.seed, _CLIP_STREAM, task.index)
    sr = task.sample_rate
    clip = np.zeros(int(round(task.duration_s * sr)))
    pitch, tempo = draw_individual(rng)
    position = int(rng.uniform(0.0, 0.6) * sr)
    while position < len(clip):
        phrase = render_call(task.primary, sr, rng, pitch * rng.normal(1, 0.005), tempo)
        _add_at(clip, phrase, position, float(rng.uniform(0.7, 1.0)))
        position += len(phrase) + int(rng.uniform(0.3, 2.5) * sr)
    for model in task.secondary:
        other_pitch, other_tempo = draw_individual(rng)
        for _ in range(int(rng.integers(1, 4))):
            phrase = render_call(model, sr, rng, other_pitch, other_tempo)
            start = int(rng.integers(0, max(1, len(clip) - len(phrase) // 2)))
            _add_at(clip, phrase, start, 10 ** (rng.uniform(-20, -9) / 20))
    clip += 10 ** (rng.uniform(-52, -36) / 20) * _clip_noise(len(clip), sr, rng)
    return (clip * rng.uniform(0.3, 0.9) / max(np.abs(clip).max(), 1e-9)).astype(np.float32)


@lru_cache(maxsize=len(CLIP_SAMPLE_RATES) * len(NOISE_LOOP_EXPONENTS))
def _noise_loop(sample_rate: int, exponent: float) -> np.ndarray:
    """A fixed loop of coloured noise per (rate, colour), the same in every process."""
    rng = stream_rng(0, _NOISE_LOOP_STREAM, sample_rate, int(exponent * 100))
    return coloured_noise(int(NOISE_LOOP_S * sample_rate), sample_rate, exponent, rng)


def _clip_noise(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS-ish noise of random colour: white, pink and brown loops at random offsets."""
    weights = rng.dirichlet(np.ones(len(NOISE_LOOP_EXPONENTS)))
    noise = np.zeros(n, dtype=np.float32)
    for weight, exponent in zip(weights, NOISE_LOOP_EXPONENTS, strict=True):
        loop = _noise_loop(sample_rate, exponent)
        noise += np.sqrt(weight) * np.resize(np.roll(loop, -int(rng.integers(len(loop)))), n)
    return noise


def _write_clip(task: _ClipTask) -> tuple[float, int]:
    """Render and write one clip; returns (seconds, bytes)."""
    samples = _render_clip(task)
    write_audio(task.path, samples, task.sample_rate)
    return len(samples) / task.sample_rate, task.path.stat().st_size


# ----------------------------------------------------------------------------------------------
# Soundscapes (worker side)


@dataclass(frozen=True)
class _SoundscapeTask:
    index: int
    seed: int
    audio_id: str
    duration_s: float
    path: Path
    clean_path: Path | None
    species: tuple[tuple[str, CallModel], ...]
    noise_dir: Path | None
    bouts: bool = False


@dataclass(frozen=True)
class CallEvent:
    """One call placed in a soundscape (seconds from the start)."""

    code: str
    start_s: float
    end_s: float
    snr_db: float


@dataclass(frozen=True)
class SongBout:
    """One bird's singing stretch in a soundscape (seconds from the start): from its first phrase's
    start to its last phrase's end. Every 5-s window lying entirely inside it is labelled ``code``."""

    code: str
    start_s: float
    end_s: float


@lru_cache(maxsize=4)
def _noise_bank(noise_dir: Path) -> tuple[np.ndarray, ...]:
    """The recordings of ``noise_dir`` (the one :class:`~dawnchorus.augment.noise.NoiseBank`) at the
    soundscape rate, unit RMS, with faded ends (they loop without clicks)."""
    try:
        recordings = NoiseBank(noise_dir, SOUNDSCAPE_RATE).clips
    except ValueError:
        recordings = []
    bank = []
    fade = np.sin(0.5 * np.pi * np.linspace(0, 1, int(0.02 * SOUNDSCAPE_RATE))) ** 2
    for recording in recordings:
        if len(recording) > 2 * len(fade):
            samples = recording.copy()
            samples[: len(fade)] *= fade
            samples[-len(fade):] *= fade[::-1]
            bank.append(unit_rms(samples))
    if not bank:
        count = len(find_audio_files(noise_dir))
        raise SynthError(f"noise_dir {noise_dir}: none of its {count} recordings holds usable audio")
    return tuple(bank)


def _wind(n: int, rng: np.random.Generator) -> np.ndarray:
    cutoff = rng.uniform(250, 900)
    rumble = shaped_noise(
        n, SOUNDSCAPE_RATE, rng, lambda f: (np.maximum(f, 20.0) ** -0.5) / (1 + (f / cutoff) ** 2)
    )
    gusts = _smooth_envelope(n, SOUNDSCAPE_RATE, rng, period_s=rng.uniform(0.7, 3.0), depth=0.6)
    return unit_rms(rumble * gusts)


def _insects(n: int, rng: np.random.Generator) -> np.ndarray:
    centre, width = rng.uniform(3500, 9000), rng.uniform(200, 1500)
    band = shaped_noise(
        n, SOUNDSCAPE_RATE, rng, lambda f: np.exp(-0.5 * ((f - centre) / width) ** 2)
    )
    t = np.arange(n) / SOUNDSCAPE_RATE
    pulses = (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(15, 60) * t)) ** 3
    swell = _smooth_envelope(n, SOUNDSCAPE_RATE, rng, period_s=5.0, depth=0.4)
    return unit_rms(band * pulses * swell)


def soundscape_background(
    n: int, rng: np.random.Generator, noise_bank: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Field background at 32 kHz: coloured noise, wind gusts, sometimes insects, and segments of
    real recordings from ``noise_bank`` (which then carry most of the power). Returns unit RMS."""
    colour = float(rng.uniform(0.0, 2.0))
    components = [coloured_noise(n, SOUNDSCAPE_RATE, colour, rng), _wind(n, rng)]
    if rng.random() < 0.4:
        components.append(_insects(n, rng))
    weights = rng.dirichlet(np.ones(len(components)))
    if noise_bank:
        real_share = rng.uniform(0.6, 0.9)
        weights = np.r_[weights * (1 - real_share), real_share]
        picks = rng.choice(len(noise_bank), size=min(len(noise_bank), int(rng.integers(1, 3))),
                           replace=False)
        split = rng.dirichlet(np.ones(len(picks)) * 2)
        real = sum(
            np.sqrt(share) * random_looped_segment(noise_bank[pick], n, rng)
            for pick, share in zip(picks, split, strict=True)
        )
        components.append(unit_rms(real))
    return unit_rms(sum(np.sqrt(w) * c for w, c in zip(weights, components, strict=True)))


def _propagate(call: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Distance and habitat: low-pass (air absorption) and a short exponentially decaying reverb."""
    cutoff = rng.uniform(5000, 14000)
    filtered = signal.sosfilt(signal.butter(2, cutoff, fs=SOUNDSCAPE_RATE, output="sos"), call)
    rt60 = rng.uniform(0.1, 0.6)
    tail_len = int(rt60 * SOUNDSCAPE_RATE)
    decay = np.exp(-6.9 * np.arange(tail_len) / tail_len)
    impulse = rng.standard_normal(tail_len) * decay * rng.uniform(0.01, 0.04)
    impulse[0] = 1.0
    return signal.fftconvolve(filtered, impulse)


def _calls_per_window(n_windows: int, rng: np.random.Generator) -> np.ndarray:
    """How many calls start in each window; at least one silent window when there are several."""
    counts = rng.choice(len(CALLS_PER_WINDOW_WEIGHTS), size=n_windows, p=CALLS_PER_WINDOW_WEIGHTS)
    if n_windows > 1 and not (counts == 0).any():
        counts[int(rng.integers(0, n_windows))] = 0
    return counts


def _place_calls(
    task: _SoundscapeTask, background: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[CallEvent]]:
    """Render the calls track (same length as ``background``) and the events it holds."""
    n = len(background)
    window = int(WINDOW_S * SOUNDSCAPE_RATE)
    n_windows = n // window
    community = rng.choice(len(task.species), size=min(len(task.species), int(rng.integers(2, 7))),
                           replace=False)
    birds = {int(i): draw_individual(rng) for i in community}
    counts = _calls_per_window(n_windows, rng)
    calls = np.zeros(n)
    events: list[CallEvent] = []
    for w, count in enumerate(counts):
        # A call may spill into the next window unless that window must stay silent.
        latest_end = (w + 1) * window if w + 1 < n_windows and counts[w + 1] == 0 else n
        for _ in range(count):
            which = int(rng.choice(community))
            code, model = task.species[which]
            pitch, tempo = birds[which]
            dry = render_call(model, SOUNDSCAPE_RATE, rng, pitch * rng.normal(1, 0.005), tempo)
            room = latest_end - w * window
            dry = dry[: min(len(dry), window, room)]
            start = w * window + int(rng.integers(0, min(window - 1, room - len(dry)) + 1))
            span = background[start : start + len(dry)]
            snr_db = float(rng.uniform(*SNR_DB_RANGE))
            gain = rms(span) / max(rms(dry), 1e-12) * 10 ** (snr_db / 20)
            _add_at(calls, _propagate(dry, rng), start, gain)
            end = start + len(dry)
            events.append(CallEvent(code, start / SOUNDSCAPE_RATE, end / SOUNDSCAPE_RATE, snr_db))
    return calls, events


def _place_bouts(
    task: _SoundscapeTask, background: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[CallEvent], list[SongBout]]:
    """Render a calls track of song bouts (same length as ``background``), its events and bouts.

    A few birds (one individual per species); each bout is one of them singing for
    ``BOUT_S_RANGE`` seconds from a start drawn anywhere (also before the recording, a bout already
    under way), phrase after phrase with ``BOUT_GAP_S_RANGE`` gaps, at the bird's level with a little
    jitter. Phrases are cut at the window length and at the recording's end."""
    n = len(background)
    window = int(WINDOW_S * SOUNDSCAPE_RATE)
    duration_s = n / SOUNDSCAPE_RATE
    size = min(len(task.species), int(rng.integers(BOUT_BIRDS_RANGE[0], BOUT_BIRDS_RANGE[1] + 1)))
    community = rng.choice(len(task.species), size=size, replace=False)
    birds = {int(i): draw_individual(rng) for i in community}
    calls = np.zeros(n)
    events: list[CallEvent] = []
    bouts: list[SongBout] = []
    for _ in range(1 + int(rng.poisson(BOUTS_PER_MINUTE * duration_s / 60.0))):
        which = int(rng.choice(community))
        code, model = task.species[which]
        pitch, tempo = birds[which]
        length_s = float(rng.uniform(*BOUT_S_RANGE))
        position = float(rng.uniform(-0.5 * length_s, duration_s - 1.0))
        stop = min(position + length_s, duration_s)
        level_db = float(rng.uniform(*SNR_DB_RANGE))
        placed: list[CallEvent] = []
        while position < stop:
            dry = render_call(model, SOUNDSCAPE_RATE, rng, pitch * rng.normal(1, 0.005), tempo)[:window]
            snr_db = level_db + float(rng.normal(0.0, BOUT_LEVEL_JITTER_DB))
            start = int(round(position * SOUNDSCAPE_RATE))
            if start >= 0:  # a phrase sung before the recording began is not heard
                dry = dry[: n - start]
                span = background[start : start + len(dry)]
                gain = rms(span) / max(rms(dry), 1e-12) * 10 ** (snr_db / 20)
                _add_at(calls, _propagate(dry, rng), start, gain)
                end = start + len(dry)
                placed.append(CallEvent(code, start / SOUNDSCAPE_RATE, end / SOUNDSCAPE_RATE, snr_db))
            position += len(dry) / SOUNDSCAPE_RATE + float(rng.uniform(*BOUT_GAP_S_RANGE))
        if placed:
            events.extend(placed)
            bouts.append(SongBout(code, placed[0].start_s, placed[-1].end_s))
    events.sort(key=lambda event: (event.start_s, event.code))
    return calls, events, bouts


def _recorder_floor(n: int, background_rms: float, task: _SoundscapeTask) -> np.ndarray:
    """The faint self-noise of a recorder in a silent place, ``CLEAN_FLOOR_DB`` under the field
    background: "clean" means no environment, not digital silence, which no microphone records."""
    rng = stream_rng(task.seed, _SOUNDSCAPE_STREAM, task.index, 2)
    return _clip_noise(n, SOUNDSCAPE_RATE, rng) * background_rms * 10 ** (CLEAN_FLOOR_DB / 20)


def _write_soundscape(task: _SoundscapeTask) -> tuple[list[CallEvent], int, list[SongBout]]:
    """Render and write one soundscape (and its clean copy); returns its calls, the bytes written and
    its song bouts (none without ``task.bouts``)."""
    n = int(round(task.duration_s * SOUNDSCAPE_RATE))
    background_rng = stream_rng(task.seed, _SOUNDSCAPE_STREAM, task.index, 0)
    calls_rng = stream_rng(task.seed, _SOUNDSCAPE_STREAM, task.index, 1)
    bank = _noise_bank(task.noise_dir) if task.noise_dir is not None else ()
    background = soundscape_background(n, background_rng, bank)
    background *= 10 ** (background_rng.uniform(-34, -24) / 20)
    bouts: list[SongBout] = []
    if task.bouts:
        calls, events, bouts = _place_bouts(task, background, calls_rng)
    else:
        calls, events = _place_calls(task, background, calls_rng)
    mix = background + calls
    gain = min(1.0, 0.9 / max(np.abs(mix).max(), 1e-9))
    write_audio(task.path, (mix * gain).astype(np.float32), SOUNDSCAPE_RATE)
    written = task.path.stat().st_size
    if task.clean_path is not None:
        clean = calls + _recorder_floor(n, rms(background), task)
        write_audio(task.clean_path, (clean * gain).astype(np.float32), SOUNDSCAPE_RATE)
        written += task.clean_path.stat().st_size
    return events, written, bouts


def window_labels(
    events: Sequence[CallEvent], n_windows: int, window_s: float = WINDOW_S
) -> list[list[str]]:
    """Sorted species codes per window: a call counts where it overlaps by >= 0.5 s or by at least
    half its own length (so a call entirely inside a window, or a short call cut by a window
    boundary, is labelled where most of it is)."""
    labels: list[set[str]] = [set() for _ in range(n_windows)]
    for event in events:
        need = min(MIN_LABEL_OVERLAP_S, (event.end_s - event.start_s) / 2)
        first = max(0, int(event.start_s // window_s))
        last = min(n_windows - 1, int(event.end_s // window_s))
        for w in range(first, last + 1):
            overlap = min(event.end_s, (w + 1) * window_s) - max(event.start_s, w * window_s)
            if overlap > 0 and overlap >= need - 1e-9:
                labels[w].add(event.code)
    return [sorted(codes) for codes in labels]


# ----------------------------------------------------------------------------------------------
# Planning (main process)


def species_clip_counts(
    species: int, clips_per_species: tuple[int, int] = (1, 40), total_clips: int | None = None
) -> list[int]:
    """Zipf-like clip counts, most common species first: ``lo * (species / rank) ** s`` clipped to
    ``[lo, hi]``. The rarest species gets exactly ``lo``. Without ``total_clips`` the commonest gets
    exactly ``hi``; with it, ``s`` is solved so the counts add up to ``total_clips`` exactly."""
    low, high = clips_per_species
    if low < 1 or high < low:
        raise SynthError(
            f"clips_per_species must be (min >= 1, max >= min), not {clips_per_species}"
        )
    if species == 1:
        if total_clips is not None and not low <= total_clips <= high:
            raise SynthError(f"total_clips={total_clips} must be in {low}..{high} for 1 species")
        return [high if total_clips is None else total_clips]
    ranks = np.arange(1, species + 1)

    def counts_for(exponent: float) -> np.ndarray:
        return np.clip(np.round(low * (species / ranks) ** exponent), low, high).astype(int)

    if total_clips is None:
        return counts_for(math.log(high / low) / math.log(species)).tolist()
    smallest, largest = species * low, (species - 1) * high + low
    if not smallest <= total_clips <= largest:
        raise SynthError(
            f"total_clips={total_clips} is impossible for {species} species with {low}..{high} "
            f"clips each and a long tail: choose {smallest}..{largest}"
        )
    below, above = 0.0, 1.0
    while counts_for(above).sum() < total_clips:
        above *= 2
    for _ in range(60):
        middle = (below + above) / 2
        if counts_for(middle).sum() < total_clips:
            below = middle
        else:
            above = middle
    counts = counts_for(above)
    for _ in range(int(counts.sum()) - total_clips):  # rounding overshoot (a few clips)
        last_of_largest = species - 1 - int(np.argmax(counts[::-1]))  # keeps the order
        counts[last_of_largest] -= 1
    return counts.tolist()


def _clip_durations(rng: np.random.Generator, count: int) -> np.ndarray:
    """Focal-recording lengths: log-normal around 5 s, within 1-30 s, to the millisecond."""
    return np.clip(np.exp(rng.normal(np.log(5.0), 0.75, count)), MIN_CLIP_S, MAX_CLIP_S).round(3)


def _metadata_rows(
    species: Sequence[Species], counts: Sequence[int], rng: np.random.Generator
) -> list[dict[str, Any]]:
    """One BirdCLEF 2022 metadata row per clip, sorted by primary label then XC id."""
    total = int(sum(counts))
    xc_ids = iter(rng.choice(np.arange(10_000, 1_000_000), size=total, replace=False).tolist())
    rating_weights = np.divide(_RATING_WEIGHTS, sum(_RATING_WEIGHTS))
    rows = []
    for sp, count in zip(species, counts, strict=True):
        others = [o.code for o in species if o.code != sp.code]
        for xc_id in sorted(next(xc_ids) for _ in range(count)):
            n_secondary = int(rng.choice(3, p=(0.72, 0.22, 0.06))) if others else 0
            drawn = rng.choice(others, size=min(n_secondary, len(others)), replace=False)
            secondary = sorted(drawn.tolist())
            kinds = _TYPES_BY_FAMILY[sp.call.family]
            rows.append({
                "primary_label": sp.code,
                "secondary_labels": repr(secondary),
                "type": repr(list(kinds[int(rng.integers(len(kinds)))])),
                "latitude": round(sp.latitude + float(rng.normal(0, 2.0)), 4),
                "longitude": round(sp.longitude + float(rng.normal(0, 3.0)), 4),
                "scientific_name": sp.scientific_name,
                "common_name": sp.common_name,
                "author": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
                "license": str(rng.choice(_LICENSES)),
                "rating": float(rng.choice(_RATINGS, p=rating_weights)),
                "time": f"{int(rng.integers(4, 20)):02d}:{int(rng.integers(0, 60)):02d}",
                "url": f"https://www.xeno-canto.org/{xc_id}",
                "filename": f"{sp.code}/XC{xc_id}.ogg",
            })
    return rows


def _check_arguments(
    species: int, soundscapes: int, seed: int, soundscape_s: float, workers: int | None
) -> None:
    if not 1 <= species <= max_species():
        raise SynthError(f"species must be between 1 and {max_species()}, not {species}")
    if soundscapes < 0:
        raise SynthError(f"soundscapes must be >= 0, not {soundscapes}")
    if seed < 0:
        raise SynthError(f"seed must be >= 0, not {seed}")
    windows = soundscape_s / WINDOW_S
    if soundscape_s <= 0 or abs(windows - round(windows)) > 1e-9:
        raise SynthError(
            f"soundscape_s must be a positive multiple of {WINDOW_S:g} s, not {soundscape_s}"
        )
    if workers is not None and workers < 1:
        raise SynthError(f"workers must be >= 1, not {workers}")


def _noise_files(noise_dir: Path | None) -> tuple[Path, ...]:
    if noise_dir is None:
        return ()
    noise_dir = Path(noise_dir)
    if not noise_dir.is_dir():
        raise SynthError(f"noise_dir {noise_dir}: folder not found")
    files = find_audio_files(noise_dir)
    if not files:
        raise SynthError(f"noise_dir {noise_dir}: no audio files (.ogg, .flac, .wav, ...) in it")
    for path in files:  # fail before hours of work, naming the bad file (AudioError)
        info(path)
    return tuple(files)


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"out {out}: exists and is not a folder")
    existing = [name for name in OUTPUT_NAMES if (out / name).exists()]
    if existing and not overwrite:
        raise SynthError(
            f"out {out}: already holds a data set ({', '.join(existing)}); choose an empty folder "
            "or pass overwrite=True"
        )
    for name in existing:
        target = out / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------------------------
# Running


def _run(
    pool: ProcessPoolExecutor | None,
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    stage: str,
    progress: Callable[[str, int, int], None] | None,
    workers: int,
) -> list[Any]:
    """Apply ``function`` to ``tasks`` in order (in the pool when there is one); report progress."""
    if progress:
        progress(stage, 0, len(tasks))
    if pool is None:
        results_iter = map(function, tasks)
    else:
        chunk = max(1, min(32, len(tasks) // (workers * 16)))  # small: steady progress
        results_iter = pool.map(function, tasks, chunksize=chunk)
    results = []
    for done, result in enumerate(results_iter, start=1):
        results.append(result)
        if progress:
            progress(stage, done, len(tasks))
    return results


def make_dataset(
    out: Path,
    species: int = 12,
    soundscapes: int = 4,
    seed: int = 0,
    noise_dir: Path | None = None,
    clips_per_species: tuple[int, int] = (1, 40),
    soundscape_s: float = 60.0,
    clean_copies: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    total_clips: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    bouts: bool = False,
) -> SynthSummary:
    """Write a synthetic data set in the BirdCLEF 2022 layout under ``out``.

    ``clips_per_species`` bounds the long-tailed (Zipf-like) clip counts; ``total_clips`` fixes
    their sum instead of letting the commonest species reach the maximum. ``noise_dir`` adds real
    background recordings to the soundscapes; ``clean_copies`` also writes each soundscape without
    background (``test_soundscapes_clean/``, over a faint recorder floor 40 dB below the background).
    ``progress(stage, done, total)`` is called as files are written. ``workers`` processes render in
    parallel (default: all cores); the output is the same for a seed whatever their number. Refuses
    a folder that already holds a data set unless ``overwrite`` (which deletes only the files this
    function writes). ``bouts`` fills the soundscapes with song bouts (see the module docstring)
    instead of independent calls per window, and lists them in ``test_bouts.csv``.
    """
    started = time.perf_counter()
    out = Path(out)
    _check_arguments(species, soundscapes, seed, soundscape_s, workers)
    counts_by_rank = species_clip_counts(species, clips_per_species, total_clips)
    noise_files = _noise_files(noise_dir)
    _prepare_output(out, overwrite)

    catalogue = draw_species(species, seed)
    metadata_rng = stream_rng(seed, _METADATA_STREAM)
    counts = [counts_by_rank[rank] for rank in metadata_rng.permutation(species)]
    rows = _metadata_rows(catalogue, counts, metadata_rng)
    clip_tasks = _clip_tasks(rows, catalogue, metadata_rng, seed, out)
    scape_tasks = _soundscape_tasks(soundscapes, soundscape_s, catalogue,
                                    Path(noise_dir) if noise_files else None, seed, out, clean_copies,
                                    bouts)

    workers = min(workers or usable_cores(), max(1, len(clip_tasks) + len(scape_tasks)))
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None
    try:
        clip_results = _run(pool, _write_clip, clip_tasks, "train_audio", progress, workers)
        (out / "test_soundscapes").mkdir(exist_ok=True)
        scape_results = _run(
            pool, _write_soundscape, scape_tasks, "test_soundscapes", progress, workers
        )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        _noise_bank.cache_clear()  # the recordings can be large; keep none after the run

    metadata = pd.DataFrame(rows, columns=list(METADATA_COLUMNS))
    metadata.to_csv(out / "train_metadata.csv", index=False)
    _write_scored_birds(out, catalogue, seed)
    _write_test_labels(out, scape_tasks, [events for events, _, _ in scape_results], soundscape_s)
    if bouts:
        _write_bouts(out, scape_tasks, [scape_bouts for _, _, scape_bouts in scape_results])
    return SynthSummary(
        out=out,
        species=tuple(sp.code for sp in catalogue),
        clips_per_species={sp.code: c for sp, c in zip(catalogue, counts, strict=True)},
        n_clips=len(clip_tasks),
        train_seconds=float(sum(seconds for seconds, _ in clip_results)),
        soundscape_ids=tuple(task.audio_id for task in scape_tasks),
        soundscape_seconds=soundscapes * soundscape_s,
        bytes_written=sum(size for _, size in clip_results) + sum(size for _, size, _ in scape_results)
        + sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
        elapsed_s=time.perf_counter() - started,
    )


def _clip_tasks(
    rows: Sequence[dict[str, Any]], catalogue: Sequence[Species], rng: np.random.Generator,
    seed: int, out: Path,
) -> list[_ClipTask]:
    models = {sp.code: sp.call for sp in catalogue}
    rates = rng.choice(CLIP_SAMPLE_RATES, size=len(rows), p=CLIP_SAMPLE_RATE_WEIGHTS)
    durations = _clip_durations(rng, len(rows))
    return [
        _ClipTask(
            index=index, seed=seed, path=out / "train_audio" / row["filename"],
            sample_rate=int(rate), duration_s=float(duration), primary=models[row["primary_label"]],
            secondary=tuple(models[code] for code in parse_label_list(row["secondary_labels"])),
        )
        for index, (row, rate, duration) in enumerate(zip(rows, rates, durations, strict=True))
    ]


def parse_label_list(text: str) -> list[str]:
    """Parse a BirdCLEF list string such as ``"['abc', 'def']"`` (safely, no code execution)."""
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SynthError(f"not a list of strings: {text!r}")
    return value


def _soundscape_tasks(
    count: int, duration_s: float, catalogue: Sequence[Species], noise_dir: Path | None,
    seed: int, out: Path, clean_copies: bool, bouts: bool = False,
) -> list[_SoundscapeTask]:
    numbers = np.arange(100_000, 1_000_000)
    ids = stream_rng(seed, _SOUNDSCAPE_STREAM).choice(numbers, size=count, replace=False)
    species = tuple((sp.code, sp.call) for sp in catalogue)
    tasks = []
    for index, number in enumerate(ids.tolist()):
        audio_id = f"soundscape_{number}"
        tasks.append(_SoundscapeTask(
            index=index, seed=seed, audio_id=audio_id, duration_s=duration_s,
            path=out / "test_soundscapes" / f"{audio_id}.ogg",
            clean_path=out / "test_soundscapes_clean" / f"{audio_id}.ogg" if clean_copies else None,
            species=species, noise_dir=noise_dir, bouts=bouts,
        ))
    return tasks


def _write_scored_birds(out: Path, catalogue: Sequence[Species], seed: int) -> None:
    codes = [sp.code for sp in catalogue]
    keep = max(1, int(round(SCORED_FRACTION * len(codes))))
    scored = sorted(stream_rng(seed, _SCORED_STREAM).choice(codes, size=keep, replace=False).tolist())
    (out / "scored_birds.json").write_text(json.dumps(scored) + "\n")


def _write_test_labels(
    out: Path,
    tasks: Sequence[_SoundscapeTask],
    events: Sequence[Sequence[CallEvent]],
    duration_s: float,
) -> None:
    n_windows = int(round(duration_s / WINDOW_S))
    rows = []
    for task, scape_events in zip(tasks, events, strict=True):
        for w, birds in enumerate(window_labels(scape_events, n_windows)):
            seconds = int(round((w + 1) * WINDOW_S))
            rows.append({
                "row_id": f"{task.audio_id}_{seconds}", "audio_id": task.audio_id,
                "seconds": seconds, "birds": " ".join(birds) if birds else "nocall",
            })
    pd.DataFrame(rows, columns=list(LABEL_COLUMNS)).to_csv(out / "test_labels.csv", index=False)


def _write_bouts(
    out: Path, tasks: Sequence[_SoundscapeTask], bouts: Sequence[Sequence[SongBout]]
) -> None:
    rows = [
        {"audio_id": task.audio_id, "species": bout.code, "start_s": round(bout.start_s, 3),
         "end_s": round(bout.end_s, 3)}
        for task, scape_bouts in zip(tasks, bouts, strict=True)
        for bout in scape_bouts
    ]
    pd.DataFrame(rows, columns=list(BOUT_COLUMNS)).to_csv(out / "test_bouts.csv", index=False)
