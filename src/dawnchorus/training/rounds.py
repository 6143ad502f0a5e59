"""Noisy-student rounds: teacher -> pseudo-labels -> student, the student becoming the next teacher.

:func:`self_train` is ``dawnchorus train DATA --unlabelled DIR [--rounds N]`` (or ``--pseudo PL``). Round 0
is the teacher: the model trained on DATA (``RUN/round0/``), or a given model file (``--teacher``, e.g. a
head on a frozen BirdNET backbone). Each round ``r`` pseudo-labels the unlabelled recordings with the
current teacher (``RUN/round<r>/pseudo/``, :func:`~dawnchorus.training.pseudo.pseudo_label`; with
``--pseudo PL`` round 1 takes those), then trains a student (``RUN/round<r>/model.pt``) on the labelled
clips plus the pseudo-labelled windows (:class:`~dawnchorus.training.windows.WindowItems`: a share of the
clips mixed with a window, label union, and the windows as items of their own) under the stronger
augmentation of ``selftrain.student_augment``, with ``selftrain.student_backbone`` when set (distillation
into another, faster network). Every model is scored on the data set's labelled validation soundscapes
when it has them; ``RUN/rounds.csv`` holds one row per round, rewritten after each, and ``RUN/model.pt``
is a copy of the last student. Deterministic for ``train.seed``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dawnchorus.config import Config, PredictSettings
from dawnchorus.data.layouts import load_training_set
from dawnchorus.errors import EvaluationError, InputError, TrainingError
from dawnchorus.evaluate.metrics import evaluate
from dawnchorus.inference.run import predict_frame
from dawnchorus.inference.windows import expand_inputs
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.io.files import atomic_write, output_folder
from dawnchorus.models.modelfile import load_model
from dawnchorus.training.pseudo import PseudoLabels, pseudo_label, read_pseudo_labels
from dawnchorus.training.result import TrainResult
from dawnchorus.training.run import train
from dawnchorus.training.windows import WindowItems

ROUNDS_NAME = "rounds.csv"
ROUND_COLUMNS = ("round", "model", "roc_auc", "cmap", "f1", "windows_kept")
# Scoring predicts with eager torch, 4 windows a batch, as threshold tuning does: scores are the same
# on every machine.
SCORING_SETTINGS = PredictSettings(engine="torch", batch_size=4)


@dataclass
class RoundScore:
    """One row of ``rounds.csv``: a round's model and its validation soundscape scores (NaN: none)."""

    round: int
    model: str
    roc_auc: float
    cmap: float
    f1: float
    windows_kept: int  # pseudo-labelled windows the student trained on (0 for the teacher)


@dataclass
class SelfTrainResult:
    """What :func:`self_train` produced: the rounds, the final model (``RUN/model.pt``) and the table."""

    rounds: list[RoundScore]
    model_path: Path
    rounds_csv: Path
    run_dir: Path
    last: TrainResult | None


def self_train(
    data: str | Path,
    out: str | Path,
    config: Config,
    *,
    unlabelled: Sequence[str | Path] | None = None,
    pseudo: str | Path | None = None,
    teacher: str | Path | None = None,
    drop_bad: bool = True,
    progress_bar: bool = False,
    log: Callable[[str], None] | None = None,
) -> SelfTrainResult:
    """Run ``config.selftrain.rounds`` noisy-student rounds (see the module docstring).

    ``unlabelled``: recordings (files, folders, .txt lists) pseudo-labelled every round; ``pseudo``: a
    pseudo-label folder used in round 1 (later rounds pseudo-label its recordings again with the new
    teacher); one of them is needed. ``teacher``: a model file to start from instead of training one on
    ``data`` (with ``pseudo`` and no ``teacher``, the pseudo-labels' own teacher file is round 0 when it
    is still there). ``log`` gets one line per finished step.
    """
    say = log or (lambda line: None)
    settings = config.selftrain
    if unlabelled is None and pseudo is None:
        raise TrainingError(
            "self-training needs unlabelled recordings (--unlabelled) or pseudo-labels (--pseudo)"
        )
    given = read_pseudo_labels(pseudo) if pseudo is not None else None
    recordings: list[str | Path] = list(unlabelled) if unlabelled is not None else list(given.recordings)
    if unlabelled is not None and not expand_inputs([Path(r) for r in unlabelled]):
        raise TrainingError(f"no recordings found in {', '.join(map(str, unlabelled))}")
    if teacher is not None and not Path(teacher).is_file():
        raise InputError(f"{teacher}: teacher model file not found")
    run_dir = output_folder(out, "run folder")
    if config.train.cache_dir is None:  # the clips are decoded once for every round
        config = config.model_copy(deep=True)
        config.train.cache_dir = run_dir / "cache"
    student_config = _student_config(config)
    scorer = _Scorer(data)

    rows: list[RoundScore] = []
    last: TrainResult | None = None
    if teacher is not None:
        teacher_path = Path(teacher)
        load_model(teacher_path, build_network=False)  # an unusable file stops here, before any work
    elif given is not None and given.info.get("teacher") and Path(given.info["teacher"]).is_file():
        teacher_path = Path(given.info["teacher"])  # the pseudo-labels' own teacher is round 0
    else:
        last = train(data, run_dir / "round0", config, drop_bad=drop_bad, progress_bar=progress_bar)
        teacher_path = last.model_path
    rows.append(scorer.score(0, teacher_path, 0))
    _write_rounds(rows, run_dir)
    say(_line(rows[-1], scorer.problem))

    for index in range(1, settings.rounds + 1):
        round_dir = run_dir / f"round{index}"
        if index == 1 and given is not None:
            labels = given
        else:
            teacher_model = load_model(teacher_path, build_network=False)
            run = pseudo_label(
                teacher_model, recordings, round_dir / "pseudo", settings.pseudo,
                SCORING_SETTINGS.model_copy(update={"engine": "auto", "batch_size": "auto"}),
            )
            for path, reason in run.failed:
                say(f"skipped {path}: {reason}")
            labels = run.labels
        windows = _window_items(labels, data, student_config)
        last = train(
            data, round_dir, student_config, drop_bad=drop_bad, progress_bar=progress_bar, windows=windows
        )
        teacher_path = last.model_path
        rows.append(scorer.score(index, teacher_path, len(windows)))
        _write_rounds(rows, run_dir)
        say(_line(rows[-1], scorer.problem))
    final = run_dir / "model.pt"
    atomic_write(final, lambda temporary: shutil.copyfile(teacher_path, temporary))
    return SelfTrainResult(rows, final, run_dir / ROUNDS_NAME, run_dir, last)


