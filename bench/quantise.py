"""int8 vs fp32: how much the ``onnx-int8`` engine moves macro ROC-AUC and padded cmAP.

Protocol. For each seed: a synthetic BirdCLEF-shaped set (``make_dataset``, ``clean_copies=True``)
whose labelled 60-s soundscapes mix the synthetic calls with real bird-free recordings of
``../shared/data/real`` (rain, wind, running water: the "real mixes"), plus the same soundscapes
without any background (the "synthetic" condition). A model is trained on the set's focal clips
(validation on held-out clips; the soundscapes stay unseen), then predicts every soundscape with
the fp32 CNN graph (what ``--engine onnx`` runs) and with its int8 graphs
(``dawnchorus.inference.quantise``, QDQ, uint8 activations, int8 per-channel weights), the log-mel
in torch for both. Each quantisation recipe (``--recipes``: the default one, a list, or ``all``)
gives two int8 graphs: calibrated on 64 windows of the *training clips*
(``dawnchorus export MODEL --int8 --calibration train_audio/``) and on 64 windows of the *noisy
soundscapes* themselves (what ``predict --engine onnx-int8`` does with no graph cached: it
calibrates on the recordings it is given).

Printed per seed and condition: macro ROC-AUC and padded cmAP of fp32 and of each int8 graph, the
difference int8 - fp32 and the largest change of any probability; per recipe the differences'
mean +- sd and largest |difference| over all cells, and the mean and largest probability change.
The acceptance bound of issue 16 is |difference| < 0.005 on both metrics. ``--speed`` times the CNN
graph of each recipe against fp32 instead (``efficientnet_b0``, one thread, interleaved rounds);
``--sensitivity SEED`` keeps each convolution of that seed's model in fp32 in turn.

Model: ``--backbone`` (default ``test_efficientnet``, timm's 0.1M-parameter EfficientNet: the same
blocks as ``efficientnet_b0``, depthwise and pointwise convolutions, squeeze-excitation, SiLU, batch
norm folded into the convolutions; trained from scratch, benches never download weights). It learns
the synthetic species in minutes here; ``efficientnet_b0`` from scratch did not in a bench-sized run
(4 epochs, 198 s: soundscape ROC-AUC 0.59, its probabilities within ~0.003 of each other, so int8's
rounding reorders them: |d| 0.08-0.16, a measure of that model, not of int8).
``--backbone mobilenetv4_conv_small`` (ReLU, no squeeze-excitation) learns in the same recipe
unchanged (34-47 s per model). Models, data and graphs stay in ``--work-dir`` (by default one folder
per backbone) and are reused.

    python bench/quantise.py --quick          # 1 seed, small set (a few minutes)
    python bench/quantise.py --recipes all    # the quoted table: 3 seeds, every recipe
    python bench/quantise.py --backbone mobilenetv4_conv_small --seeds 3   # the default on that network
    python bench/quantise.py --speed --recipes all-minmax,head-fp32   # CNN ms per window vs fp32
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from domain_shift import TEST_BANK, bird_free_backgrounds, link_bank, real_data_dir, training_view

from dawnchorus.config import PredictSettings, build_config, load_config
from dawnchorus.evaluate.metrics import evaluate
from dawnchorus.inference.engines import onnx_batch_function
from dawnchorus.inference.export import cached_onnx_path
from dawnchorus.inference.quantise import DEFAULT_RECIPE, RECIPES, Recipe, calibration_windows, quantise_model
from dawnchorus.inference.run import predict_frame
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.models.modelfile import LoadedModel, load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.run import train

BOUND = 0.005
FULL = {"species": 8, "clips": (10, 20), "soundscapes": 12, "epochs": 8, "seeds": 3}
QUICK = {"species": 5, "clips": (6, 10), "soundscapes": 4, "epochs": 4, "seeds": 1}
CONDITIONS = (("real mixes", "test_soundscapes"), ("synthetic", "test_soundscapes_clean"))
METRICS = (("roc_auc_macro", "ROC-AUC"), ("cmap_padded", "cmAP"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, small set, few epochs")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (data set and training)")
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="default /tmp/dawnchorus-quantise[-BACKBONE unless test_efficientnet][-quick]",
    )
    parser.add_argument("--real-data", type=Path, default=None, help="real recordings folder")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: one per core)")
    parser.add_argument(
        "--speed", action="store_true",
        help="time the CNN of each recipe against fp32 instead (efficientnet_b0, one thread, interleaved)",
    )
    parser.add_argument("--speed-backbone", default="efficientnet_b0")
    parser.add_argument(
        "--sensitivity", type=int, default=None, metavar="SEED",
        help="mean |dp| of the default recipe with each convolution of SEED's model also kept in fp32",
    )
    parser.add_argument("--rounds", type=int, default=7, help="--speed: interleaved rounds (median)")
    parser.add_argument(
        "--recipes", default=DEFAULT_RECIPE.name,
        help=f"comma-separated quantisation recipes to score, or 'all' (known: {', '.join(RECIPES)})",
    )
    return parser.parse_args(argv)


def default_work_dir(backbone: str, quick: bool) -> Path:
    """Where models, data and graphs go without ``--work-dir``: one folder per backbone (and for
    ``--quick``), so runs of different backbones never retrain over each other's models."""
    name = "dawnchorus-quantise" + ("" if backbone == "test_efficientnet" else f"-{backbone}")
    return Path("/tmp") / (name + ("-quick" if quick else ""))


