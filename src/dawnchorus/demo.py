"""The whole method in one command, on a small synthetic set, offline, on a CPU.

:func:`run_demo` builds this folder (``OUT``) and prints each stage as it goes::

    OUT/data/                 synthetic BirdCLEF set (synth.make_dataset, long-tailed classes)
        test_soundscapes/         noisy 60-s field recordings with per-window labels
        test_soundscapes_clean/   the same calls without background (for the clean-vs-noisy view)
        tune_labels.csv           labels of the soundscapes used to tune thresholds
        eval_labels.csv           labels of the held-out soundscapes used only for evaluation
        test_labels.csv           = tune_labels.csv (what training validates on; never the held-out ones)
    OUT/noise/                background recordings mixed into training clips (synthetic wind, rain,
                              stream, insects; or the user's --noise-dir)
    OUT/run/                  model.pt, config.yaml, logs/metrics.csv (train.train)
    OUT/predictions/          predictions of the held-out noisy soundscapes, every output format
    OUT/predictions_clean/    the same for their clean copies
    OUT/evaluation.json       {"noisy": ..., "clean": ...} (metrics.evaluate_files)
    OUT/demo.json             settings, stage times, thresholds, headline scores
    OUT/report.html           the report (report.build_report), images in OUT/report_files/

Domain shift is real even offline: the training clips are clean focal recordings, the soundscapes
mix the calls at -5..15 dB SNR into wind, coloured noise and insects, and the noise recordings used
for training augmentation are generated separately from the soundscapes' backgrounds.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from scipy import signal

from dawnchorus.augment.noise import coloured_noise, unit_rms
from dawnchorus.config import Config, build_config
from dawnchorus.errors import DemoError
from dawnchorus.evaluate.metrics import evaluate_files
from dawnchorus.io.audio import find_audio_files, write_audio
from dawnchorus.report.figures import format_metric
from dawnchorus.report.html import REPORT_NAME, build_report, render_evaluation
from dawnchorus.synth.soundscapes import make_dataset

if TYPE_CHECKING:
    from dawnchorus.models.modelfile import LoadedModel
    from dawnchorus.training.result import TrainResult

AMBIENCE_S = 30.0
AMBIENCE_RATE = 32000
SUMMARY_NAME = "demo.json"
# Everything run_demo writes directly under OUT; a re-run replaces exactly these.
DEMO_OUTPUTS = (
    "data",
    "noise",
    "run",
    "predictions",
    "predictions_clean",
    "evaluation.json",
    "demo.json",
    "report.html",
    "report_files",
)


@dataclass(frozen=True)
class DemoSettings:
    """The scale of the demo. The defaults take a few minutes on a 2-core laptop CPU; tests use
    smaller ones. ``min_clips_per_class`` oversamples rare species up to that many clips per epoch.

    ``backbone`` is trained from scratch: the demo never downloads weights. Measured on the default
    set (8 species, 90 clean clips): ``test_efficientnet``, a 0.1 M-parameter EfficientNet, reached
    padded cmAP 0.85 / macro ROC-AUC 0.82-0.84 on the held-out noisy soundscapes in 15 epochs, while
    ``lcnet_050`` (0.6 M, 15 epochs: 0.60 / 0.50) and ``mnasnet_small`` (0.8 M, 12 epochs: 0.65 /
    0.54) stayed near chance: from random weights, so few clips are too few for them. With ImageNet
    weights (online) the recipe's ``efficientnet_b0`` is the better choice for real data.
    """

    backbone: str = "test_efficientnet"
    epochs: int = 15
    batch_size: int = 16
    learning_rate: float = 3e-3
    min_clips_per_class: int = 16
    clips_per_species: tuple[int, int] = (3, 40)
    tune_soundscapes: int = 4
    eval_soundscapes: int = 6
    soundscape_s: float = 60.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be at least {low}, not {getattr(self, name)}"
            for name, low in (
                ("epochs", 1),
                ("batch_size", 1),
                ("tune_soundscapes", 1),
                ("eval_soundscapes", 1),
            )
            if getattr(self, name) < low
        ]
        if problems:
            raise DemoError("demo settings: " + "; ".join(problems))


@dataclass
class DemoResult:
    """Where the demo wrote everything, and what it scored."""

    out: Path
    data_dir: Path
    run_dir: Path
    model_path: Path
    predictions_dir: Path
    clean_predictions_dir: Path
    evaluation_path: Path
    report_path: Path
    evaluation: dict[str, Any]
    thresholds: dict[str, Any]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def scores(self) -> dict[str, dict[str, float | None]]:
        """Headline scores per condition (noisy, clean)."""
        keys = ("cmap_padded", "roc_auc_macro", "f1_macro_2022", "balanced_accuracy")
        return {name: {key: result.get(key) for key in keys} for name, result in self.evaluation.items()}


# --- settings -----------------------------------------------------------------------------------


def demo_config(noise_dir: Path, seed: int = 0, settings: DemoSettings | None = None) -> Config:
    """Training settings of the demo: a small CNN trained from scratch (no download) with the
    domain-shift and imbalance defaults: background-noise mixing from ``noise_dir``, coloured noise,
    gain, time shift, mixup and SpecAugment; rare species oversampled. The checkpoint kept is the
    one with the best padded cmAP on the tuning soundscapes."""
    settings = settings or DemoSettings()
    return build_config(
        {
            "model": {"backbone": settings.backbone, "pretrained": False},
            "augment": {"noise_dir": str(noise_dir), "noise_p": 0.7, "noise_snr_db": (-3.0, 15.0)},
            "imbalance": {"min_clips_per_class": settings.min_clips_per_class},
            "train": {
                "epochs": settings.epochs,
                "batch_size": settings.batch_size,
                "lr": settings.learning_rate,
                "seed": seed,
                "monitor": "val_soundscape/cmap",
                # one pass of the (oversampled) clips per epoch: the epochs above were measured so
                "min_steps_per_epoch": 0,
            },
        },
        source="demo settings",
    )


# --- synthetic background recordings --------------------------------------------------------------


def _band_noise(
    n: int, rng: np.random.Generator, low_hz: float, high_hz: float, exponent: float
) -> np.ndarray:
    noise = coloured_noise(n, AMBIENCE_RATE, exponent, rng)
    sos = signal.butter(4, (low_hz, high_hz), btype="bandpass", fs=AMBIENCE_RATE, output="sos")
    return unit_rms(signal.sosfilt(sos, noise))


def _slow_envelope(n: int, rng: np.random.Generator, period_s: float, depth: float) -> np.ndarray:
    points = max(2, int(n / AMBIENCE_RATE / period_s) + 2)
    values = np.exp(depth * rng.standard_normal(points))
    return np.interp(np.arange(n), np.linspace(0, n, points), values / values.mean())


def wind_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Low rumble (brown noise below 300-800 Hz) in slow gusts."""
    rumble = _band_noise(n, rng, 20.0, float(rng.uniform(300, 800)), 2.0)
    return unit_rms(rumble * _slow_envelope(n, rng, float(rng.uniform(1.0, 3.0)), 0.6))


