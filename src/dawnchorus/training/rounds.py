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

A student starts from the backbone's pretrained weights, or with ``selftrain.student_init: teacher`` from
its teacher's weights when both are the same network on the same labels (when not, a line says why, once
per run). A teacher on a frozen backbone (BirdNET, Perch) runs on the backbone weights file given as
``teacher_weights`` (``--teacher-weights``, SHA-256 checked as ``predict --weights`` does), else on the file
it was trained with or the backbone's default. ``RUN/selftrain.json``
(:class:`RoundsState`) records what the run is made from and each finished step, so ``resume`` keeps
the finished rounds' models and continues an interrupted one (its pseudo-labels from their finished
parts, its training from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dawnchorus.config import Config, PredictSettings
from dawnchorus.data.layouts import load_training_set
from dawnchorus.errors import EvaluationError, InputError, TrainingError
from dawnchorus.evaluate.metrics import evaluate
from dawnchorus.inference.export import file_sha256
from dawnchorus.inference.frozen import use_backbone_weights
from dawnchorus.inference.run import predict_frame
from dawnchorus.inference.windows import expand_inputs
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.io.files import atomic_write, output_folder
from dawnchorus.models.modelfile import LoadedModel, load_model
from dawnchorus.training.pseudo import (
    INFO_NAME,
    TABLE_NAME,
    PseudoLabels,
    pseudo_label,
    read_pseudo_labels,
)
from dawnchorus.training.result import TrainResult
from dawnchorus.training.run import train
from dawnchorus.training.windows import WindowItems

