"""The augmentation preview: one clip under each augmentation alone, as one PNG, and the one
spectrogram every figure of a clip uses.

:func:`preview_augmentations` draws the figure (``dawnchorus train --preview-augmentations`` and the
report call it); :func:`preview_panels` gives its panels without drawing; :func:`preview_spectrogram`
is the log-mel image of a clip for any figure (the report's clip and soundscape plots use it too).
The augmentations themselves live in :mod:`dawnchorus.augment.waveform` and
:mod:`dawnchorus.augment.batch`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dawnchorus.augment.batch import mix, spec_augment
from dawnchorus.augment.noise import rms
from dawnchorus.augment.waveform import WaveformAugment
from dawnchorus.config import AugmentSettings, FrontendSettings
from dawnchorus.io.audio import crop_or_pad, load


def preview_augmentations(
    clip: Path,
    out_png: Path,
    settings: AugmentSettings,
    sample_rate: int = 32000,
    clip_s: float = 5.0,
    seed: int = 0,
    frontend: FrontendSettings | None = None,
) -> Path:
    """Draw one PNG: the clip's log-mel spectrogram, then the same clip under each augmentation alone.

    The first ``clip_s`` seconds (zero-padded if shorter) of ``clip`` are shown as recorded, under
    every waveform step with probability 1 (background noise only when ``settings.noise_dir`` is
    set), under SpecAugment, and mixed up with a synthetic frequency sweep. Panels share one
    colour scale in dB, titled with the drawn parameters. Returns ``out_png``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if clip_s <= 0:
        raise ValueError(f"clip_s must be positive, got {clip_s}")
    frontend = frontend or FrontendSettings()
    samples = crop_or_pad(load(clip, sample_rate), int(round(clip_s * sample_rate)), mode="start")
    panels = preview_panels(samples, settings, sample_rate, seed, frontend)
    top = max(float(np.max(image)) for _, image in panels)
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    extent = (0.0, clip_s, 0.0, float(frontend.n_mels))
    for axis, (title, image) in zip(axes, panels, strict=False):
        shown = axis.imshow(image, origin="lower", aspect="auto", extent=extent,
                            vmin=top - 80.0, vmax=top, cmap="magma")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("time (s)")
        axis.set_ylabel("mel bin")
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.colorbar(shown, ax=axes[: len(panels)].tolist(), label="dB", shrink=0.8)
    figure.suptitle(f"Augmentation preview: {Path(clip).name}")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=80)
    return out_png


def preview_panels(
    clip: np.ndarray, settings: AugmentSettings, sample_rate: int, seed: int,
    frontend: FrontendSettings,
) -> list[tuple[str, np.ndarray]]:
    """The panels of :func:`preview_augmentations` as ``(title, log-mel dB image)``, without drawing.

    ``clip`` as recorded, then under each waveform step alone (probability 1, parameters drawn from
    ``seed`` and named in the title), under SpecAugment, and mixed up with a synthetic sweep.
    """
    panels = [("original", preview_spectrogram(clip, sample_rate, frontend))]
    augment = WaveformAugment(_forced(settings), sample_rate, seed=seed)
    for name in augment.step_names:
        changed = augment.apply_step(name, clip, sample_rate)
        title = _describe(name, augment.step(name).parameters)
        panels.append((title, preview_spectrogram(changed, sample_rate, frontend)))
    original = torch.from_numpy(panels[0][1]).float()[None]
    generator = torch.Generator().manual_seed(seed)
    masked = spec_augment(original, settings.time_masks, settings.time_mask_fraction,
                          settings.freq_masks, settings.freq_mask_fraction, generator)
    panels.append(("SpecAugment (mean-filled masks)", masked[0].numpy()))
    partner = torch.from_numpy(
        preview_spectrogram(_sweep(len(clip), sample_rate, rms(clip)), sample_rate, frontend)
    ).float()[None]
    # Training draws lam ~ Beta(alpha, alpha), often near 0 or 1; an even mix shows the effect.
    mixed, _ = mix(torch.cat([original, partner]), torch.eye(2), 0.5, torch.tensor([1, 0]))
    panels.append(("mixup λ=0.5 with a synthetic sweep", mixed[0].numpy()))
    return panels


def preview_spectrogram(
    samples: np.ndarray,
    sample_rate: int,
    frontend: FrontendSettings | None = None,
    relative: bool = False,
) -> np.ndarray:
    """A clip's log-mel power in dB for a figure (librosa, reflect padding, ``frontend``'s mel bands).

    By default dB re 1.0 and not per-clip normalised, so gain changes stay visible side by side;
    ``relative`` gives dB re the loudest bin, clipped 80 dB below it (one clip shown alone).
    """
    import librosa

    frontend = frontend or FrontendSettings()
    mel = librosa.feature.melspectrogram(
        y=np.asarray(samples, dtype=np.float32), sr=sample_rate, n_fft=frontend.n_fft,
        hop_length=frontend.hop_length, n_mels=frontend.n_mels, fmin=frontend.fmin,
        fmax=min(frontend.fmax, sample_rate / 2), pad_mode="reflect", power=2.0,
    )
    if relative:
        return librosa.power_to_db(mel, ref=float(mel.max()) or 1.0, amin=1e-10, top_db=80.0)
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


_STEP_TITLES = {
    "shift": "time shift",
    "time_stretch": "time stretch",
    "pitch_shift": "pitch shift",
    "background_noise": "background noise",
    "colored_noise": "coloured noise",
    "gain": "gain",
}


def _describe(name: str, parameters: dict) -> str:
    """A short caption of one step's drawn parameters."""
    details = {
        "shift": lambda: f"{parameters['shift_amount']:+.2f} of clip",
        "time_stretch": lambda: f"rate {parameters['rate']:.2f}",
        "pitch_shift": lambda: f"{parameters['num_semitones']:+.2f} semitones",
        "background_noise": lambda: f"{Path(parameters['noise_file']).stem}, "
                                    f"SNR {parameters['snr_db']:.1f} dB",
        "colored_noise": lambda: f"{parameters['f_decay']:+.1f} dB/oct",
        "gain": lambda: f"{20 * math.log10(parameters['amplitude_ratio']):+.1f} dB",
    }
    return f"{_STEP_TITLES[name]} ({details[name]()})"


def _sweep(length: int, sample_rate: int, level_rms: float, seed: int = 0) -> np.ndarray:
    """A falling frequency sweep at ``level_rms`` over a white floor 30 dB down.

    An unmistakable mixup partner; the floor stands in for a real recording's background, since
    mixing log-mels against digital silence would only darken the clip.
    """
    level = max(level_rms, 1e-3)
    freqs = np.linspace(min(8000.0, 0.4 * sample_rate), 1000.0, length)
    sweep = np.sqrt(2.0) * level * np.sin(2 * np.pi * np.cumsum(freqs) / sample_rate)
    floor = level * 10 ** (-30 / 20) * np.random.default_rng(seed).standard_normal(length)
    return (sweep + floor).astype(np.float32)


def _forced(settings: AugmentSettings) -> AugmentSettings:
    """The same settings with every waveform step's probability set to 1 (for previews)."""
    return settings.model_copy(update={
        "noise_p": 1.0, "colored_noise_p": 1.0, "gain_p": 1.0, "shift_p": 1.0,
        "pitch_shift_p": 1.0, "time_stretch_p": 1.0,
    })