def trained_model(data: Path, run: Path, args: argparse.Namespace, epochs: int, seed: int) -> LoadedModel:
    """Train on the set's clips (or reuse the model an earlier run left with the same settings)."""
    config = build_config({
        "model": {"backbone": args.backbone, "pretrained": False},
        "augment": {"noise_p": 0.0},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 5e-3, "seed": seed,
                  "num_workers": args.workers, "warmup_epochs": 1.0},
    })
    saved = run / "config.yaml"
    if (run / "model.pt").is_file() and saved.is_file() and load_config(saved) == config:
        return load_model(run / "model.pt")
    started = time.perf_counter()
    result = train(training_view(data, run.parent / f"{run.name}_view"), run, config, progress_bar=False)
    print(f"  trained {args.backbone} in {time.perf_counter() - started:.0f} s", flush=True)
    return load_model(result.model_path)


def scores(
    model: LoadedModel, graph: Path, folder: Path, truth: pd.DataFrame
) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics of the model's soundscape predictions through one CNN graph, and the predictions."""
    run = onnx_batch_function(model, graph, include_frontend=False, threads=1, lanes=2)
    predictions = predict_frame(model, sorted(folder.glob("*.ogg")), PredictSettings(), batch_function=run)
    result = evaluate(predictions.reset_index(), truth, model.labels, 0.5)
    return {key: float(result[key]) for key, _ in METRICS}, predictions


def run_seed(
    seed: int, preset: dict, args: argparse.Namespace, test_bank: Path, recipes: list[Recipe]
) -> list[dict]:
    work = args.work_dir / f"seed{seed}"
    data = work / "data"
    if not (data / "train_metadata.csv").is_file():
        make_dataset(
            data, species=preset["species"], soundscapes=preset["soundscapes"], seed=seed,
            noise_dir=test_bank, clean_copies=True, clips_per_species=preset["clips"],
        )
    model = trained_model(data, work / "run", args, args.epochs or preset["epochs"], seed)
    audio = model.config.audio
    fp32 = cached_onnx_path(model.path, model, include_frontend=False)
    calibrations = {
        "training clips": data / "train_audio",
        "noisy soundscapes": data / "test_soundscapes",
    }
    graphs = {("fp32", ""): fp32}
    for name, source in calibrations.items():
        windows = {count: calibration_windows([source], audio.sample_rate, audio.clip_s, count)
                   for count in {recipe.windows for recipe in recipes}}
        for recipe in recipes:
            graph = work / f"int8-{recipe.name}-v{recipe.version}-{name.replace(' ', '-')}.onnx"
            if not graph.is_file() or graph.stat().st_mtime < Path(model.path).stat().st_mtime:
                quantise_model(model, graph, windows[recipe.windows], recipe=recipe)
            graphs[(recipe.name, name)] = graph
    rows = []
    truth = read_birdclef_labels(data / "test_labels.csv", labels=model.labels)
    for condition, folder in CONDITIONS:
        reference, fp32_predictions = scores(model, fp32, data / folder, truth)
        for (recipe_name, calibration), graph in graphs.items():
            result, predictions = (reference, fp32_predictions) if recipe_name == "fp32" else scores(
                model, graph, data / folder, truth
            )
            changes = np.abs(predictions.to_numpy() - fp32_predictions.to_numpy())
            rows.append({"seed": seed, "condition": condition, "recipe": recipe_name,
                         "calibration": calibration, **result,
                         **{f"d_{key}": result[key] - reference[key] for key, _ in METRICS},
                         "max_prob_change": float(changes.max()), "mean_prob_change": float(changes.mean())})
    return rows