ROUNDS_NAME = "rounds.csv"
STATE_NAME = "selftrain.json"
STATE_VERSION = 1
# Settings that do not change what a round computes: a resumed run may change them (more rounds, other
# DataLoader workers or cache folder).
UNFINGERPRINTED = {"selftrain": ("rounds",), "train": ("num_workers", "cache_dir")}
# How the refusal to resume names a changed part of the fingerprint.
FINGERPRINT_NAMES = {
    "config": "settings", "data": "training data", "unlabelled": "unlabelled recordings",
    "teacher": "teacher model", "pseudo": "pseudo-labels",
}
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
    sha256: str = ""  # of the model file when the round finished (not in rounds.csv)


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
    teacher_weights: Sequence[str | Path] | None = None,
    resume: bool = False,
    drop_bad: bool = True,
    progress_bar: bool = False,
    log: Callable[[str], None] | None = None,
) -> SelfTrainResult:
    """Run ``config.selftrain.rounds`` noisy-student rounds (see the module docstring).

    ``unlabelled``: recordings (files, folders, .txt lists) pseudo-labelled every round; ``pseudo``: a
    pseudo-label folder used in round 1 (later rounds pseudo-label its recordings again with the new
    teacher); one of them is needed. ``teacher``: a model file to start from instead of training one on
    ``data`` (with ``pseudo`` and no ``teacher``, the pseudo-labels' own teacher file is round 0 when it
    is still there). ``resume`` continues an interrupted run in ``out`` (see :class:`RoundsState`): its
    finished rounds are kept, the interrupted round's pseudo-labels and training go on; a run of other
    settings, data or recordings is refused. ``teacher_weights``: the backbone weights file(s) of a round-0
    teacher on a frozen backbone (each checked against the teacher's record before any work, as
    ``predict --weights`` does). ``log`` gets one line per finished step, and a line said once per run
    where a student cannot start from its teacher or a round's training monitors another metric.
    """
    say = log or (lambda line: None)
    once = _Once(say)
    settings = config.selftrain
    if unlabelled is None and pseudo is None:
        raise TrainingError(
            "self-training needs unlabelled recordings (--unlabelled) or pseudo-labels (--pseudo)"
        )
    given = read_pseudo_labels(pseudo) if pseudo is not None else None
    recordings: list[str | Path] = list(unlabelled) if unlabelled is not None else list(given.recordings)
    found = expand_inputs([Path(r) for r in unlabelled]) if unlabelled is not None else []
    if unlabelled is not None and not found:
        raise TrainingError(f"no recordings found in {', '.join(map(str, unlabelled))}")
    if teacher is not None and not Path(teacher).is_file():
        raise InputError(f"{teacher}: teacher model file not found")
    if teacher is not None:
        load_model(teacher, build_network=False)  # an unusable file stops here, before any work
    if teacher_weights:
        round0 = teacher if teacher is not None else given.info.get("teacher") if given is not None else None
        if round0 is None or not Path(round0).is_file():
            raise InputError(
                "--teacher-weights: the backbone weights of a teacher on a frozen backbone; give that "
                "teacher with --teacher"
            )
        use_backbone_weights([load_model(round0, build_network=False)], teacher_weights)  # checked now
    weights = list(teacher_weights or [])
    run_dir = output_folder(out, "run folder")
    fingerprint = run_fingerprint(config, data, found, teacher=teacher, pseudo=pseudo, run_dir=run_dir)
    state = RoundsState.start(run_dir, fingerprint, resume)
    if config.train.cache_dir is None:  # the clips are decoded once for every round
        config = config.model_copy(deep=True)
        config.train.cache_dir = run_dir / "cache"
    student_config = _student_config(config)
    scorer = _Scorer(data, weights)

    rows = state.finished(say)[: settings.rounds + 1]
    for row in rows:
        say(f"round {row.round}: finished earlier, kept -> {row.model}")
    _write_rounds(rows, run_dir)
    last: TrainResult | None = None
    if rows:
        teacher_path = Path(rows[-1].model)
    elif teacher is not None:
        teacher_path = Path(teacher)
    elif given is not None and given.info.get("teacher") and Path(given.info["teacher"]).is_file():
        teacher_path = Path(given.info["teacher"])  # the pseudo-labels' own teacher is round 0
    else:
        last = _train_round(state, 0, None, data, run_dir / "round0", config, drop_bad, progress_bar,
                            log=once)
        teacher_path = last.model_path
    if not rows:
        rows.append(state.finish(scorer.score(0, teacher_path, 0)))
        _write_rounds(rows, run_dir)
        say(_line(rows[-1], scorer.problem))

    for index in range(len(rows), settings.rounds + 1):
        round_dir = run_dir / f"round{index}"
        if index == 1 and given is not None:
            labels = given
        else:
            teacher_model = load_with_weights(teacher_path, weights, build_network=False)
            run = pseudo_label(
                teacher_model, recordings, round_dir / "pseudo", settings.pseudo,
                SCORING_SETTINGS.model_copy(update={"engine": "auto", "batch_size": "auto"}),
            )
            for path, reason in run.failed:
                say(f"skipped {path}: {reason}")
            if run.skipped:
                say(f"round {index}: pseudo-labels of {run.skipped} recording(s) kept from an earlier run, "
                    f"{run.predicted} labelled now")
            labels = run.labels
        windows = _window_items(labels, data, student_config)
        init, why_not = _warm_start(teacher_path, student_config, data)
        if why_not is not None:
            once(f"round {index}: the student starts from the backbone's pretrained weights ({why_not})",
                 key=why_not)
        last = _train_round(
            state, index, rows[-1].sha256, data, round_dir, student_config, drop_bad, progress_bar,
            windows=windows, init_from=init, log=once,
        )
        teacher_path = last.model_path
        rows.append(state.finish(scorer.score(index, teacher_path, len(windows))))
        _write_rounds(rows, run_dir)
        say(_line(rows[-1], scorer.problem))
    final = run_dir / "model.pt"
    atomic_write(final, lambda temporary: shutil.copyfile(teacher_path, temporary))
    return SelfTrainResult(rows, final, run_dir / ROUNDS_NAME, run_dir, last)


def load_with_weights(
    path: str | Path, weights: Sequence[str | Path], build_network: bool = True
) -> LoadedModel:
    """The model file ``path``; one on a frozen backbone runs on ``weights`` (backbone weights files,
    each SHA-256 checked against its record; see
    :func:`~dawnchorus.inference.frozen.use_backbone_weights`), a fine-tuned CNN ignores them."""
    model = load_model(path, build_network=build_network)
    if weights and model.backbone is not None:
        use_backbone_weights([model], weights)
    return model


