"""Class imbalance: does oversampling, a weighted sampler or focal loss help the rarest species?

Protocol. A long-tailed synthetic set (``make_dataset`` with Zipf-like clip counts from 1 to
``max`` per species: the rarest third of the species has 1-3 clips each) and labelled 60-s
soundscapes in which every species is equally likely to sing. Five models are trained identically
(same data, seed, backbone, augmentation and number of optimizer steps) except for the imbalance
handling:

- ``baseline``: uniform sampling, BCE loss;
- ``oversample``: rare classes' clips repeated up to ``min_clips_per_class``;
- ``weighted``: a class-balanced WeightedRandomSampler (weight = 1 / class count ** power);
- ``focal``: sigmoid focal loss (gamma 2);
- ``all``: the three together.

Held-out data: the soundscapes (the rare species have too few clips to hold any out). By default
the *clean* soundscapes (the same calls without background), so that the comparison is about the
label distribution rather than noise robustness; ``--noisy`` scores the noisy ones. The
soundscapes are split in halves: one global threshold per model is tuned on the first half (macro
F1 over all species), the scores are computed on the second. Printed per variant: macro F1 of the
rarest third at the tuned threshold and at 0.5, their padded cmAP, and macro F1 over all species;
means over ``--seeds`` training seeds.

    python bench/imbalance.py --quick
    python bench/imbalance.py --seeds 2
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# The sibling bench holds the shared scoring protocol (tune on one half, score the other).
from common import run_in_work_dir
from domain_shift import (
    SoundscapeSplit,
    describe_time,
    predict_soundscapes,
    score_predictions,
    train_model,
    training_view,
)

from dawnchorus.config import Config, build_config
from dawnchorus.evaluate.metrics import evaluate
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.synth.soundscapes import make_dataset

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "oversample": {"min_clips_per_class": 10},
    "weighted": {"sampler": "weighted", "sampler_power": 0.5},
    "focal": {"loss": "focal", "focal_gamma": 2.0},
    "all": {"min_clips_per_class": 10, "sampler": "weighted", "sampler_power": 0.5, "loss": "focal"},
}
FULL = {"species": 12, "max_clips": 40, "soundscapes": 20, "steps": 160}
QUICK = {"species": 9, "max_clips": 20, "soundscapes": 8, "steps": 40}
COLUMNS = (
    ("rare_f1", "rare F1@tuned"), ("rare_f1_05", "rare F1@0.5"), ("rare_auc", "rare ROC-AUC"),
    ("rare_cmap", "rare cmAP"), ("all_f1", "all F1@tuned"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small set, few steps")
    parser.add_argument("--backbone", default="test_efficientnet",
                        help="timm backbone (default test_efficientnet: learns from random weights in "
                        "a few hundred steps; see bench/domain_shift.py)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per model")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds to average over")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--noisy", action="store_true", help="score the noisy soundscapes")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to run")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: one per core)")
    parser.add_argument("--reuse", action="store_true",
                        help="load models an earlier run left in --work-dir with the same settings")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data and runs here (default: a temporary folder, deleted)")
    return parser.parse_args(argv)


def rarest_third(clip_counts: dict[str, int]) -> list[str]:
    """The third of the species with the fewest clips (ties broken by name)."""
    ordered = sorted(clip_counts, key=lambda label: (clip_counts[label], label))
    return sorted(ordered[: max(1, len(ordered) // 3)])


def variant_config(args: argparse.Namespace, variant: str, steps: int, seed: int) -> Config:
    return build_config(
        {
            "model": {"backbone": args.backbone, "pretrained": False},
            "augment": {"colored_noise_p": 0.3},
            "imbalance": VARIANTS[variant],
            # Every variant makes the same number of optimizer steps (oversampling lengthens epochs).
            "train": {"epochs": 10_000, "max_steps": steps, "batch_size": 8, "lr": 5e-3,
                      "seed": seed, "num_workers": args.workers},
        }
    )


def score_variant(
    predictions: pd.DataFrame, labels: list[str], rare: list[str], labels_csv: Path,
    split: SoundscapeSplit,
) -> dict[str, float]:
    rare_scores = score_predictions(predictions, labels, labels_csv, split, scored_labels=rare)
    everything = score_predictions(predictions, labels, labels_csv, split)
    truth = read_birdclef_labels(labels_csv, labels=labels)
    test_truth = truth[truth.index.get_level_values("audio_id").isin(split.test)]
    at_half = evaluate(predictions, test_truth, labels, 0.5, scored_labels=rare)
    return {
        "rare_f1": rare_scores["f1_macro_2022"],
        "rare_f1_05": at_half["f1_macro_2022"],
        "rare_auc": rare_scores["roc_auc_macro"] if rare_scores["roc_auc_macro"] is not None else np.nan,
        "rare_cmap": rare_scores["cmap_padded"],
        "all_f1": everything["f1_macro_2022"],
    }


def render_table(results: dict[str, list[dict[str, float]]]) -> str:
    header = f"{'variant':<12}" + "".join(f"{title:>15}" for _, title in COLUMNS)
    lines = [header, "-" * len(header)]
    for variant, runs in results.items():
        cells = []
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in runs])
            spread = f"±{np.nanstd(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{np.nanmean(values):>9.3f}{spread:>6}")
        lines.append(f"{variant:<12}" + "".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace, work: Path) -> None:
    preset = QUICK if args.quick else FULL
    steps = args.steps or preset["steps"]
    data = work / "data"
    summary = None
    if not (data / "train_metadata.csv").is_file():
        summary = make_dataset(
            data, species=preset["species"], soundscapes=preset["soundscapes"], seed=args.data_seed,
            clips_per_species=(1, preset["max_clips"]), clean_copies=True,
        )
    counts = pd.read_csv(data / "train_metadata.csv")["primary_label"].value_counts().to_dict()
    rare = rarest_third(counts)
    print(f"clips per species: {dict(sorted(counts.items(), key=lambda item: -item[1]))}")
    print(f"rarest third: {', '.join(f'{label} ({counts[label]})' for label in rare)}")
    if summary is not None:
        print(f"data written in {summary.elapsed_s:.0f} s")
    view = training_view(data, work / "train_only")
    labels_csv = data / "test_labels.csv"
    split = SoundscapeSplit.halves(labels_csv)
    soundscapes = data / ("test_soundscapes" if args.noisy else "test_soundscapes_clean")
    truth = read_birdclef_labels(labels_csv, labels=sorted(counts))
    support = truth[truth.index.get_level_values("audio_id").isin(split.test)][rare].sum()
    print("positive test windows of the rarest third: "
          + ", ".join(f"{label} {int(n)}" for label, n in support.items()))
    absent = [label for label in rare if support[label] == 0]
    rare = [label for label in rare if support[label] > 0]
    if not rare:
        raise SystemExit("no species of the rarest third sings in the scored soundscapes: "
                         "use more soundscapes or another --data-seed")
    if absent:  # F1 would count them as perfect (never present, never predicted)
        print(f"left out of the rare scores (absent from the scored soundscapes): {', '.join(absent)}")
    print(f"held-out data: {'noisy' if args.noisy else 'clean'} soundscapes; threshold tuned on "
          f"{len(split.tune)}, scored on {len(split.test)}; {steps} optimizer steps per model, "
          f"{args.backbone}")

    results: dict[str, list[dict[str, float]]] = {}
    for variant in args.only:
        for seed in range(args.seeds):
            config = variant_config(args, variant, steps, seed)
            model, seconds = train_model(view, work / f"run_{variant}_{seed}", config, args.reuse)
            scores = score_variant(predict_soundscapes(model, soundscapes), model.labels, rare,
                                   labels_csv, split)
            results.setdefault(variant, []).append(scores)
            print(f"{variant} seed {seed}: {describe_time(seconds)}, "
                  + ", ".join(f"{key} {value:.3f}" for key, value in scores.items()), flush=True)
    print()
    print(render_table(results))


def main(argv: list[str] | None = None) -> None:
    run_in_work_dir(run, parse_args(argv), prefix="dawnchorus_imbalance_")


if __name__ == "__main__":
    main()
