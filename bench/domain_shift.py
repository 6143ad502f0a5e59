"""Domain shift: does background-noise augmentation close the clean-vs-noisy gap?

Protocol. A synthetic BirdCLEF-shaped set (``make_dataset(..., clean_copies=True)``): clean focal
training clips, and labelled 60-s soundscapes whose background mixes synthetic field noise with
real bird-free recordings, plus a copy of each soundscape holding the same calls without any
background (``test_soundscapes_clean``). The real bird-free backgrounds of the shared data folder
(manifest rows with ``kind == background`` and ``contains_birds == no``) are split in two banks
holding the same kinds of sound (rain, wind, running water) but different recordings: the
*training* bank is used by the noise augmentation, the *test* bank only inside the soundscapes. The
model never hears a test-bank recording during training (the one insect recording, night
crickets, is in the training bank; the soundscapes also carry synthetic insects).

Three models are trained identically (same data, seed, steps, every other augmentation) except for
the use of the training noise bank: none; background mixing (``noise_p`` = ``--noise-p``); and
background mixing plus bird-free negatives (a share ``--background-only-p`` of training items
replaced by a stretch of the bank with all-zero targets). All see only the training clips
(validation on held-out clips, not on the soundscapes). Each model
predicts the clean and the noisy soundscapes; the soundscapes are split in halves: a global
threshold is tuned on the first half (per model and condition), every score is computed on the
second. Printed: macro ROC-AUC, padded cmAP and macro F1 at the tuned threshold, the clean-noisy
gap of each model and how much of the baseline's gap on noisy soundscapes each augmentation
recovers.

Model: ``test_efficientnet`` (timm's 0.1M-parameter EfficientNet) with random weights (benches
never download). In a trial on the quick set (20 optimizer steps), it reached held-out ROC-AUC 0.97
while ``lcnet_050`` and ``mobilenetv3_small_100`` peaked at 0.55-0.73 (train loss barely moved), and
``efficientnet_b0`` costs about 6x more per training clip on this 2-core CPU; the full run trains
three models per seed in minutes rather than an hour. The "clean" soundscapes hold the calls over
a faint recorder floor 40 dB under the field background.

    python bench/domain_shift.py --quick      # ~5 species, short run
    python bench/domain_shift.py              # the quoted table

The real data folder is ``$DAWNCHORUS_REAL_DATA`` or ``<repo>/../shared/data/real``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from common import run_in_work_dir

import dawnchorus
from dawnchorus.config import Config, build_config, load_config
from dawnchorus.evaluate.metrics import align_predictions, evaluate
from dawnchorus.evaluate.thresholds import tune_thresholds
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.models.modelfile import LoadedModel, load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.run import train

REPO = Path(__file__).resolve().parents[1]
# Bird-free real backgrounds split so that each bank holds rain, wind and running water.
TRAIN_BANK = (
    "redeclipse_rain", "redeclipse_wind", "redeclipse_creek", "supertuxkart_river_loop",
    "redeclipse_nightcrickets",
)
TEST_BANK = (
    "redeclipse_stormrain", "redeclipse_wind1", "redeclipse_blowwind", "redeclipse_waterfall",
    "supertuxkart_waterfall_loop_2",
)
METRICS = (("roc_auc_macro", "ROC-AUC"), ("cmap_padded", "cmAP"), ("f1_macro_2022", "F1@tuned"))
FULL = {"species": 8, "clips": (10, 30), "soundscapes": 24, "epochs": 12}
QUICK = {"species": 5, "clips": (6, 14), "soundscapes": 6, "epochs": 8}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small set, few epochs")
    parser.add_argument("--backbone", default="test_efficientnet",
                        help="timm backbone (default test_efficientnet, see the module docstring)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--noise-p", type=float, default=0.8,
                        help="noise probability of the 2nd and 3rd models")
    parser.add_argument("--background-only-p", type=float, default=0.1,
                        help="share of bird-free negative items of the 3rd model (default 0.1)")
    parser.add_argument("--snr", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="SNR range (dB) of the noise augmentation (default: the config's)")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds (0..N-1) to average over")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: one per core)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data and runs here (default: a temporary folder, deleted)")
    parser.add_argument("--reuse", action="store_true",
                        help="load models an earlier run left in --work-dir with the same settings")
    parser.add_argument("--real-data", type=Path, default=None, help="real recordings folder")
    return parser.parse_args(argv)


# --- data -----------------------------------------------------------------------------------------


def real_data_dir(override: Path | None = None) -> Path:
    """The shared real-recordings folder (``manifest.csv`` inside), or exit with a clear message."""
    configured = override or os.environ.get("DAWNCHORUS_REAL_DATA")
    folder = Path(configured) if configured else REPO.parent / "shared" / "data" / "real"
    if not (folder / "manifest.csv").is_file():
        sys.exit(f"real recordings not found at {folder}: set DAWNCHORUS_REAL_DATA or --real-data")
    return folder


def bird_free_backgrounds(real_dir: Path) -> dict[str, Path]:
    """Stem -> path of every background recording the manifest marks as free of birds."""
    manifest = pd.read_csv(real_dir / "manifest.csv")
    rows = manifest[(manifest["kind"] == "background") & (manifest["contains_birds"] == "no")]
    return {Path(path).stem: real_dir / path for path in rows["path"]}


def link_bank(files: dict[str, Path], names: tuple[str, ...], folder: Path) -> Path:
    """A folder of symlinks to the named recordings (the repo never holds copies)."""
    missing = [name for name in names if name not in files]
    if missing:
        sys.exit(f"bird-free background(s) missing from the manifest: {', '.join(missing)}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = folder / files[name].name
        if not link.exists():
            link.symlink_to(files[name].resolve())
    return folder


def training_view(data: Path, folder: Path) -> Path:
    """The training part of a data set only (metadata, clips, scored labels), as symlinks.

    Without ``test_soundscapes`` beside the clips, training validates (and picks its checkpoint and
    thresholds) on held-out clips only: the soundscapes stay unseen test data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train_metadata.csv", "train_audio", "scored_birds.json"):
        link = folder / name
        if (data / name).exists() and not link.exists():
            link.symlink_to((data / name).resolve())
    return folder


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class SoundscapeSplit:
    """Soundscape ids whose windows tune the threshold, and those that are scored."""

    tune: list[str]
    test: list[str]

    @classmethod
    def halves(cls, labels_csv: Path) -> SoundscapeSplit:
        ids = sorted(read_birdclef_labels(labels_csv).index.get_level_values("audio_id").unique())
        middle = len(ids) // 2
        return cls(tune=ids[:middle], test=ids[middle:])