def run_fingerprint(
    config: Config,
    data: str | Path,
    recordings: Sequence[Path],
    *,
    teacher: str | Path | None = None,
    pseudo: str | Path | None = None,
    run_dir: Path | None = None,
) -> dict[str, str]:
    """SHA-256s of what a self-training run's rounds are made from, by part: ``config`` (every setting
    but those in :data:`UNFINGERPRINTED`), ``data`` (the training set's files: name, size, modification
    time, links followed; ``run_dir`` left out), ``unlabelled`` (the recordings, likewise),
    ``teacher`` and ``pseudo`` (the given model file's or pseudo-label folder's content). Audio is not
    read: a recording rewritten with its old size and time counts as unchanged; a moved folder as
    changed."""
    settings = config.model_dump(mode="json")
    for section, names in UNFINGERPRINTED.items():
        for name in names:
            settings[section].pop(name, None)
    parts = {
        "config": _digest(settings),
        "data": _digest(_file_list(_training_files(data, run_dir))),
        "unlabelled": _digest(_file_list(sorted(Path(r).resolve() for r in recordings))),
    }
    if teacher is not None:
        parts["teacher"] = file_sha256(teacher)
    if pseudo is not None:
        folder = Path(pseudo)
        parts["pseudo"] = _digest([file_sha256(folder / name) for name in (INFO_NAME, TABLE_NAME)])
    return parts


class RoundsState:
    """``RUN/selftrain.json``: what a self-training run is made from (:func:`run_fingerprint`), its
    finished rounds (``rounds.csv``'s rows with each model file's SHA-256) and the round whose model is
    in training, with the SHA-256 of its teacher. Rewritten atomically after every step, so a killed run
    leaves it consistent: a resumed run keeps a finished round while its model file is unchanged, and
    continues a student's training from ``checkpoints/last.ckpt`` only when that training was started
    from the same teacher (a checkpoint of an earlier run is never continued)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def start(cls, run_dir: Path, fingerprint: dict[str, str], resume: bool) -> RoundsState:
        """A new state (the rounds start over), or with ``resume`` the run's own, refused with one line
        when it is missing or was made from other settings, data or recordings."""
        path = run_dir / STATE_NAME
        if not resume:
            state = cls(path, {"version": STATE_VERSION, "fingerprint": fingerprint, "rounds": [],
                               "training": None})
            state.save()
            return state
        if not path.is_file():
            raise TrainingError(
                f"--resume: {path} not found: {run_dir} holds no self-training run to continue"
            )
        try:
            data = json.loads(path.read_text())
            stored = dict(data["fingerprint"])
            list(data["rounds"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{path}: not a self-training state ({exc}); use a new --out, or run "
                                "without --resume to start the rounds over") from None
        changed = [FINGERPRINT_NAMES.get(part, part) for part in sorted(set(stored) | set(fingerprint))
                   if stored.get(part) != fingerprint.get(part)]
        if changed:
            raise TrainingError(
                f"--resume: the rounds in {run_dir} were made from other {', '.join(changed)}; use a new "
                "--out, or run without --resume to start the rounds over"
            )
        return cls(path, data)

    def finished(self, say: Callable[[str], None]) -> list[RoundScore]:
        """The finished rounds, up to the first whose model file is missing or changed since (that one
        and the later ones are made again)."""
        rows = []
        for entry in self.data["rounds"]:
            row = RoundScore(**{name: entry[name] for name in RoundScore.__dataclass_fields__})
            row.roc_auc, row.cmap, row.f1 = (
                math.nan if value is None else value for value in (row.roc_auc, row.cmap, row.f1)
            )
            model = Path(row.model)
            if not model.is_file() or file_sha256(model) != row.sha256:
                say(f"round {row.round}: its model {model} is missing or changed since; made again")
                break
            rows.append(row)
        self.data["rounds"] = self.data["rounds"][: len(rows)]
        return rows

    def training(self, index: int, teacher_sha256: str | None) -> bool:
        """Whether the student of round ``index`` is the one in training, from the same teacher."""
        return self.data.get("training") == {"round": index, "teacher_sha256": teacher_sha256}

    def begin(self, index: int, teacher_sha256: str | None) -> None:
        """Round ``index``'s model is in training (from the teacher of that SHA-256)."""
        self.data["training"] = {"round": index, "teacher_sha256": teacher_sha256}
        self.save()

    def finish(self, row: RoundScore) -> RoundScore:
        """Round ``row.round`` is finished and scored: recorded with its model's SHA-256."""
        row.sha256 = file_sha256(row.model)
        entry = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(row).items()}
        self.data["rounds"] = [*self.data["rounds"][: row.round], entry]
        self.data["training"] = None
        self.save()
        return row

    def save(self) -> None:
        text = json.dumps(self.data, indent=1)
        atomic_write(self.path, lambda temporary: temporary.write_text(text))


