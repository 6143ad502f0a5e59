"""Self-training: do noisy-student rounds on unlabelled soundscapes raise held-out soundscape scores?

Protocol. One synthetic species catalogue and its clean focal training clips
(:func:`dawnchorus.synth.soundscapes.make_dataset`, ``--data-seed``), and two sets of 60-s soundscapes
of the same species drawn from disjoint seed streams of the generator: the **test** soundscapes
(indices 0..T-1 of one set, scored, never heard in training) and the **unlabelled pool** (indices
T..T+P-1 of a second set: other call sequences, other individuals, and other real backgrounds).
The bird-free real backgrounds of ``../shared/data/real`` are split in three disjoint banks: the
*training* bank feeds noise augmentation, the *pool* bank only the pool's soundscapes, the *test*
bank only the test soundscapes (besides the generator's own synthetic wind, insects and coloured
noise in both). Training sees the clips only (a training view without ``test_soundscapes``:
validation and thresholds on held-out clips), then the pool's recordings without their labels.

Per training seed: the **teacher** (``train`` on the clips, noise augmentation from the training bank)
and three **rounds** of ``self_train`` (teacher -> pseudo-labels on the pool -> student on clips +
pseudo-labelled windows, clip+window mixing with label union, stronger augmentation -> next teacher;
``selftrain`` defaults except the epochs), and a **control**: one student's training (its epochs and
stronger augmentation) on the clips alone, so a gain of the rounds is the pool's, not more
training's. Each model predicts the test soundscapes; a global threshold is tuned on half of them,
macro ROC-AUC / padded cmAP / macro F1 are computed on the other half (as in ``domain_shift.py``).
Mean ± sd over ``--seeds`` seeds.

Prediction recipe, on the teachers and on the last round's students: temporal smoothing (kernel
0.1 0.2 0.4 0.2 0.1, BirdCLEF 2025 1st), overlapping windows (hop 2.5 s averaged back onto the 5-s
grid), both, and a 2-model ensemble (``dawnchorus.predict([m1, m2])``, equal weights: seed s's
last-round student with seed s+1's, mod seeds), each against the plain prediction of the same models.

Distillation (every seed; ``--distil-seeds`` fewer): a head on the frozen BirdNET 2.4 backbone
(``train --backbone birdnet``, its defaults, the training bank) is the teacher; one round with
``--teacher`` that model and ``--student-model`` the bench CNN trains a CNN student on the clips +
BirdNET's pseudo-labels of the pool. Both are scored like the rest; their x real time is ``predict``
on the test soundscapes (engine auto, batch auto; wall time of ``dawnchorus.predict`` in this
process, under whatever load the machine has: rerun alone for timing, see bench/README.md). Needs
the ``birdnet`` extra; ``--no-distil`` skips it.

Model: ``test_efficientnet`` (timm's 0.1M-parameter EfficientNet, random init: benches never
download), as ``domain_shift.py`` chose it for 2 cores.

Any setting of the students' config can be changed with ``--set KEY=VALUE`` (dotted
:class:`~dawnchorus.config.Config` keys, YAML values, repeatable; the teacher keeps the bench's
settings), e.g. ``--set selftrain.pseudo.keep=0.5 --set selftrain.pseudo.floor=0.1``. ``--arm NAME
KEY=VALUE ...`` (repeatable) compares student settings on the same teachers: each arm runs its own
rounds from each seed's teacher, with the ``--set`` settings and its own on top; the recipe and the
ensemble use the first arm's students. ``--bouts`` draws the test and pool soundscapes as song bouts
(``make_dataset(bouts=True)``: a bird sings over 10-60 s, across many windows); ``--rounds 0`` trains
and scores the teachers only (the recipe on them). ``--test``, ``--pool``, ``--epochs`` and
``--student-epochs`` size a run; ``--no-recipe`` skips the recipe and the ensemble. With ``--work-dir``, a
later run reuses the teachers, controls and rounds of the same settings (folders named by a hash of
their config; training is deterministic for the seed), so arms can be split over several runs.

    python bench/self_training.py --quick    # 1 seed, 1 round, few soundscapes
    python bench/self_training.py            # the quoted table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import time
from pathlib import Path

import pandas as pd
import yaml
from common import run_in_work_dir
from domain_shift import (
    SoundscapeSplit,
    bird_free_backgrounds,
    link_bank,
    real_data_dir,
    score_predictions,
    training_view,
)

import dawnchorus
from dawnchorus.config import Config, PredictSettings, build_config
from dawnchorus.errors import ConfigError, TrainingError
from dawnchorus.models.modelfile import load_model
from dawnchorus.synth.soundscapes import make_dataset
from dawnchorus.training.rounds import STATE_NAME, self_train
from dawnchorus.training.run import train

TRAIN_BANK = ("redeclipse_rain", "redeclipse_wind", "redeclipse_creek", "redeclipse_nightcrickets")
POOL_BANK = ("redeclipse_stormrain", "redeclipse_blowwind", "supertuxkart_river_loop")
TEST_BANK = ("redeclipse_wind1", "redeclipse_waterfall", "supertuxkart_waterfall_loop_2")
METRICS = (("roc_auc_macro", "ROC-AUC"), ("cmap_padded", "cmAP"), ("f1_macro_2022", "F1@tuned"))
KERNEL = [0.1, 0.2, 0.4, 0.2, 0.1]
FULL = {"species": 5, "clips": (8, 16), "test": 8, "pool": 12, "epochs": 20, "student_epochs": 12,
        "rounds": 3, "seeds": 3}
QUICK = {"species": 4, "clips": (3, 6), "test": 4, "pool": 4, "epochs": 4, "student_epochs": 2,
         "rounds": 1, "seeds": 1}
LABEL_WIDTH = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run that checks the bench")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="noisy-student rounds (default 3)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--no-distil", action="store_true", help="skip the BirdNET-teacher distillation")
    parser.add_argument("--distil-seeds", type=int, default=3, help="seeds with a distillation run")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--real-data", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the data and runs here")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a dotted setting of the students' config (YAML value; repeatable), e.g. "
        "selftrain.pseudo.keep=0.5",
    )
    parser.add_argument(
        "--arm", dest="arms", action="append", nargs="+", default=[], metavar="NAME [KEY=VALUE ...]",
        help="a named arm of student settings (on top of --set; repeatable); rows 'NAME: round r'",
    )
    parser.add_argument("--bouts", action="store_true", help="test and pool soundscapes of song bouts")
    parser.add_argument("--test", type=int, default=None, help="test soundscapes (default 8)")
    parser.add_argument("--pool", type=int, default=None, help="unlabelled pool soundscapes (default 12)")
    parser.add_argument("--epochs", type=int, default=None, help="teacher epochs (default 20)")
    parser.add_argument("--student-epochs", type=int, default=None, help="student epochs (default 12)")
    parser.add_argument("--no-recipe", action="store_true", help="skip smoothing / overlap / ensemble")
    parser.add_argument(
        "--recipe-on", type=Path, default=None, metavar="WORK",
        help="train nothing: the recipe on the models of an earlier run's work folder (WORK/run_seed*/"
        "round*/model.pt), on this run's test soundscapes (e.g. with --bouts)",
    )
    args = parser.parse_args(argv)
    try:
        args.overrides = parse_overrides(args.overrides)
        args.arms = [(arm[0], {**args.overrides, **parse_overrides(arm[1:])}) for arm in args.arms]
    except ConfigError as exc:
        parser.error(str(exc))
    if len({name for name, _ in args.arms}) < len(args.arms):
        parser.error("--arm: every arm needs its own name")
    if args.rounds is not None and args.rounds < 0:
        parser.error("--rounds must be >= 0")
    return args


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings as dotted overrides (values read as YAML: ``0.5`` a number, ``teacher`` a
    string), checked against :class:`~dawnchorus.config.Config` at once (a typo fails before training)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. selftrain.pseudo.keep=0.5")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    build_config(overrides=overrides, source="--set")
    return overrides


def with_overrides(config: Config, overrides: dict[str, object]) -> Config:
    """``config`` with the dotted ``overrides`` applied (validated as a whole)."""
    if not overrides:
        return config
    return build_config(config.model_dump(), overrides, source="--set")


# --- data ---------------------------------------------------------------------------------------------


def make_sets(work: Path, preset: dict, data_seed: int, bouts: bool = False) -> tuple[Path, Path, Path]:
    """The data set (clips + ``preset['test']`` test soundscapes over the test bank), and the unlabelled
    pool: soundscapes ``test .. test + pool - 1`` of a second set of the same seed over the pool bank
    (the generator draws soundscape i from its own seed stream i, so the pool shares no call sequence
    with the test soundscapes); both of song bouts with ``bouts``. Returns (data, pool folder, test labels
    CSV)."""
    backgrounds = bird_free_backgrounds(real_data_dir(None))
    test_bank = link_bank(backgrounds, TEST_BANK, work / "noise_test")
    pool_bank = link_bank(backgrounds, POOL_BANK, work / "noise_pool")
    kind = "_bouts" if bouts else ""  # one work folder can hold both kinds (the clips are the same)
    data = work / f"data_test{preset['test']}{kind}"
    pool = work / f"pool_{preset['test']}+{preset['pool']}{kind}"
    if not (data / "train_metadata.csv").is_file():
        summary = make_dataset(data, species=preset["species"], soundscapes=preset["test"], seed=data_seed,
                               noise_dir=test_bank, clips_per_species=preset["clips"], bouts=bouts)
        print(f"data: {summary.n_clips} clips of {len(summary.species)} species, "
              f"{len(summary.soundscape_ids)} test soundscapes x 60 s{' of song bouts' if bouts else ''} "
              f"({summary.elapsed_s:.0f} s)", flush=True)
    if not pool.is_dir() and preset["rounds"] > 0:  # --rounds 0: no student, no pool
        scratch = work / "pool_set"
        make_dataset(scratch, species=preset["species"], soundscapes=preset["test"] + preset["pool"],
                     seed=data_seed, noise_dir=pool_bank, clips_per_species=preset["clips"], overwrite=True,
                     bouts=bouts)
        ids = list(dict.fromkeys(pd.read_csv(scratch / "test_labels.csv")["audio_id"]))
        pool.mkdir()
        for audio_id in ids[preset["test"]:]:
            shutil.move(scratch / "test_soundscapes" / f"{audio_id}.ogg", pool / f"{audio_id}.ogg")
        shutil.rmtree(scratch)
        print(f"unlabelled pool: {preset['pool']} soundscapes x 60 s over {', '.join(POOL_BANK)}", flush=True)
    return data, pool, data / "test_labels.csv"


# --- models -------------------------------------------------------------------------------------------


def bench_config(args: argparse.Namespace, preset: dict, train_bank: Path, seed: int, rounds: int) -> Config:
    return build_config({
        "model": {"backbone": args.backbone, "pretrained": False},
        "augment": {"noise_dir": str(train_bank)},
        # One pass of the items per epoch (train.min_steps_per_epoch 0), as the quoted tables were measured.
        "train": {"epochs": preset["epochs"], "batch_size": 8, "lr": 5e-3, "seed": seed,
                  "num_workers": args.workers, "warmup_epochs": 1.0, "min_steps_per_epoch": 0},
        "selftrain": {"rounds": rounds},
    })


def student_epochs(config: Config, epochs: int) -> Config:
    """Students see clips + windows, several times the items of the teacher: fewer epochs."""
    return config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})


def without_windows(config: Config) -> Config:
    """A student's settings (its epochs and ``selftrain.student_augment``) for training on the clips only."""
    augment = config.augment.model_copy(update=config.selftrain.student_augment)
    return config.model_copy(update={"augment": augment})


