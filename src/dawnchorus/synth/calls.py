"""Synthetic species and their calls: the call models a synthetic data set is made of.

Each species is a :class:`CallModel`: one of several parameterised call families
(frequency-modulated whistles, trills, harmonic stacks, buzzes, chirps/sweeps) with its own centre
frequency, bandwidth, note length, note rate, note count, harmonics and envelope, drawn by
:func:`draw_species` with made-up names and a home range. :func:`render_call` synthesises one phrase;
:func:`draw_individual` gives one bird's pitch and tempo, so clips of a species vary like individuals
do. Assembling clips, soundscapes and the BirdCLEF layout from them is :mod:`dawnchorus.synth.soundscapes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dawnchorus.errors import SynthError

CALL_FAMILIES = ("whistle", "trill", "harmonic", "buzz", "sweep")
# Fundamentals stay below this so every species is audible at the lowest clip rate (22050 Hz).
MAX_FUNDAMENTAL_HZ = 9500.0
# The seed stream of the species catalogue (synth.soundscapes draws its concerns from streams 2-6).
SPECIES_STREAM = 1


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ADJECTIVES = _words(
    """
    Amber Ashy Barred Black Bronze Chestnut Cinnamon Crested Dusky Eastern Fiery Forest Golden
    Grey Hoary Hooded Indigo Jade Lemon Lesser Marsh Masked Mountain Northern Olive Pale Plain
    Pygmy Red Rufous Rusty Scaly Spotted Streaked Tawny Tufted Upland Velvet Western White
    Yellow
    """
)
_NOUNS = _words(
    """
    Antbird Babbler Bulbul Bunting Cisticola Crake Cuckoo Dove Drongo Euphonia Finch Flycatcher
    Gerygone Grosbeak Honeyeater Kingfisher Lark Manakin Minivet Myna Nuthatch Oriole Owl
    Parakeet Pigeon Pipit Prinia Rail Robin Seedeater Shrike Sparrow Starling Sunbird Swallow
    Tanager Thrush Tit Vireo Warbler Waxbill Weaver Whistler Woodpecker Wren
    """
)
_SYLLABLES = _words(
    """
    ba ca cer chlo da dro ela fa gla hy la lo ma me mi na no pa phi pi ra ri sa si ta te thy to
    tu ve xe zo
    """
)
_GENUS_ENDINGS = ("us", "a", "is", "ops", "ornis", "ia", "ella")
_EPITHET_ENDINGS = ("us", "a", "i", "ensis", "ata", "alis", "icus")


@dataclass(frozen=True)
class CallModel:
    """One species' vocalisation: a phrase of notes from one call family.

    A note lasts ``note_s`` seconds; notes start ``note_rate_hz`` times a second; a phrase has
    between ``notes[0]`` and ``notes[1]`` notes. ``harmonics`` are the amplitudes of harmonics
    1, 2, ... relative to the fundamental. ``modulation_hz`` is the vibrato rate (whistle) or the
    pulse rate (buzz); ``direction`` is +1 for rising notes and -1 for falling ones; ``glide`` is a
    slow relative pitch change across a whistle; ``attack`` is the fraction of a note spent rising;
    ``trend`` is the loudness of the last note relative to the first.
    """

    family: str
    centre_hz: float
    bandwidth_hz: float
    note_s: float
    note_rate_hz: float
    notes: tuple[int, int]
    harmonics: tuple[float, ...]
    modulation_hz: float
    direction: int
    glide: float
    attack: float
    trend: float


@dataclass(frozen=True)
class Species:
    """A synthetic species: eBird-like code, names, home range and call model."""

    code: str
    common_name: str
    scientific_name: str
    latitude: float
    longitude: float
    call: CallModel


def draw_species(count: int, seed: int) -> list[Species]:
    """``count`` species sorted by code, deterministic for ``seed``; families spread evenly."""
    if not 1 <= count <= max_species():
        raise SynthError(f"species must be between 1 and {max_species()}, not {count}")
    rng = stream_rng(seed, SPECIES_STREAM)
    names = _species_names(rng, count)
    families = np.resize(rng.permutation(CALL_FAMILIES), count)
    rng.shuffle(families)
    return [
        Species(
            code=code, common_name=common, scientific_name=scientific,
            latitude=float(rng.uniform(-40, 60)), longitude=float(rng.uniform(-150, 150)),
            call=draw_call_model(str(family), rng),
        )
        for (code, common, scientific), family in zip(names, families, strict=True)
    ]


def draw_call_model(family: str, rng: np.random.Generator) -> CallModel:
    """Draw one species' call parameters from a family's ranges (centre 1-10 kHz)."""
    if family not in CALL_FAMILIES:
        raise SynthError(f"call family must be one of {', '.join(CALL_FAMILIES)}, not {family!r}")
    u = rng.uniform
    harmonics: tuple[float, ...] = (1.0, float(u(0.03, 0.2)))
    modulation, glide = 0.0, 0.0
    if family == "whistle":
        centre = _log_uniform(rng, 1500, 6000)
        bandwidth, note_s, rate = centre * u(0.05, 0.4), u(0.25, 0.9), u(0.7, 2.0)
        notes, modulation, glide = (1, int(rng.integers(1, 4))), u(2, 10), u(-0.3, 0.3)
    elif family == "trill":
        centre = _log_uniform(rng, 2500, 9000)
        bandwidth, note_s, rate = centre * u(0.1, 0.5), u(0.015, 0.06), u(8, 25)
        low = int(rng.integers(5, 12))
        notes = (low, low + int(rng.integers(4, 20)))
    elif family == "harmonic":
        centre = _log_uniform(rng, 1000, 3500)
        bandwidth, note_s, rate = centre * u(0.05, 0.3), u(0.08, 0.35), u(1.5, 5.0)
        notes = (1, int(rng.integers(2, 7)))
        count = int(rng.integers(3, 7))
        overtones = u(0.2, 0.9, count - 1) / np.arange(1, count)
        harmonics = tuple(float(h) for h in np.r_[1.0, overtones])
    elif family == "buzz":
        centre = _log_uniform(rng, 2000, 8000)
        bandwidth, note_s, rate = centre * u(0.2, 0.6), u(0.2, 0.8), u(0.8, 2.5)
        notes, modulation = (1, int(rng.integers(1, 5))), u(60, 200)
    else:  # sweep
        centre = _log_uniform(rng, 2000, 8000)
        bandwidth, note_s, rate = centre * u(0.4, 1.2), u(0.04, 0.15), u(3, 10)
        notes = (2, int(rng.integers(3, 9)))
    top = centre * (1 + abs(glide) / 2) + bandwidth / 2
    scale = min(1.0, MAX_FUNDAMENTAL_HZ / top)
    return CallModel(
        family=family, centre_hz=centre * scale, bandwidth_hz=bandwidth * scale, note_s=note_s,
        note_rate_hz=rate, notes=notes, harmonics=harmonics, modulation_hz=modulation,
        direction=int(rng.choice((-1, 1))), glide=glide, attack=u(0.05, 0.5), trend=u(0.6, 1.4),
    )


def render_call(
    model: CallModel,
    sample_rate: int,
    rng: np.random.Generator,
    pitch: float = 1.0,
    tempo: float = 1.0,
) -> np.ndarray:
    """One phrase of ``model`` at ``sample_rate``, peak 1, float32.

    ``pitch`` multiplies every frequency and ``tempo`` the note rate (and divides note length): the
    per-individual variation. Notes get small random pitch and loudness jitter. FM is synthesised by
    phase accumulation; harmonics fade out before the Nyquist frequency.
    """
    n_notes = int(rng.integers(model.notes[0], model.notes[1] + 1))
    note_len = max(16, int(round(model.note_s / tempo * sample_rate)))
    interval = max(note_len + int(0.004 * sample_rate),
                   int(round(sample_rate / (model.note_rate_hz * tempo))))
    jitter = rng.integers(0, max(1, (interval - note_len) // 4), n_notes)
    onsets = np.arange(n_notes) * interval + jitter
    tau = np.arange(note_len) / note_len
    t = np.arange(note_len) / sample_rate
    note_pitch = pitch * (1 + 0.01 * rng.standard_normal((n_notes, 1)))
    freq = _frequency_contour(model, tau, t, rng.uniform(0, 2 * np.pi, (n_notes, 1))) * note_pitch
    phase = 2 * np.pi * np.cumsum(freq, axis=1) / sample_rate
    phase += rng.uniform(0, 2 * np.pi, (n_notes, 1))
    nyquist = sample_rate / 2
    wave = np.zeros_like(phase)
    for order, amplitude in enumerate(model.harmonics, start=1):
        fade = np.clip((0.95 * nyquist - order * freq) / (0.1 * nyquist), 0.0, 1.0)
        wave += amplitude * fade * np.sin(order * phase)
    envelope = _note_envelope(tau, model.attack)[None, :]
    if model.family == "buzz":
        envelope = envelope * (0.6 + 0.4 * np.sin(2 * np.pi * model.modulation_hz * t))[None, :]
    loudness = np.linspace(1.0, model.trend, n_notes) * (1 + 0.1 * rng.standard_normal(n_notes))
    wave *= envelope * np.clip(loudness, 0.3, None)[:, None]
    out = np.zeros(int(onsets[-1]) + note_len)
    out[onsets[:, None] + np.arange(note_len)[None, :]] = wave
    peak = np.abs(out).max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def draw_individual(rng: np.random.Generator) -> tuple[float, float]:
    """(pitch, tempo) factors of one bird: the per-individual variation :func:`render_call` takes."""
    pitch = float(np.clip(rng.normal(1.0, 0.03), 0.92, 1.08))
    tempo = float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.25))
    return pitch, tempo


def max_species() -> int:
    """The largest species count :func:`draw_species` can name with unique 6-letter codes."""
    return len({(a[:3] + n[:3]).lower() for a in _ADJECTIVES for n in _NOUNS})


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one concern (``stream``) of a data set drawn from ``seed``.

    Each concern (species, metadata, clip ``i``, soundscape ``j``, ...) draws from its own generator,
    so drawing more of one never shifts another, and work split over processes gives the same output.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _species_names(rng: np.random.Generator, count: int) -> list[tuple[str, str, str]]:
    """``count`` (code, common name, scientific name) triples with unique 6-letter codes."""
    pairs = [(a, n) for a in _ADJECTIVES for n in _NOUNS]
    genus_by_noun = {noun: _latin_word(rng, _GENUS_ENDINGS).capitalize() for noun in _NOUNS}
    chosen: dict[str, tuple[str, str, str]] = {}
    for index in rng.permutation(len(pairs)):
        adjective, noun = pairs[index]
        code = (adjective[:3] + noun[:3]).lower()
        if code in chosen:
            continue
        scientific = f"{genus_by_noun[noun]} {_latin_word(rng, _EPITHET_ENDINGS)}"
        chosen[code] = (code, f"{adjective} {noun}", scientific)
        if len(chosen) == count:
            break
    return sorted(chosen.values())


def _latin_word(rng: np.random.Generator, endings: Sequence[str]) -> str:
    syllables = rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))
    return "".join(syllables) + str(rng.choice(endings))


def _note_envelope(tau: np.ndarray, attack: float) -> np.ndarray:
    """Smooth rise over ``attack`` of the note, smooth fall over the rest; 0 at both ends."""
    rising = np.sin(0.5 * np.pi * np.minimum(tau / attack, 1.0)) ** 2
    falling = np.cos(0.5 * np.pi * np.clip((tau - attack) / (1 - attack), 0.0, 1.0)) ** 2
    return np.where(tau < attack, rising, falling)


def _frequency_contour(
    model: CallModel, tau: np.ndarray, t: np.ndarray, phases: np.ndarray
) -> np.ndarray:
    """Instantaneous fundamental (Hz), shape (notes, samples); ``tau``, ``t``: shape (samples,)."""
    c, b = model.centre_hz, model.bandwidth_hz
    if model.family == "whistle":
        return c * (1 + model.glide * (tau - 0.5)) + 0.5 * b * np.sin(
            2 * np.pi * model.modulation_hz * t + phases
        )
    if model.family == "trill":
        return np.broadcast_to(c + model.direction * b * (tau - 0.5), (len(phases), len(tau)))
    if model.family == "harmonic":
        return np.broadcast_to(c + b * (np.sin(np.pi * tau) - 0.5), (len(phases), len(tau)))
    if model.family == "buzz":
        return c + 0.5 * b * np.sin(2 * np.pi * model.modulation_hz * t + phases)
    low, high = max(c - b / 2, 500.0), c + b / 2
    ratio = (high / low) ** (tau if model.direction > 0 else 1 - tau)
    return np.broadcast_to(low * ratio, (len(phases), len(tau)))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))