def _train_round(
    state: RoundsState,
    index: int,
    teacher_sha256: str | None,
    data: str | Path,
    round_dir: Path,
    config: Config,
    drop_bad: bool,
    progress_bar: bool,
    **options: Any,
) -> TrainResult:
    """Train round ``index``'s model in ``round_dir``: continued from its last checkpoint when the state
    says this training was interrupted, else afresh (an earlier run's checkpoints removed first: Lightning
    would otherwise write beside them and a later resume read the old ones)."""
    resume = state.training(index, teacher_sha256) and (round_dir / "checkpoints" / "last.ckpt").is_file()
    if not resume:
        shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)
        state.begin(index, teacher_sha256)
    return train(data, round_dir, config, resume=resume, drop_bad=drop_bad, progress_bar=progress_bar,
                 **options)


def _warm_start(teacher_path: Path, config: Config, data: str | Path) -> tuple[Path | None, str | None]:
    """The model file a student starts from: its teacher with ``selftrain.student_init: teacher`` when
    both are the same network on the same labels, audio and frontend; else None (the backbone's
    pretrained weights) with the reason when a teacher start was asked for."""
    if config.selftrain.student_init != "teacher":
        return None, None
    teacher = load_model(teacher_path, build_network=False)
    if teacher.backbone is not None:
        return None, f"its teacher is a head on the frozen {teacher.backbone.get('name', 'zoo')} backbone"
    mine, theirs = config.model, teacher.config.model
    if (mine.backbone, mine.head, mine.pooling, mine.in_chans) != (
        theirs.backbone, theirs.head, theirs.pooling, theirs.in_chans
    ):
        return None, f"its teacher is another network ({theirs.backbone}, {theirs.head} head)"
    if teacher.labels != load_training_set(data, on_problem="drop").labels:
        return None, "its teacher has other labels than the training set"
    if teacher.config.audio != config.audio or teacher.config.frontend != config.frontend:
        return None, "its teacher has other audio or spectrogram settings"
    return teacher_path, None


def _training_files(data: str | Path, run_dir: Path | None) -> list[Path]:
    """The files a training set is read from: the files beside its clips' folder (metadata, labels),
    every clip, the labelled soundscapes (symbolic links followed; ``run_dir`` left out)."""
    training_set = load_training_set(data, on_problem="drop", check_audio=False)
    root = Path(training_set.root)
    files = {path for path in root.iterdir() if path.is_file()}
    files.update(Path(path) for path in training_set.clips["path"])
    if training_set.soundscape_dir is not None:
        files.update(expand_inputs([Path(training_set.soundscape_dir)]))
    if training_set.soundscape_labels is not None:
        files.add(Path(training_set.soundscape_labels))
    skip = run_dir.resolve() if run_dir is not None else None
    absolute = {Path(os.path.abspath(path)) for path in files}
    return sorted(path for path in absolute if skip is None or not path.is_relative_to(skip))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_list(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """(name, size, modification time) of each file (links followed); a missing one as (name, -1, -1)."""
    listed = []
    for path in paths:
        name = str(path)
        try:
            stat = path.stat()
        except OSError:
            listed.append((name, -1, -1))
            continue
        listed.append((name, stat.st_size, stat.st_mtime_ns))
    return listed


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


class _Once:
    """A line sayer that says each line (or each ``key``) once: the rounds' repeated notices."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.said = say, set()

    def __call__(self, line: str, key: str | None = None) -> None:
        key = line if key is None else key
        if key not in self.said:
            self.said.add(key)
            self.say(line)


class _Scorer:
    """Scores a model on the data set's labelled validation soundscapes (NaN when it has none); a model
    on a frozen backbone runs on ``weights`` (the teacher's backbone weights files) when given."""

    def __init__(self, data: str | Path, weights: Sequence[str | Path] = ()) -> None:
        self.weights = list(weights)
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
        model = load_with_weights(model_path, self.weights)
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