def rain_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Broadband hiss plus a few hundred droplet ticks a second (short decaying noise bursts)."""
    hiss = _band_noise(n, rng, 800.0, 12000.0, 0.5)
    drops = np.zeros(n)
    count = int(rng.uniform(100, 300) * n / AMBIENCE_RATE)
    tick = int(0.004 * AMBIENCE_RATE)
    shape = np.exp(-np.arange(tick) / (0.0008 * AMBIENCE_RATE)) * rng.standard_normal(tick)
    starts = rng.integers(0, n - tick, count)
    for start, gain in zip(starts, rng.lognormal(0.0, 0.7, count), strict=True):
        drops[start : start + tick] += gain * shape
    drops = signal.sosfilt(signal.butter(2, 1500, btype="highpass", fs=AMBIENCE_RATE, output="sos"), drops)
    return unit_rms(0.6 * hiss + 0.8 * unit_rms(drops))


def stream_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Running water: several mid-frequency bands, each bubbling with its own fast flutter."""
    total = np.zeros(n)
    for low in rng.uniform(200, 2500, 4):
        band = _band_noise(n, rng, low, low * float(rng.uniform(1.3, 2.0)), 1.0)
        total += band * _slow_envelope(n, rng, float(rng.uniform(0.03, 0.12)), 0.5)
    return unit_rms(total)


def insect_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """A cricket-like band of 4-9 kHz pulsing at 15-60 Hz."""
    centre = float(rng.uniform(4000, 9000))
    band = _band_noise(n, rng, centre * 0.9, centre * 1.1, 0.0)
    t = np.arange(n) / AMBIENCE_RATE
    pulses = (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(15, 60) * t)) ** 3
    return unit_rms(band * pulses * _slow_envelope(n, rng, 5.0, 0.4))


