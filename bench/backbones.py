"""Which network should be the default? Accuracy of backbones and inputs from scratch, and their CNN cost.

Protocol. The data set of ``domain_shift.py``: synthetic species (clean focal training clips) and
labelled 60-s soundscapes whose background mixes synthetic field noise with real bird-free
recordings of the *test* bank, plus a copy of each soundscape without that background
(``test_soundscapes_clean``). Training augments with the *training* bank (the same kinds of sound,
other recordings) and the package's default augmentation otherwise; it validates on held-out clips,
never on the soundscapes.

Each arm is a set of dotted :class:`~dawnchorus.config.Config` overrides on one training recipe
(``--arm NAME KEY=VALUE ...``, repeatable; default arms: ``b0`` efficientnet_b0, ``mnv4s``
mobilenetv4_conv_small, ``b0-hop1024`` efficientnet_b0 on a log-mel of hop 1024 (128 x 157 instead of
128 x 313), ``mnv3l`` mobilenetv3_large_100). Every arm trains with the same recipe and the same
number of optimizer steps (``--epochs`` x ``--steps-per-epoch``, batch ``--batch-size``, AdamW at
``--lr``, one warm-up epoch), from random weights (benches never download: ImageNet weights would
change every figure here). For each training seed x arm: train, predict the noisy and the clean
soundscapes (``dawnchorus.predict``, the default engine), score macro ROC-AUC and padded cmAP over
all soundscapes (:func:`~dawnchorus.evaluate.metrics.evaluate`). Printed: per arm mean ± sd over
seeds, per-seed rows with training seconds, and the paired differences of each arm against the first
(same seed, same data: mean ± sd of the per-seed differences), which is the figure to compare.

Recipe. ``efficientnet_b0`` from scratch did not learn with ``quantise.py``'s recipe (batch 8, lr
5e-3, 4 epochs); with batch 16, lr 1e-3 it does: the quick check (``--quick``, 4 epochs of 20 steps)
reached held-out clip ROC-AUC 0.86-1.00 for every arm. The quoted run trains 12 epochs of 20 steps
(240 optimizer steps, 3840 training items; b0 reached held-out ROC-AUC 0.93-0.98 where 80 steps gave
0.74-0.84 and seed-to-seed spreads as large as the differences). Still short: a small budget from
random weights favours networks that learn fast, which fine-tuning from ImageNet weights does not
measure.

``--cost`` prints each arm's CNN cost instead: the model of the lowest seed in ``--work-dir`` (or an
untrained one of the arm's config) exported through :func:`dawnchorus.inference.export.cached_onnx_path`
(the CNN graph, log-mel outside), and its int8 graph (:func:`dawnchorus.inference.quantise.quantise_model`,
the default recipe, calibrated on the soundscapes), timed with onnxruntime on one thread, batches of 4
log-mel windows, interleaved rounds (the order rotates each round), median CPU ms per window. Only
meaningful on a quiet machine.

Models, scores and data stay in ``--work-dir`` (folders named by a hash of the config): a later run
reuses what an earlier one trained, so arms and seeds can be split over several invocations
(``--arms``, ``--seeds``, ``--first-seed``) and a last one with every arm and seed prints the whole
table without training.

    python bench/backbones.py --quick                  # 1 seed, small set: the check
    python bench/backbones.py --seeds 3                # the quoted table (split it: --arms, --first-seed)
    python bench/backbones.py --cost --rounds 9        # CNN ms per window of each arm (quiet machine)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from domain_shift import TEST_BANK, TRAIN_BANK, bird_free_backgrounds, link_bank, real_data_dir, training_view
from self_training import digest, parse_overrides, with_overrides

import dawnchorus
from dawnchorus.config import Config, build_config
from dawnchorus.errors import ConfigError
from dawnchorus.evaluate.metrics import evaluate
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.models.modelfile import LoadedModel, load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.run import read_checkpoint, train

DEFAULT_ARMS = (
    ("b0", {"model.backbone": "efficientnet_b0"}),
    ("mnv4s", {"model.backbone": "mobilenetv4_conv_small"}),
    ("b0-hop1024", {"model.backbone": "efficientnet_b0", "frontend.hop_length": 1024}),
    ("mnv3l", {"model.backbone": "mobilenetv3_large_100"}),
)
FULL = {"species": 8, "clips": (10, 30), "soundscapes": 16, "epochs": 12}
QUICK = {"species": 5, "clips": (6, 14), "soundscapes": 6, "epochs": 4}
CONDITIONS = (("noisy", "test_soundscapes"), ("clean", "test_soundscapes_clean"))
METRICS = (("roc_auc_macro", "ROC-AUC"), ("cmap_padded", "cmAP"))
SCORES_NAME = "bench_scores.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 species, 6 soundscapes: checks the bench")
    parser.add_argument(
        "--arm", dest="arm_specs", action="append", nargs="+", default=[], metavar="NAME [KEY=VALUE ...]",
        help="an arm: dotted config overrides on the bench recipe (repeatable; replaces the default arms)",
    )
    parser.add_argument("--arms", default=None, help="comma-separated names: run only these arms")
    parser.add_argument("--seeds", type=int, default=1, help="training seeds (default 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST + SEEDS - 1")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 12; --quick 4)")
    parser.add_argument("--steps-per-epoch", type=int, default=20,
                        help="optimizer steps per epoch (train.min_steps_per_epoch; default 20)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: one per core)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="data, models and scores (default /tmp/dawnchorus-backbones[-quick])")
    parser.add_argument("--real-data", type=Path, default=None, help="real recordings folder")
    parser.add_argument("--cost", action="store_true", help="time each arm's CNN instead (quiet machine)")
    parser.add_argument("--rounds", type=int, default=7, help="--cost: interleaved rounds (median)")
    parser.add_argument("--no-int8", action="store_true", help="--cost: fp32 only")
    args = parser.parse_args(argv)
    try:
        arms = [(spec[0], parse_overrides(spec[1:])) for spec in args.arm_specs] or list(DEFAULT_ARMS)
    except ConfigError as exc:
        parser.error(str(exc))
    if len({name for name, _ in arms}) < len(arms):
        parser.error("--arm: every arm needs its own name")
    if args.arms is not None:
        wanted = [name.strip() for name in args.arms.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in dict(arms)]
        if unknown:
            parser.error(f"--arms: unknown arm(s) {', '.join(unknown)} (known: {', '.join(dict(arms))})")
        arms = [(name, overrides) for name, overrides in arms if name in wanted]
    args.arms = arms
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.work_dir is None:
        args.work_dir = Path("/tmp/dawnchorus-backbones" + ("-quick" if args.quick else ""))
    return args


# --- training ------------------------------------------------------------------------------------------


def arm_config(args: argparse.Namespace, epochs: int, train_bank: Path, seed: int,
               overrides: dict[str, object]) -> Config:
    """The bench recipe (random weights, the package's augmentation with the training bank) plus the
    arm's overrides, validated as a whole (a key the config lacks fails before any training)."""
    base = build_config({
        "model": {"pretrained": False},
        "augment": {"noise_dir": str(train_bank)},
        "train": {"epochs": epochs, "min_steps_per_epoch": args.steps_per_epoch,
                  "batch_size": args.batch_size, "lr": args.lr, "seed": seed,
                  "num_workers": args.workers, "warmup_epochs": 1.0},
    })
    return with_overrides(base, overrides)


def trained_and_scored(
    view: Path, data: Path, folder: Path, config: Config, labels_csv: Path
) -> dict[str, object]:
    """Train ``config`` into ``folder`` and score it on both soundscape sets, or read the scores an
    earlier run left there (same config: the folder is named by its hash)."""
    saved = folder / SCORES_NAME
    if saved.is_file():
        return {**json.loads(saved.read_text()), "reused": True}
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted run
    started = time.perf_counter()
    result = train(view, folder, config, progress_bar=False)
    seconds = time.perf_counter() - started
    model = load_model(result.model_path)
    steps = int(read_checkpoint(folder / "checkpoints" / "last.ckpt").get("global_step", 0))
    record: dict[str, object] = {
        "train_s": seconds, "steps": steps, "val_roc_auc": model.metadata.get("best_score"),
    }
    for condition, subfolder in CONDITIONS:
        record[condition] = score(model, data / subfolder, labels_csv)
    saved.write_text(json.dumps(record, indent=1))
    return {**record, "reused": False}


def score(model: LoadedModel, folder: Path, labels_csv: Path) -> dict[str, float]:
    """Macro ROC-AUC and padded cmAP of the model's windows over every soundscape in ``folder``."""
    predictions = dawnchorus.predict(model, sorted(folder.glob("*.ogg"))).reset_index()
    truth = read_birdclef_labels(labels_csv, labels=model.labels)
    result = evaluate(predictions, truth, model.labels, 0.5)
    return {key: float(result[key]) for key, _ in METRICS}


# --- report ----------------------------------------------------------------------------------------------

Results = dict[str, dict[int, dict[str, object]]]  # arm -> seed -> record


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _diff(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def columns() -> list[tuple[str, str]]:
    return [(condition, key) for condition, _ in CONDITIONS for key, _ in METRICS]


def column_titles() -> list[str]:
    names = dict(METRICS)
    return [f"{condition} {names[key]}" for condition, key in columns()]


def render(results: Results) -> str:
    """Per-seed rows, per-arm mean ± sd, and paired differences against the first arm."""
    titles = column_titles()
    lines = ["| seed | arm | " + " | ".join(titles) + " | val ROC-AUC | steps | train s |",
             "|---" * (len(titles) + 5) + "|"]
    for arm, by_seed in results.items():
        for seed, record in sorted(by_seed.items()):
            cells = [f"{record[c][k]:.3f}" for c, k in columns()]
            seconds = f"{record['train_s']:.0f}"
            lines.append(f"| {seed} | {arm} | " + " | ".join(cells)
                         + f" | {record['val_roc_auc']:.3f} | {record['steps']} | {seconds} |")
    lines += ["", "mean ± sd over seeds", "",
              "| arm | seeds | " + " | ".join(titles) + " | train s |", "|---" * (len(titles) + 3) + "|"]
    for arm, by_seed in results.items():
        records = list(by_seed.values())
        cells = [_mean_sd([r[c][k] for r in records]) for c, k in columns()]
        seconds = statistics.mean(r["train_s"] for r in records)
        lines.append(f"| {arm} | {len(records)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    (first, reference), *others = results.items()
    if others:
        lines += ["", f"paired differences arm - {first} (same seeds): mean ± sd", "",
                  "| arm | seeds | " + " | ".join(titles) + " |", "|---" * (len(titles) + 2) + "|"]
        for arm, by_seed in others:
            seeds = sorted(set(by_seed) & set(reference))
            if not seeds:
                continue
            cells = [_diff([by_seed[s][c][k] - reference[s][c][k] for s in seeds]) for c, k in columns()]
            lines.append(f"| {arm} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace, preset: dict) -> tuple[Path, Path, Path]:
    """The banks and the data set in ``--work-dir`` (written once); returns (training bank, data, view)."""
    work = args.work_dir
    backgrounds = bird_free_backgrounds(real_data_dir(args.real_data))
    train_bank = link_bank(backgrounds, TRAIN_BANK, work / "noise_train")
    test_bank = link_bank(backgrounds, TEST_BANK, work / "noise_test")
    data = work / f"data_seed{args.data_seed}"
    if not (data / "train_metadata.csv").is_file():
        summary = make_dataset(
            data, species=preset["species"], soundscapes=preset["soundscapes"], seed=args.data_seed,
            noise_dir=test_bank, clean_copies=True, clips_per_species=preset["clips"], overwrite=True,
        )
        print(f"data: {summary.n_clips} clips of {len(summary.species)} species "
              f"({summary.train_seconds / 60:.1f} min), {len(summary.soundscape_ids)} soundscapes "
              f"x 60 s, written in {summary.elapsed_s:.0f} s", flush=True)
    return train_bank, data, training_view(data, work / f"train_only_seed{args.data_seed}")


def run(args: argparse.Namespace) -> None:
    preset = QUICK if args.quick else FULL
    epochs = args.epochs or preset["epochs"]
    train_bank, data, view = prepare_data(args, preset)
    labels_csv = data / "test_labels.csv"
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"recipe: random weights, batch {args.batch_size}, lr {args.lr:g}, {epochs} epochs x "
          f">= {args.steps_per_epoch} steps; seeds {', '.join(map(str, seeds))}; arms "
          + "; ".join(f"{name} ({', '.join(f'{k}={v}' for k, v in o.items()) or 'recipe'})"
                      for name, o in args.arms), flush=True)
    started = time.perf_counter()
    results: Results = {}
    for seed in seeds:
        for name, overrides in args.arms:
            config = arm_config(args, epochs, train_bank, seed, overrides)
            folder = args.work_dir / "runs" / f"{name}_seed{seed}_{digest(config)}"
            record = trained_and_scored(view, data, folder, config, labels_csv)
            results.setdefault(name, {})[seed] = record
            how = "reused" if record["reused"] else f"trained in {record['train_s']:.0f} s"
            print(f"seed {seed} {name}: {how} ({record['steps']} steps), held-out clips ROC-AUC "
                  f"{record['val_roc_auc']:.3f}; soundscapes ROC-AUC noisy "
                  f"{record['noisy']['roc_auc_macro']:.3f} clean {record['clean']['roc_auc_macro']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)",
                  flush=True)
    print(f"\n{preset['soundscapes']} soundscapes x 60 s per condition, data seed {args.data_seed}; "
          f"wall {time.perf_counter() - started:.0f} s\n")
    print(render(results))


# --- CNN cost ----------------------------------------------------------------------------------------------


def cost_model(args: argparse.Namespace, name: str, config: Config, labels: int) -> tuple[LoadedModel, str]:
    """The arm's trained model of the lowest seed in ``--work-dir``, or an untrained one of its config."""
    pattern = f"{name}_seed*_*/model.pt"
    found = sorted((args.work_dir / "runs").glob(pattern)) if (args.work_dir / "runs").is_dir() else []
    if found:
        return load_model(found[0]), f"trained ({found[0].parent.name})"
    from dawnchorus.models.classifier import SpectrogramClassifier, build_model
    from dawnchorus.models.features import LogMel
    from dawnchorus.models.modelfile import save_model_file

    network = SpectrogramClassifier(
        LogMel.from_settings(config.audio, config.frontend), build_model(config.model, labels)
    ).eval()
    path = args.work_dir / "untrained" / f"{name}_{digest(config)}" / "model.pt"
    if not path.is_file():
        save_model_file(path, network, [f"species{i}" for i in range(labels)], config)
    return load_model(path), "untrained"


def cost(args: argparse.Namespace) -> None:
    """Median CPU ms per window of each arm's CNN graph (fp32, and int8 unless ``--no-int8``)."""
    from dawnchorus.inference.engines import OnnxRunner
    from dawnchorus.inference.export import cached_onnx_path
    from dawnchorus.inference.quantise import calibration_windows, log_mel_windows, quantise_model

    preset = QUICK if args.quick else FULL
    train_bank, data, _ = prepare_data(args, preset)
    runners, inputs = {}, {}
    for name, overrides in args.arms:
        config = arm_config(args, args.epochs or preset["epochs"], train_bank, 0, overrides)
        model, origin = cost_model(args, name, config, preset["species"])
        audio = model.config.audio
        windows = calibration_windows([data / "test_soundscapes"], audio.sample_rate, audio.clip_s)
        spectrograms = log_mel_windows(model, windows[:16])
        graphs = {"fp32": cached_onnx_path(model.path, model, include_frontend=False)}
        if not args.no_int8:
            int8 = Path(model.path).with_name("model.int8-bench.onnx")
            if not int8.is_file() or int8.stat().st_mtime < Path(model.path).stat().st_mtime:
                quantise_model(model, int8, windows)
            graphs["int8"] = int8
        for kind, graph in graphs.items():
            runners[f"{name} {kind}"] = OnnxRunner(graph, threads=1)
            inputs[f"{name} {kind}"] = np.split(spectrograms, 4)
        print(f"{name}: {model.config.model.backbone}, input {list(spectrograms.shape[1:])}, {origin}",
              flush=True)
    for key, runner in runners.items():  # warm up
        runner(inputs[key][0])
    times: dict[str, list[float]] = {key: [] for key in runners}
    keys = list(runners)
    for round_ in range(args.rounds):
        for key in keys[round_ % len(keys):] + keys[: round_ % len(keys)]:
            started = time.thread_time()
            for batch in inputs[key]:
                runners[key](batch)
            times[key].append((time.thread_time() - started) * 1000 / 16)
    print(f"\nCNN CPU ms per window (one thread, batch 4, median of {args.rounds} interleaved rounds; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())})")
    print("| arm | graph | ms per window | min-max |\n|---|---|---|---|")
    for key in keys:
        name, kind = key.rsplit(" ", 1)
        print(f"| {name} | {kind} | {np.median(times[key]):.2f} | "
              f"{min(times[key]):.2f}-{max(times[key]):.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.cost:
        cost(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