def _student_config(config: Config) -> Config:
    """The students' settings: the teacher's, with the stronger augmentation and the student backbone."""
    settings = config.selftrain
    update = config.model_dump()
    update["augment"] = {**update["augment"], **settings.student_augment}
    if settings.student_backbone is not None:
        update["model"]["backbone"] = settings.student_backbone
        update["embedding"]["backbone"] = None
    try:
        return Config.model_validate(update)
    except ValueError as exc:
        raise TrainingError(f"selftrain: the student's settings are not valid: {exc}") from None


def _window_items(labels: PseudoLabels, data: str | Path, config: Config) -> WindowItems:
    """The pseudo-labelled windows as training items in the data set's label order (a label the
    teacher did not know is masked out), at most ``selftrain.max_windows`` of them (a seeded sample)."""
    table = labels.table
    settings = config.selftrain
    if settings.max_windows is not None and len(table) > settings.max_windows:
        rng = np.random.default_rng([config.train.seed, 7])
        table = table.iloc[np.sort(rng.choice(len(table), settings.max_windows, replace=False))]
    if not len(table):
        raise TrainingError(
            "no pseudo-labelled window was kept (selftrain.pseudo.keep too high for this teacher?)"
        )
    names = load_training_set(data, on_problem="drop").labels
    return WindowItems.from_table(
        table, names, config.audio.sample_rate, config.audio.clip_samples,
        weights=settings.window_weight, seed=config.train.seed,
    )


class _Scorer:
    """Scores a model on the data set's labelled validation soundscapes (NaN when it has none)."""

    def __init__(self, data: str | Path) -> None:
        training_set = load_training_set(data, on_problem="drop")
        self.recordings: list[Path] = []
        self.truth: pd.DataFrame | None = None
        self.scored = training_set.scored_labels
        self.problem: str | None = None  # why the last model could not be scored
        if training_set.soundscape_dir is not None and training_set.soundscape_labels is not None:
            self.recordings = expand_inputs([Path(training_set.soundscape_dir)])
            self.truth = read_birdclef_labels(training_set.soundscape_labels)

    def score(self, index: int, model_path: Path, windows: int) -> RoundScore:
        if self.truth is None or not self.recordings:
            return RoundScore(index, str(model_path), math.nan, math.nan, math.nan, windows)
        model = load_model(model_path)
        predictions = predict_frame(model, self.recordings, SCORING_SETTINGS, raise_errors=False)
        scored = [label for label in (self.scored or model.labels) if label in model.labels]
        try:
            result = evaluate(
                predictions.reset_index(), self.truth, model.labels, model.class_thresholds, scored
            )
        except EvaluationError as exc:  # e.g. windows of another length than the labels': not scored
            self.problem = str(exc)
            return RoundScore(index, str(model_path), math.nan, math.nan, math.nan, windows)
        roc = result["roc_auc_macro"]
        return RoundScore(
            index, str(model_path), math.nan if roc is None else float(roc), float(result["cmap_padded"]),
            float(result["f1_macro_2022"]), windows,
        )


def _write_rounds(rows: list[RoundScore], run_dir: Path) -> None:
    table = pd.DataFrame([asdict(row) for row in rows], columns=list(ROUND_COLUMNS))
    atomic_write(run_dir / ROUNDS_NAME, lambda temporary: table.to_csv(temporary, index=False))


def _line(row: RoundScore, problem: str | None = None) -> str:
    """'round 1: ROC-AUC 0.912, cmAP 0.801, F1 0.655 (1234 pseudo-labelled windows) -> MODEL' for the
    terminal; 'not scored' with the reason (no validation soundscapes, windows that do not fit)."""
    what = "teacher" if row.round == 0 else f"{row.windows_kept} pseudo-labelled windows"
    if math.isnan(row.cmap):
        scores = f"not scored ({problem or 'no labelled validation soundscapes'})"
    else:
        scores = f"ROC-AUC {row.roc_auc:.3f}, cmAP {row.cmap:.3f}, F1 {row.f1:.3f}"
    return f"round {row.round}: {scores} ({what}) -> {row.model}"