AMBIENCE_GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "wind": wind_noise,
    "rain": rain_noise,
    "stream": stream_noise,
    "insects": insect_noise,
}


def write_synthetic_ambience(folder: Path, seed: int = 0, seconds: float = AMBIENCE_S) -> list[Path]:
    """Write one background recording per kind (wind, rain, stream, insects) plus two mixtures of
    them into ``folder`` (OGG, 32 kHz); returns the paths. Deterministic for ``seed``."""
    folder.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * AMBIENCE_RATE))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7031]))
    recordings = {name: make(n, rng) for name, make in AMBIENCE_GENERATORS.items()}
    for index in (1, 2):
        weights = rng.dirichlet(np.ones(len(AMBIENCE_GENERATORS)))
        mixture = sum(
            np.sqrt(w) * make(n, rng) for w, make in zip(weights, AMBIENCE_GENERATORS.values(), strict=True)
        )
        recordings[f"mixed_{index}"] = unit_rms(mixture)
    written = []
    for name, samples in recordings.items():
        path = folder / f"{name}.ogg"
        write_audio(path, (0.1 * samples).astype(np.float32), AMBIENCE_RATE)
        written.append(path)
    return written


# --- data ----------------------------------------------------------------------------------------------


def split_soundscape_labels(data_dir: Path, tune_count: int) -> tuple[Path, Path]:
    """Split ``test_labels.csv`` by recording into ``tune_labels.csv`` (the first ``tune_count``
    soundscapes) and ``eval_labels.csv`` (the rest); ``test_labels.csv`` is rewritten to hold only
    the tuning soundscapes, so training never validates on the held-out ones."""
    labels_path = data_dir / "test_labels.csv"
    table = pd.read_csv(labels_path, dtype={"audio_id": str})
    recordings = list(dict.fromkeys(table["audio_id"]))
    if not 0 < tune_count < len(recordings):
        raise DemoError(
            f"{labels_path}: need more than {tune_count} soundscapes to tune on {tune_count} and "
            f"evaluate on the rest, found {len(recordings)}"
        )
    tune_ids = set(recordings[:tune_count])
    tune = table[table["audio_id"].isin(tune_ids)]
    held_out = table[~table["audio_id"].isin(tune_ids)]
    tune_path, eval_path = data_dir / "tune_labels.csv", data_dir / "eval_labels.csv"
    tune.to_csv(tune_path, index=False)
    held_out.to_csv(eval_path, index=False)
    tune.to_csv(labels_path, index=False)
    return tune_path, eval_path


def _recordings_of(label_path: Path, audio_dir: Path) -> list[Path]:
    ids = dict.fromkeys(pd.read_csv(label_path, dtype={"audio_id": str})["audio_id"])
    return [audio_dir / f"{audio_id}.ogg" for audio_id in ids]