class Scorer:
    """Predicts the test soundscapes and scores them (threshold tuned on one half, scores on the other)."""

    def __init__(self, data: Path, labels_csv: Path) -> None:
        self.files = sorted((data / "test_soundscapes").glob("*.ogg"))
        self.labels_csv = labels_csv
        self.split = SoundscapeSplit.halves(labels_csv)
        self.seconds = 60.0 * len(self.files)

    def predict(self, model_path: Path | list[Path], **options: object) -> tuple[pd.DataFrame, float]:
        """Window table and x real time of one model (or an ensemble: a list) on the test soundscapes."""
        paths = model_path if isinstance(model_path, list) else [model_path]
        model = [load_model(path) for path in paths] if len(paths) > 1 else load_model(paths[0])
        started = time.perf_counter()
        table = dawnchorus.predict(model, self.files, PredictSettings(**options)).reset_index()
        return table, self.seconds / (time.perf_counter() - started)

    def score(self, table: pd.DataFrame, labels: list[str]) -> dict[str, float]:
        return score_predictions(table, labels, self.labels_csv, self.split)


# --- the run ------------------------------------------------------------------------------------------


Rows = dict[str, list[dict[str, float]]]


def sized(args: argparse.Namespace) -> dict:
    """The preset (``--quick`` or the full one) with the sizing options applied."""
    preset = dict(QUICK if args.quick else FULL)
    for key in ("test", "pool", "epochs", "student_epochs", "seeds", "rounds"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    return preset


def recipe_on(args: argparse.Namespace, work: Path) -> None:
    """``--recipe-on``: plain / smoothing / overlap / both for every round's model of an earlier run."""
    preset = {**sized(args), "rounds": 0}
    started = time.perf_counter()
    data, _, labels_csv = make_sets(work, preset, args.data_seed, args.bouts)
    scorer = Scorer(data, labels_csv)
    print(f"models of {args.recipe_on}; {len(scorer.files)} test soundscapes"
          f"{' of song bouts' if args.bouts else ''}: thresholds tuned on {len(scorer.split.tune)}, scores "
          f"on the other {len(scorer.split.test)}", flush=True)
    rows: Rows = {}
    for seed_dir in sorted(args.recipe_on.glob("run_seed*")):
        for round_dir in sorted(seed_dir.glob("round*")):
            path = round_dir / "model.pt"
            if not path.is_file():
                continue
            number = int(round_dir.name.removeprefix("round"))
            name = "teacher" if number == 0 else f"round {number}"
            labels = load_model(path).labels
            note(rows, name, scorer.score(scorer.predict(path)[0], labels), int(seed_dir.name[8:]), started)
            recipe(scorer, path, labels, rows, name)
    print(f"wall {time.perf_counter() - started:.0f} s")
    print(render(rows, {}))


def run(args: argparse.Namespace, work: Path) -> None:
    if args.recipe_on is not None:
        recipe_on(args, work)
        return
    preset = sized(args)
    seeds, rounds = preset["seeds"], preset["rounds"]
    arms = args.arms or [("", args.overrides)]
    started = time.perf_counter()
    backgrounds = bird_free_backgrounds(real_data_dir(args.real_data))
    train_bank = link_bank(backgrounds, TRAIN_BANK, work / "noise_train")
    data, pool, labels_csv = make_sets(work, preset, args.data_seed, args.bouts)
    view = training_view(data, work / "train_only")
    scorer = Scorer(data, labels_csv)
    print(f"banks: training {', '.join(TRAIN_BANK)}; pool {', '.join(POOL_BANK)}; "
          f"test {', '.join(TEST_BANK)}")
    print(f"{args.backbone}: teacher {preset['epochs']} epochs, students {preset['student_epochs']} "
          f"(one pass of the items per epoch); "
          f"{rounds} round(s), {seeds} seed(s); thresholds tuned on {len(scorer.split.tune)} test "
          f"soundscapes, scores on the other {len(scorer.split.test)}", flush=True)
    for name, overrides in arms:
        if overrides:
            print(f"students{' ' + name if name else ''}: "
                  + ", ".join(f"{key}={value}" for key, value in overrides.items()))

    rows: Rows = {}
    final: dict[int, tuple[Path, list[str]]] = {}
    windows: dict[str, list[int]] = {}
    last = "teacher" if rounds == 0 else f"{arms[0][0] + ': ' if arms[0][0] else ''}round {rounds}"
    for seed in range(seeds):
        config = bench_config(args, preset, train_bank, seed, max(rounds, 1))
        run_dir = work / f"run_seed{seed}"
        teacher = trained(view, run_dir, "teacher", config)
        labels = load_model(teacher).labels
        note(rows, "teacher", scorer.score(scorer.predict(teacher)[0], labels), seed, started)
        final[seed] = (teacher, labels)
        if not args.no_recipe:
            recipe(scorer, teacher, labels, rows, "teacher")
        if rounds == 0:
            continue
        students = student_epochs(config, preset["student_epochs"])
        # The control: a student's training (epochs, stronger augmentation) on the clips alone.
        control = trained(view, run_dir, "control", without_windows(with_overrides(students, args.overrides)))
        note(rows, "control: student recipe, no pool", scorer.score(scorer.predict(control)[0], labels),
             seed, started)
        for index, (name, overrides) in enumerate(arms):
            arm_config = with_overrides(students, overrides)
            arm_dir = run_dir / f"rounds_{digest(arm_config)}"
            try:
                result = self_train(view, arm_dir, arm_config, unlabelled=[pool], teacher=teacher,
                                    resume=(arm_dir / STATE_NAME).is_file())
            except TrainingError as exc:  # e.g. a keep rule no window passes: that arm has no round
                print(f"seed {seed} {name or 'rounds'}: {exc}", flush=True)
                continue
            for row in result.rounds[1:]:
                path = Path(row.model)
                key = f"{name + ': ' if name else ''}round {row.round}"
                note(rows, key, scorer.score(scorer.predict(path)[0], load_model(path).labels), seed, started)
                windows.setdefault(name, []).append(row.windows_kept)
            if index == 0:
                final[seed] = (result.model_path, load_model(result.model_path).labels)
                if not args.no_recipe:
                    recipe(scorer, result.model_path, final[seed][1], rows, last)

    if seeds > 1 and not args.no_recipe:
        for seed in range(seeds):
            (one, labels), (other, _) = final[seed], final[(seed + 1) % seeds]
            table, _ = scorer.predict([one, other])  # predict's ensemble: the members' mean per window
            rows.setdefault(f"{last}, 2-model ensemble", []).append(scorer.score(table, labels))
    speeds: dict[str, list[float]] = {}
    if not args.no_distil:
        for seed in range(min(args.distil_seeds, seeds)):
            distil(args, preset, view, pool, train_bank, work, seed, scorer, rows, speeds)

    print()
    for name, kept in windows.items():
        print(f"pseudo-labelled windows per round{' (' + name + ')' if name else ''}: {kept}")
    print(f"wall {time.perf_counter() - started:.0f} s")
    print(render(rows, speeds))


def digest(config: Config) -> str:
    """A short hash of a config: the folder of what it trains, reused by a later run in ``--work-dir``
    (``selftrain.rounds`` left out: a run with more rounds continues the finished ones)."""
    settings = config.model_dump(mode="json")
    settings["selftrain"].pop("rounds")
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def trained(view: Path, run_dir: Path, what: str, config: Config) -> Path:
    """The model file of ``train(view, config)`` in ``run_dir/<what>_<digest>/``: trained there, or an
    earlier run's in ``--work-dir`` of the same settings (training is deterministic for the seed)."""
    folder = run_dir / f"{what}_{digest(config)}"
    if (folder / "model.pt").is_file():
        print(f"{what}: reusing {folder / 'model.pt'}", flush=True)
        return folder / "model.pt"
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted training
    return train(view, folder, config, progress_bar=False).model_path


def note(rows: Rows, name: str, scores: dict[str, float], seed: int, started: float) -> None:
    """Add one seed's scores to a row and say so."""
    rows.setdefault(name, []).append(scores)
    print(f"seed {seed} {name}: ROC-AUC {scores['roc_auc_macro']:.3f}, cmAP {scores['cmap_padded']:.3f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)


def recipe(scorer: Scorer, model_path: Path, labels: list[str], rows: Rows, name: str) -> None:
    """The prediction recipe on one model (rows named ``name + variant``): smoothing, overlap, both."""
    variants = {
        "+ smoothing": {"smoothing": KERNEL},
        "+ overlap (hop 2.5, averaged)": {"hop_s": 2.5, "overlap_average": True},
        "+ smoothing + overlap": {"smoothing": KERNEL, "hop_s": 2.5, "overlap_average": True},
    }
    for variant, options in variants.items():
        table, _ = scorer.predict(model_path, **options)
        rows.setdefault(f"{name} {variant}", []).append(scorer.score(table, labels))


def distil(
    args: argparse.Namespace, preset: dict, view: Path, pool: Path, train_bank: Path, work: Path, seed: int,
    scorer: Scorer, rows: Rows, speeds: dict[str, list[float]],
) -> None:
    """A BirdNET-head teacher distilled into the bench CNN by one round on the pool."""
    head = build_config({
        "embedding": {"backbone": "birdnet"},
        "augment": {"noise_dir": str(train_bank)},
        "train": {"seed": seed, "num_workers": args.workers},
    })
    run_dir = work / f"distil_seed{seed}"
    teacher = train(view, run_dir / "teacher", head, progress_bar=False).model_path
    student = student_epochs(bench_config(args, preset, train_bank, seed, 1), preset["student_epochs"])
    student = with_overrides(
        student, {**args.overrides, "selftrain.rounds": 1, "selftrain.student_backbone": args.backbone}
    )
    result = self_train(view, run_dir / "student", student, unlabelled=[pool], teacher=teacher)
    pair = (("birdnet head (teacher)", teacher), (f"{args.backbone} student of it", result.model_path))
    for name, path in pair:
        table, speed = scorer.predict(path)
        rows.setdefault(name, []).append(scorer.score(table, load_model(path).labels))
        speeds.setdefault(name, []).append(speed)
        print(f"seed {seed} {name}: ROC-AUC {rows[name][-1]['roc_auc_macro']:.3f}, {speed:.0f}x real time",
              flush=True)


def _cell(runs: list[dict[str, float]], key: str) -> str:
    values = [float(run[key]) for run in runs if run.get(key) is not None]
    if not values:
        return f"{'n/a':>15}"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):>8.3f} ± {sd:.3f}"


def render(rows: Rows, speeds: dict[str, list[float]]) -> str:
    titles = "".join(f"{title:>16}" for _, title in METRICS)
    header = f"{'model':<{LABEL_WIDTH}}{titles}{'x real time':>14}"
    lines = [header, "-" * len(header)]
    for name, runs in rows.items():
        speed = f"{statistics.mean(speeds[name]):>14.0f}" if name in speeds else ""
        cells = "".join(f"{_cell(runs, key):>16}" for key, _ in METRICS)
        lines.append(f"{name:<{LABEL_WIDTH}}{cells}{speed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_in_work_dir(run, parse_args(argv), prefix="dawnchorus_self_training_")


if __name__ == "__main__":
    main()