def _rows_of(frame: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    return frame[frame.index.get_level_values("audio_id").isin(ids)]


def predict_soundscapes(model: LoadedModel, folder: Path) -> pd.DataFrame:
    """Window probabilities (file, start_s, end_s, labels...) of every soundscape in ``folder``."""
    return dawnchorus.predict(model, sorted(folder.glob("*.ogg"))).reset_index()


def score_predictions(
    predictions: pd.DataFrame,
    labels: list[str],
    labels_csv: Path,
    split: SoundscapeSplit,
    scored_labels: list[str] | None = None,
) -> dict[str, float]:
    """Tune one global threshold on ``split.tune`` (macro F1 over all ``labels``), then return
    :func:`~dawnchorus.evaluate.metrics.evaluate` over ``scored_labels`` on ``split.test``."""
    truth = read_birdclef_labels(labels_csv, labels=labels)
    aligned, tune_truth = align_predictions(predictions, _rows_of(truth, split.tune))
    y_true = tune_truth[labels].to_numpy(dtype=np.int64)
    threshold, _ = tune_thresholds(y_true, aligned[labels].to_numpy(dtype=np.float64))
    result = evaluate(predictions, _rows_of(truth, split.test), labels, threshold, scored_labels)
    result["threshold"] = threshold
    return result


def score_soundscapes(
    model: LoadedModel, folder: Path, labels_csv: Path, split: SoundscapeSplit
) -> dict[str, float]:
    """:func:`score_predictions` of the model's predictions on the soundscapes in ``folder``."""
    return score_predictions(predict_soundscapes(model, folder), model.labels, labels_csv, split)


# --- training ----------------------------------------------------------------------------------------


def bench_config(
    args: argparse.Namespace, epochs: int, noise_dir: Path, noise_p: float, background_only_p: float,
    seed: int,
) -> Config:
    """Everything equal between the models except ``noise_p`` and ``background_only_p``."""
    augment = {
        "noise_dir": str(noise_dir),
        "noise_p": noise_p,
        "background_only_p": background_only_p,
        "colored_noise_p": 0.0,  # the comparison is about background noise alone
    }
    if args.snr is not None:
        augment["noise_snr_db"] = list(args.snr)
    return build_config(
        {
            "model": {"backbone": args.backbone, "pretrained": False},
            "augment": augment,
            "train": {"epochs": epochs, "batch_size": 8, "lr": 5e-3, "seed": seed,
                      "num_workers": args.workers, "warmup_epochs": 1.0},
        }
    )


def train_model(
    view: Path, run: Path, config: Config, reuse: bool = False
) -> tuple[LoadedModel, float | None]:
    """Train on ``view`` into ``run``; returns the model and the seconds taken. With ``reuse``, a model
    an earlier invocation left in ``run`` with exactly these settings is loaded instead (seconds None)."""
    model_path, saved = run / "model.pt", run / "config.yaml"
    if reuse and model_path.is_file() and saved.is_file() and load_config(saved) == config:
        return load_model(model_path), None
    started = time.perf_counter()
    result = train(view, run, config, progress_bar=False)
    return load_model(result.model_path), time.perf_counter() - started


def describe_time(seconds: float | None) -> str:
    return "reused from --work-dir" if seconds is None else f"trained in {seconds:.0f} s"


# --- report ---------------------------------------------------------------------------------------------

# scores[model][condition] -> one evaluate() result per training seed
Scores = dict[str, dict[str, list[dict[str, float]]]]
# Below this clean-noisy difference there is no gap worth quoting a percentage of.
MIN_GAP = 0.01


def mean(runs: list[dict[str, float]], key: str) -> float:
    return float(np.mean([result[key] for result in runs]))


def _cell(runs: list[dict[str, float]], key: str) -> str:
    values = np.array([result[key] for result in runs])
    spread = f"±{values.std():.3f}" if len(values) > 1 else ""
    return f"{values.mean():>8.3f}{spread:<7}"


LABEL_WIDTH = 44


def render_table(scores: Scores) -> str:
    """Rows model x condition (mean ± std over seeds), the gaps, and the share of the baseline's
    clean-noisy gap that the noise-trained model recovers on the noisy soundscapes."""
    header = f"{'model / soundscapes':<{LABEL_WIDTH}}" + "".join(f"{t:>8}{'':<7}" for _, t in METRICS)
    lines = [header, "-" * len(header)]
    for model, by_condition in scores.items():
        for condition in ("clean", "noisy"):
            cells = "".join(_cell(by_condition[condition], key) for key, _ in METRICS)
            lines.append(f"{model + ' / ' + condition:<{LABEL_WIDTH}}{cells}")
    lines.append("-" * len(header))
    (_, base), *augmented = scores.items()
    for name, by_condition in scores.items():
        gaps = "".join(
            f"{mean(by_condition['clean'], key) - mean(by_condition['noisy'], key):>8.3f}{'':<7}"
            for key, _ in METRICS
        )
        lines.append(f"{'gap clean - noisy, ' + name:<{LABEL_WIDTH}}{gaps}")
    for aug_name, aug in augmented:
        closed = []
        for key, _ in METRICS:
            gap = mean(base["clean"], key) - mean(base["noisy"], key)
            recovered = mean(aug["noisy"], key) - mean(base["noisy"], key)
            share = f"{100 * recovered / gap:>7.0f}%" if gap >= MIN_GAP else f"{'no gap':>8}"
            closed.append(f"{share}{'':<7}")
        lines.append(f"{'gap closed by ' + aug_name:<{LABEL_WIDTH}}{''.join(closed)}")
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> None:
    preset = QUICK if args.quick else FULL
    epochs = args.epochs or preset["epochs"]
    backgrounds = bird_free_backgrounds(real_data_dir(args.real_data))
    train_bank = link_bank(backgrounds, TRAIN_BANK, work / "noise_train")
    test_bank = link_bank(backgrounds, TEST_BANK, work / "noise_test")
    print(f"training noise bank: {', '.join(TRAIN_BANK)}")
    print(f"test noise bank (soundscapes only): {', '.join(TEST_BANK)}")

    data = work / "data"
    if not (data / "train_metadata.csv").is_file():
        summary = make_dataset(
            data, species=preset["species"], soundscapes=preset["soundscapes"], seed=args.data_seed,
            noise_dir=test_bank, clean_copies=True, clips_per_species=preset["clips"],
        )
        print(f"data: {summary.n_clips} clips of {len(summary.species)} species "
              f"({summary.train_seconds / 60:.1f} min), {len(summary.soundscape_ids)} soundscapes "
              f"x 60 s, written in {summary.elapsed_s:.0f} s")
    view = training_view(data, work / "train_only")
    labels_csv = data / "test_labels.csv"
    split = SoundscapeSplit.halves(labels_csv)
    print(f"thresholds tuned on {len(split.tune)} soundscapes, scores on the other {len(split.test)}; "
          f"{args.backbone}, {epochs} epochs, {args.seeds} training seed(s)")

    scores: Scores = {}
    models = (
        ("no noise aug", 0.0, 0.0),
        (f"noise mix p={args.noise_p:g}", args.noise_p, 0.0),
        (f"noise mix + {args.background_only_p:g} negatives", args.noise_p, args.background_only_p),
    )
    for seed in range(args.seeds):
        for name, noise_p, negatives in models:
            config = bench_config(args, epochs, train_bank, noise_p, negatives, seed)
            run_dir = work / f"run_noise_{noise_p:g}_negatives_{negatives:g}_seed{seed}"
            model, seconds = train_model(view, run_dir, config, args.reuse)
            by_condition = scores.setdefault(name, {"clean": [], "noisy": []})
            for condition, folder in (("clean", "test_soundscapes_clean"), ("noisy", "test_soundscapes")):
                by_condition[condition].append(score_soundscapes(model, data / folder, labels_csv, split))
            print(f"seed {seed} '{name}': {describe_time(seconds)}, best val/roc_auc (held-out clips) "
                  f"{model.metadata['best_score']:.3f}; soundscape ROC-AUC clean "
                  f"{by_condition['clean'][-1]['roc_auc_macro']:.3f}, noisy "
                  f"{by_condition['noisy'][-1]['roc_auc_macro']:.3f}", flush=True)
    print()
    print(render_table(scores))


def main(argv: list[str] | None = None) -> None:
    run_in_work_dir(run, parse_args(argv), prefix="dawnchorus_domain_shift_")


if __name__ == "__main__":
    main()