# --- console helpers -------------------------------------------------------------------------------------


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("  [progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


STAGES = ("data", "train", "tune", "predict", "evaluate", "report")
STAGE_TITLES = {
    "data": "Data",
    "train": "Train",
    "tune": "Tune thresholds",
    "predict": "Predict",
    "evaluate": "Evaluate",
    "report": "Report",
}
# What each stage does, in a newcomer's words; formatted with the DemoSettings fields.
STAGE_EXPLANATIONS = {
    "data": "Clean focal clips to train on (few for most species) and noisy {soundscape_s:g}-s field "
    "recordings (soundscapes) to find the species in, labelled per 5-s window.",
    "train": "{backbone} (trained from scratch) learns from log-mel spectrograms for {epochs} "
    "epoch{epochs_plural}. Each clip gets background noise, coloured noise, gain and a time shift, each "
    "batch mixup and SpecAugment; rare species are oversampled to {min_clips_per_class} clips per epoch. "
    "The checkpoint kept is the one scoring best on the tuning soundscapes.",
    "tune": "A species is reported in a window when its probability reaches its threshold; the "
    "thresholds maximising F1 are chosen on the tuning soundscapes.",
    "predict": "Every 5-s window of the held-out soundscapes, as recorded and as clean copies (calls "
    "only): probabilities (CSV, Parquet), BirdCLEF submissions, Raven and Audacity label files.",
    "evaluate": "Scores on the held-out soundscapes only: padded cmAP (BirdCLEF 2023) and macro ROC-AUC "
    "(2024/25) rank the windows; macro F1 and balanced accuracy (2022) use the tuned thresholds.",
    "report": "Plots and tables of every stage in one HTML page.",
}


@contextmanager
def _stage(console: Console, stage: str, settings: DemoSettings, times: dict[str, float]) -> Iterator[None]:
    """Print the stage's header and what it does; record and print how long it took."""
    console.rule(f"[bold]{STAGES.index(stage) + 1}/{len(STAGES)}  {STAGE_TITLES[stage]}", align="left")
    fields = {**asdict(settings), "epochs_plural": "" if settings.epochs == 1 else "s"}
    console.print(STAGE_EXPLANATIONS[stage].format(**fields), style="dim", highlight=False)
    started = time.perf_counter()
    yield
    times[stage] = round(time.perf_counter() - started, 1)
    console.print(f"  [green]done[/] in {times[stage]:.1f} s", highlight=False)


# --- the stages ---------------------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    """Make ``out`` and mark it as a demo folder. A previous demo there (it has ``demo.json`` and
    nothing but demo outputs) is replaced; any other non-empty folder is refused, never deleted."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"--out {out}: exists and is not a folder")
    entries = {entry.name for entry in out.iterdir()} if out.is_dir() else set()
    foreign = sorted(entries - set(DEMO_OUTPUTS))
    if entries and (foreign or SUMMARY_NAME not in entries):
        shown = ", ".join((foreign or sorted(entries))[:5])
        raise DemoError(
            f"--out {out}: folder holds other files ({shown}) and is not a previous demo; "
            "choose a new or empty folder"
        )
    for name in entries:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_NAME).write_text(json.dumps({"status": "running"}) + "\n")


def _make_data(
    out: Path, species: int, seed: int, noise_dir: Path | None, settings: DemoSettings, console: Console
) -> tuple[Path, Path]:
    """Synthesise the data set, split its soundscapes, and provide the training noise bank."""
    data_dir = out / "data"
    with _progress(console) as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage.replace("_", " "), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        summary = make_dataset(
            data_dir,
            species=species,
            soundscapes=settings.tune_soundscapes + settings.eval_soundscapes,
            seed=seed,
            noise_dir=noise_dir,
            clips_per_species=settings.clips_per_species,
            soundscape_s=settings.soundscape_s,
            clean_copies=True,
            progress=report,
        )
    counts = sorted(summary.clips_per_species.values(), reverse=True)
    _say(
        console,
        f"{summary.n_clips} clean training clips of {len(summary.species)} species "
        f"({summary.train_seconds / 60:.1f} min of audio); long tail: {counts[0]} clips of the "
        f"commonest species, {counts[-1]} of the rarest",
    )
    tune_path, eval_path = split_soundscape_labels(data_dir, settings.tune_soundscapes)
    _say(
        console,
        f"{len(summary.soundscape_ids)} noisy soundscapes of {settings.soundscape_s:g} s: "
        f"{settings.tune_soundscapes} to tune thresholds ({tune_path.name}), "
        f"{settings.eval_soundscapes} held out for evaluation ({eval_path.name})",
    )
    if noise_dir is not None:
        _say(
            console,
            f"your background recordings ({len(find_audio_files(noise_dir))} files in {noise_dir}) "
            "are mixed into the soundscapes and into training clips",
        )
        return data_dir, noise_dir
    training_noise = out / "noise"
    written = write_synthetic_ambience(training_noise, seed=seed)
    _say(
        console,
        f"{len(written)} synthetic background recordings for training augmentation "
        f"({', '.join(p.stem for p in written)}), made apart from the soundscapes' backgrounds",
    )
    return data_dir, training_noise


def _say(console: Console, text: str) -> None:
    console.print(f"  {text}", highlight=False)


def _check_arguments(species: int, epochs: int | None, noise_dir: Path | None) -> None:
    if species < 2:
        raise DemoError(f"--species must be at least 2, not {species}")
    if epochs is not None and epochs < 1:
        raise DemoError(f"--epochs must be at least 1, not {epochs}")
    if noise_dir is not None:
        if not noise_dir.is_dir():
            raise DemoError(f"--noise-dir {noise_dir}: folder not found")
        if not find_audio_files(noise_dir):
            raise DemoError(f"--noise-dir {noise_dir}: no audio files (.ogg, .flac, .wav, ...) in it")