def render(rows: list[dict]) -> str:
    frame = pd.DataFrame(rows)
    lines = [f"{'seed':>4}  {'condition':<11} {'recipe':<28} {'calibrated on':<18} {'ROC-AUC':>8} {'d':>8} "
             f"{'cmAP':>8} {'d':>8} {'max |dp|':>9}"]
    for row in frame.itertuples():
        lines.append(f"{row.seed:>4}  {row.condition:<11} {row.recipe:<28} {row.calibration:<18} "
                     f"{row.roc_auc_macro:8.4f} {row.d_roc_auc_macro:+8.4f} {row.cmap_padded:8.4f} "
                     f"{row.d_cmap_padded:+8.4f} {row.max_prob_change:9.4f}")
    lines.append("")
    lines.append("int8 - fp32 over seeds, conditions and calibrations: mean +- sd (largest |d|)")
    int8 = frame[frame["recipe"] != "fp32"]
    for recipe, group in int8.groupby("recipe", sort=False):
        parts = []
        for key, label in METRICS:
            d = group[f"d_{key}"]
            parts.append(f"{label} {d.mean():+.4f} +- {d.std(ddof=1) if len(d) > 1 else 0.0:.4f} "
                         f"({d.abs().max():.4f})")
        worst = max(float(group[f"d_{key}"].abs().max()) for key, _ in METRICS)
        verdict = "within" if worst < BOUND else "OUTSIDE"
        dp = f"|dp| mean {group['mean_prob_change'].mean():.4f} max {group['max_prob_change'].max():.3f}"
        lines.append(f"{recipe:<28} {'; '.join(parts)}; {dp}: "
                     f"{verdict} the {BOUND} bound")
    return "\n".join(lines)


def speed(args: argparse.Namespace, recipes: list[Recipe]) -> None:
    """CPU ms per window of the CNN graph of each recipe and of fp32, one thread, batch 4, rounds
    interleaved (the order rotates each round); the ratio int8/fp32 is taken within each round."""
    from infer_throughput import ensure_model, ensure_soundscapes

    from dawnchorus.inference.engines import OnnxRunner
    from dawnchorus.inference.quantise import log_mel_windows

    folder = args.work_dir / "speed"
    inputs = ensure_soundscapes(folder / "soundscapes", 0.05, 1)
    model_path = ensure_model(folder / f"{args.speed_backbone}.pt", inputs, args.speed_backbone)
    model = load_model(model_path)
    audio = model.config.audio
    windows = calibration_windows(inputs, audio.sample_rate, audio.clip_s)
    graphs = {"fp32": cached_onnx_path(model_path, model, include_frontend=False)}
    for recipe in recipes:
        graph = folder / f"{args.speed_backbone}-{recipe.name}-v{recipe.version}.onnx"
        if not graph.is_file() or graph.stat().st_mtime < model_path.stat().st_mtime:
            quantise_model(model, graph, windows, recipe=recipe)
        graphs[recipe.name] = graph
    runners = {name: OnnxRunner(graph, threads=1) for name, graph in graphs.items()}
    batches = [s for s in np.split(log_mel_windows(model, windows[:16]), 4)]
    for runner in runners.values():  # warm up
        runner(batches[0])
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            started = time.thread_time()
            for batch in batches:
                runners[name](batch)
            times[name].append((time.thread_time() - started) * 1000 / 16)
    print(f"\n{args.speed_backbone} CNN, CPU ms per window (one thread, batch 4, median of {args.rounds} "
          f"interleaved rounds; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})")
    fp32 = np.array(times["fp32"])
    for name in names:
        ratios = np.array(times[name]) / fp32
        print(f"{name:<28} {np.median(times[name]):7.2f} ms   int8/fp32 {np.median(ratios):.3f} "
              f"(rounds {ratios.min():.3f}-{ratios.max():.3f})")