def run_demo(
    out: Path,
    noise_dir: Path | None = None,
    species: int = 8,
    epochs: int | None = None,
    seed: int = 0,
    console: Console | None = None,
    backbone: str | None = None,
    settings: DemoSettings | None = None,
) -> DemoResult:
    """Synthesise a data set, train, tune thresholds, predict, evaluate and write the report under
    ``out`` (layout in the module docstring), printing each stage; return where everything is.

    ``noise_dir``: your background recordings, mixed into the soundscapes and into training clips
    (default: synthetic ambience). ``epochs`` and ``backbone`` (any timm name; trained from
    scratch, the demo never downloads) override ``settings`` (default :class:`DemoSettings`).
    A previous demo in ``out`` is replaced; any other non-empty folder is refused.
    """
    started = time.perf_counter()
    console = console or Console()
    out = Path(out).resolve()  # outputs record paths: absolute ones stay valid from any folder
    noise_dir = Path(noise_dir) if noise_dir is not None else None
    _check_arguments(species, epochs, noise_dir)
    overrides = {key: value for key, value in {"epochs": epochs, "backbone": backbone}.items() if value}
    settings = replace(settings or DemoSettings(), **overrides)
    prepare_out(out)
    console.print(f"[bold]dawnchorus demo[/]: the whole method on a synthetic bird-sound data set, in {out}")
    times: dict[str, float] = {}
    with _stage(console, "data", settings, times):
        data_dir, training_noise = _make_data(out, species, seed, noise_dir, settings, console)
    with _stage(console, "train", settings, times):
        trained = _train(data_dir, out / "run", demo_config(training_noise, seed, settings), console)
    with _stage(console, "tune", settings, times):
        model, thresholds = _tune(trained.model_path, data_dir, console)
    conditions = _conditions(out, data_dir)
    with _stage(console, "predict", settings, times):
        for name, (recordings, predictions_dir) in conditions.items():
            _predict(model, recordings, predictions_dir, name, console)
    with _stage(console, "evaluate", settings, times):
        evaluation = _evaluate(
            model, conditions, data_dir / "eval_labels.csv", out / "evaluation.json", console
        )
    result = DemoResult(
        out=out,
        data_dir=data_dir,
        run_dir=out / "run",
        model_path=trained.model_path,
        predictions_dir=conditions["noisy"][1],
        clean_predictions_dir=conditions["clean"][1],
        evaluation_path=out / "evaluation.json",
        report_path=out / REPORT_NAME,
        evaluation=evaluation,
        thresholds=thresholds,
        stage_seconds=times,
    )
    with _stage(console, "report", settings, times):
        _write_summary(result, settings, species, seed, noise_dir, started, status="report")
        result.report_path = build_report(out)
    result.wall_seconds = round(time.perf_counter() - started, 1)
    _write_summary(result, settings, species, seed, noise_dir, started, status="complete")
    _print_summary(result, console)
    return result


def _conditions(out: Path, data_dir: Path) -> dict[str, tuple[list[Path], Path]]:
    """The held-out soundscapes, as recorded and as clean copies, and where their predictions go."""
    eval_labels = data_dir / "eval_labels.csv"
    return {
        "noisy": (_recordings_of(eval_labels, data_dir / "test_soundscapes"), out / "predictions"),
        "clean": (
            _recordings_of(eval_labels, data_dir / "test_soundscapes_clean"),
            out / "predictions_clean",
        ),
    }


def _train(data_dir: Path, run_dir: Path, config: Config, console: Console) -> TrainResult:
    from dawnchorus.training.run import quiet_lightning, train

    with quiet_lightning():  # as train prints: Lightning's warnings about the run only
        trained = train(data_dir, run_dir, config, log=lambda line: _say(console, line))
    best = "n/a" if trained.best_score is None else f"{trained.best_score:.3f}"
    _say(console, f"model: {trained.model_path} (best {trained.monitor} {best}, {trained.epochs_run} epochs)")
    return trained


def _tune(model_path: Path, data_dir: Path, console: Console) -> tuple[LoadedModel, dict[str, Any]]:
    from dawnchorus.inference.run import tune_model_thresholds
    from dawnchorus.models.modelfile import load_model

    model = load_model(model_path)
    model.thresholds = {"global": 0.5, "per_class": None}
    tuned = tune_model_thresholds(model, data_dir, data_dir / "tune_labels.csv")
    model.save()
    _say(
        console,
        f"global threshold {tuned['global']:.2f}; {tuned['n_own']} of {len(model.labels)} species "
        f"have their own. Macro F1 on the tuning soundscapes: {tuned['f1_before']:.3f} at 0.5 -> "
        f"{tuned['f1_after']:.3f} tuned",
    )
    return model, dict(model.thresholds)


def _predict(
    model: LoadedModel, recordings: list[Path], predictions_dir: Path, name: str, console: Console
) -> None:
    from dawnchorus.inference.run import run_prediction

    with _progress(console) as progress:
        task = progress.add_task(f"{name} soundscapes", total=len(recordings))
        summary = run_prediction(
            model,
            recordings,
            predictions_dir,
            progress=lambda _result, done, total: progress.update(task, completed=done, total=total),
        )
    _say(
        console,
        f"{name}: {summary.windows} windows of {summary.predicted} recordings in "
        f"{summary.wall_seconds:.1f} s ({summary.realtime_factor:.0f}x real time) -> {predictions_dir}",
    )


def _evaluate(
    model: LoadedModel,
    conditions: dict[str, tuple[list[Path], Path]],
    labels: Path,
    evaluation_path: Path,
    console: Console,
) -> dict[str, Any]:
    evaluation = {
        name: evaluate_files(predictions_dir / "predictions.parquet", labels, model=model)
        for name, (_, predictions_dir) in conditions.items()
    }
    evaluation_path.write_text(json.dumps(evaluation, indent=2))
    render_evaluation(evaluation["noisy"], console, title="held-out noisy soundscapes")
    return evaluation


def _write_summary(
    result: DemoResult,
    settings: DemoSettings,
    species: int,
    seed: int,
    noise_dir: Path | None,
    started: float,
    status: str,
) -> None:
    """Write demo.json: what was run, how long each stage took, thresholds and scores."""
    summary = {
        "status": status,
        "species": species,
        "seed": seed,
        "noise_dir": str(noise_dir) if noise_dir else None,
        "settings": {key: getattr(settings, key) for key in settings.__dataclass_fields__},
        "tune_soundscapes": settings.tune_soundscapes,
        "eval_soundscapes": settings.eval_soundscapes,
        "stage_seconds": result.stage_seconds,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "thresholds": result.thresholds,
        "scores": result.scores(),
    }
    (result.out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))


SCORE_NAMES = {
    "cmap_padded": "padded cmAP (BirdCLEF 2023)",
    "roc_auc_macro": "macro ROC-AUC (BirdCLEF 2024/25)",
    "f1_macro_2022": "macro F1 at the tuned thresholds",
    "balanced_accuracy": "balanced accuracy (BirdCLEF 2022)",
}


def _print_summary(result: DemoResult, console: Console) -> None:
    scores = result.scores()
    table = Table(title="Scores on the held-out soundscapes", title_justify="left")
    table.add_column("metric")
    for name in scores:
        table.add_column(name, justify="right")
    for key, label in SCORE_NAMES.items():
        table.add_row(label, *(format_metric(scores[name][key]) for name in scores))
    console.rule("[bold]Done", align="left")
    console.print(table)
    console.print(f"finished in {result.wall_seconds / 60:.1f} min", highlight=False)
    paths = Table.grid(padding=(0, 2))
    for label, path in (
        ("report", result.report_path),
        ("model", result.model_path),
        ("predictions", result.predictions_dir),
        ("scores", result.evaluation_path),
    ):
        paths.add_row(f"[bold]{label}[/]", str(path))
    console.print(paths)
    model, mine = result.model_path, result.out / "my_predictions"
    commands = (
        (
            "Predict on your own recordings (files, folders, or a .txt list of paths):",
            f"dawnchorus predict {model} /path/to/recordings --out {mine}",
        ),
        (
            "Score those predictions against your labels (BirdCLEF CSV or Raven selection tables):",
            f"dawnchorus evaluate {mine / 'predictions.csv'} /path/to/labels --model {model}",
        ),
        ("Open the report:", f"{result.report_path.resolve().as_uri()}"),
    )
    for explanation, command in commands:
        console.print(f"\n{explanation}", highlight=False)
        console.print(f"  {command}", highlight=False, soft_wrap=True, markup=False)


__all__ = [
    "DemoError",
    "DemoResult",
    "DemoSettings",
    "demo_config",
    "run_demo",
    "split_soundscape_labels",
    "write_synthetic_ambience",
]