def sensitivity(work: Path) -> None:
    """Mean |dp| against fp32 of the default recipe and of it with one more convolution kept in fp32,
    each convolution in turn: calibrated on the noisy soundscapes, scored on them and on the clean
    ones (windows straight from the files; a seed's model from an earlier run of this bench)."""
    import dataclasses

    import onnx

    from dawnchorus.inference.engines import OnnxRunner
    from dawnchorus.inference.quantise import log_mel_windows

    model = load_model(work / "run" / "model.pt")
    audio = model.config.audio
    fp32_path = cached_onnx_path(model.path, model, include_frontend=False)
    fp32 = OnnxRunner(fp32_path, threads=1)
    calibration = calibration_windows([work / "data" / "test_soundscapes"], audio.sample_rate, audio.clip_s)
    sets = {}
    for condition, folder in CONDITIONS:
        spectrograms = log_mel_windows(
            model, calibration_windows([work / "data" / folder], audio.sample_rate, audio.clip_s, 10_000)
        )
        sets[condition] = (spectrograms, fp32(spectrograms))
    convolutions = [node.name for node in onnx.load(str(fp32_path)).graph.node if node.op_type == "Conv"]
    print(f"\n{work.name}: mean |dp| vs fp32, {DEFAULT_RECIPE.name} calibrated on the noisy soundscapes, "
          f"scored on {', '.join(f'{c} ({len(s[0])} windows)' for c, s in sets.items())}")
    for extra in [None, *convolutions]:
        recipe = dataclasses.replace(DEFAULT_RECIPE, nodes_fp32=() if extra is None else (extra,))
        graph = work / "sensitivity.onnx"
        runner = OnnxRunner(quantise_model(model, graph, calibration, recipe=recipe), threads=1)
        changes = [float(np.abs(runner(s) - reference).mean()) for s, reference in sets.values()]
        print(f"{extra or '(default recipe)':<60} " + "  ".join(f"{c:.4f}" for c in changes), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    names = list(RECIPES) if names == ["all"] else names
    unknown = [name for name in names if name not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipes {unknown} (known: {', '.join(RECIPES)})")
    recipes = [RECIPES[name] for name in names]
    if args.speed:
        args.work_dir = args.work_dir or default_work_dir("test_efficientnet", False)
        speed(args, recipes)
        return 0
    if args.sensitivity is not None:
        args.work_dir = args.work_dir or default_work_dir(args.backbone, args.quick)
        sensitivity(args.work_dir / f"seed{args.sensitivity}")
        return 0
    preset = QUICK if args.quick else FULL
    if args.work_dir is None:
        args.work_dir = default_work_dir(args.backbone, args.quick)
    backgrounds = bird_free_backgrounds(real_data_dir(args.real_data))
    test_bank = link_bank(backgrounds, TEST_BANK, args.work_dir / "noise_test")
    started = time.perf_counter()
    rows = []
    for seed in range(args.seeds or preset["seeds"]):
        print(f"seed {seed}", flush=True)
        rows.extend(run_seed(seed, preset, args, test_bank, recipes))
    print()
    print(f"{args.backbone}, {args.epochs or preset['epochs']} epochs; {preset['soundscapes']} soundscapes "
          f"x 60 s per seed (backgrounds: {', '.join(TEST_BANK)}); threshold 0.5; "
          f"{time.perf_counter() - started:.0f} s")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
