"""Training a head on a frozen pretrained backbone: ``dawnchorus train DATA --backbone birdnet``.

The recipe (what makes a few clips per species enough):

1. The training set is read, split, oversampled and its targets encoded (secondary labels included)
   exactly as for the timm path (:mod:`dawnchorus.data`).
2. Every training clip is embedded ``embedding.draws`` times by the backbone: draw 0 is the clean
   start of the clip, each later draw a random crop through the waveform augmentation
   (:class:`~dawnchorus.augment.waveform.WaveformAugment`: noise-bank mixes at random SNRs, gain,
   shift, coloured noise) applied *before* the backbone, so the head sees the clip as it would sound
   in a noisy soundscape. ``embedding.negatives`` bird-free windows of the noise bank are embedded
   as all-negative examples. Validation clips (draw 0) and labelled soundscape windows are embedded
   clean. Clip windows are as long as prediction windows (``audio.clip_s``) and pooled over the
   backbone's sub-windows (:func:`~dawnchorus.embed.base.window_embeddings`), as ``predict`` does.
3. Every embedding is cached on disk (:class:`EmbeddingCache`), one file per clip and draw, keyed by
   everything that changes it (backbone and weights SHA-256, the clip file's content, window and
   pooling, the waveform settings, the noise bank's files, the seed, the draw), never by the run:
   a second run (another head, split, epochs, mixup) embeds nothing again. Files enter the key by
   what they hold (size and SHA-256; a bank's files also by their names relative to the bank), not
   by where they are or when they were written, so a data set or bank copied or moved elsewhere
   reuses the cache and a file changed in place does not (:class:`FileDigests` hashes a file once
   while it is unchanged). Caches written before keys were content-based (their keys held absolute
   paths and modification times) miss once: those embeddings are computed again under the new keys
   (the old files stay; delete the cache folder to reclaim their space).
4. The head (:class:`~dawnchorus.models.embedding_classifier.EmbeddingClassifier`, ``linear`` or
   ``mlp``) trains in a plain torch loop (seconds: the embeddings are in memory):
   ``embedding.steps_per_epoch`` batches per epoch, each item a training clip (weighted sampler
   when asked) with one of its draws at random, or a negative; mixup of embeddings
   (``augment.mixup_*``); the timm path's loss (:func:`~dawnchorus.training.module.clip_loss`) and
   warmup-cosine schedule. Each epoch is validated (the same metric names as the timm path) and
   the best head by ``train.monitor`` is kept (by ``val/loss`` where the validation labels cannot
   define it: :func:`~dawnchorus.training.result.choose_monitor`).
5. Thresholds are tuned on validation (labelled soundscapes when the set has them, else clips) and
   ``RUN/model.pt`` holds the head, labels, thresholds and the backbone's record, never its weights.

The model file is read back by :mod:`dawnchorus.models.modelfile` and run by
:mod:`dawnchorus.inference.frozen`. ``resume`` does not apply: a re-run reuses every cached
embedding and repeats only the seconds of head training.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dawnchorus.augment.batch import mixup
from dawnchorus.augment.noise import NoiseBank
from dawnchorus.augment.waveform import WaveformAugment
from dawnchorus.config import Config
from dawnchorus.data.datasets import AudioCache, encode_targets, soundscape_windows
from dawnchorus.data.layouts import TrainingSet, load_training_set
from dawnchorus.data.splits import class_balanced_weights, fold_split, oversample, stratified_split
from dawnchorus.embed.base import BackboneInfo, EmbeddingModel, file_sha256, window_embeddings
from dawnchorus.embed.registry import create_embedding_model
from dawnchorus.errors import TrainingError
from dawnchorus.evaluate.metrics import macro_roc_auc, padded_cmap
from dawnchorus.evaluate.thresholds import tune_thresholds
from dawnchorus.io import audio
from dawnchorus.io.audio import find_audio_files
from dawnchorus.io.files import atomic_write, atomic_write_text, output_folder
from dawnchorus.models.embedding_classifier import EmbeddingClassifier
from dawnchorus.models.modelfile import save_model_file
from dawnchorus.training.module import clip_loss, warmup_cosine
from dawnchorus.training.result import Monitor, TrainResult, check_monitor, choose_monitor, tell

# Windows per backbone call while embedding (BirdNET's throughput is flat from 8 windows up).
EMBED_BATCH = 8
# The augment settings that act on the batch, not the waveform: they never change an embedding.
BATCH_AUGMENT_FIELDS = frozenset(
    {"mixup_p", "mixup_alpha", "cutmix_p", "specaugment_p", "time_masks", "time_mask_fraction",
     "freq_masks", "freq_mask_fraction", "background_only_p"}
)
CACHE_ENV = "DAWNCHORUS_CACHE"
# In the embedding cache folder: the SHA-256 of every file a key was made of (FileDigests).
DIGESTS_FILE = "file-digests.json"

ProgressCallback = Callable[[int, int], None]


def train_frozen(
    data: str | Path,
    out: str | Path,
    config: Config,
    drop_bad: bool = True,
    backbone: EmbeddingModel | None = None,
    progress: ProgressCallback | None = None,
    progress_bar: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a head on ``config.embedding.backbone``'s embeddings of ``data``; write ``out/model.pt``.

    ``backbone``: an already built backbone (default: built from the zoo with
    ``embedding.weights``). ``progress(done, total)`` is called as embeddings are computed;
    ``progress_bar`` shows a bar on the terminal instead (when ``progress`` is None).
    ``drop_bad`` skips clips with problems (listed in ``TrainResult.dropped_problems``).
    A ``train.monitor`` the run would never log is refused before anything is embedded or written;
    one its validation set cannot define is replaced by a defined one, said in a line to ``log``
    (a warning without it; see :func:`~dawnchorus.training.result.choose_monitor`).
    """
    settings = config.embedding
    if settings.backbone is None:
        raise TrainingError("embedding.backbone is not set: nothing to train a head on")
    started = time.perf_counter()
    training_set = load_training_set(data, on_problem="drop" if drop_bad else "raise")
    if len(training_set.labels) < 2:
        raise TrainingError(f"{data}: need at least two classes to train, found {len(training_set.labels)}")
    _, val_idx = split_clips(training_set, config)
    soundscapes = (training_set.soundscape_dir, training_set.soundscape_labels)
    check_monitor(  # before anything is embedded or written
        config.train.monitor,
        has_soundscapes=None not in soundscapes,
        has_validation_clips=len(val_idx) > 0,
    )
    if backbone is None:
        options = {} if settings.weights is None else {"weights": settings.weights}
        backbone = create_embedding_model(settings.backbone, **options)
    if backbone.name != settings.backbone:
        raise TrainingError(
            f"embedding.backbone is {settings.backbone!r}, the backbone given is {backbone.name!r}"
        )
    config = at_backbone_rate(config, backbone)
    run_dir = output_folder(Path(out), "run folder")
    config.to_yaml(run_dir / "config.yaml")
    cache = EmbeddingCache(embedding_cache_dir(config), backbone, config)
    with _embedding_bar(progress_bar and progress is None, backbone.name) as bar:
        data_set = embed_training_set(training_set, config, cache, progress or bar)
    check_monitor(  # again: a soundscape folder may give no labelled window
        config.train.monitor,
        has_soundscapes=data_set.soundscape is not None,
        has_validation_clips=data_set.validation is not None,
    )
    monitor = choose_monitor(
        config.train.monitor,
        config.train.monitor_mode,
        None if data_set.validation is None else data_set.validation.targets,
        None if data_set.soundscape is None else data_set.soundscape.targets,
    )
    if monitor.note is not None:
        tell(monitor.note, log)
    embed_seconds = time.perf_counter() - started

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the head's matrices are tiny: more threads only synchronise
    try:
        head, history, best = fit_head(
            data_set, config, len(training_set.labels), backbone.embedding_size, monitor
        )
    finally:
        torch.set_num_threads(threads)
    write_metrics(history, run_dir / "logs" / "metrics.csv")
    validation = data_set.soundscape or data_set.validation
    thresholds: dict[str, Any] = {"global": 0.5, "per_class": None}
    if validation is not None and len(validation.targets):
        probs = predict_embeddings(head, validation.embeddings)
        global_threshold, per_class = tune_thresholds((validation.targets >= 0.5).astype(int), probs)
        thresholds = {"global": float(global_threshold), "per_class": [float(t) for t in per_class]}
    model_path = run_dir / "model.pt"
    save_model_file(
        model_path,
        head,
        training_set.labels,
        config,
        thresholds=thresholds,
        scored_labels=training_set.scored_labels,
        metadata={
            "trained_on": str(Path(data).resolve()),
            "train_clips": int(len(data_set.train_clips)),
            "val_clips": 0 if data_set.validation is None else int(len(data_set.validation.targets)),
            "monitor": monitor.name,
            "best_score": best.score,
            "epochs": int(best.epoch),
            "backbone": f"{backbone.name} {backbone.version}",
            # Where its weights were (a path on this machine): predict uses that file while it is
            # there with the recorded SHA-256, so train --weights FILE then predict needs no --weights.
            "backbone_weights_path": str(Path(backbone.weights_path).resolve()),
            "embeddings_computed": cache.computed,
            "embeddings_reused": cache.reused,
            "embedding_seconds": round(embed_seconds, 2),
            "head_seconds": round(time.perf_counter() - started - embed_seconds, 2),
        },
        backbone=backbone.info().as_dict(),
    )
    return TrainResult(
        model_path=model_path,
        run_dir=run_dir,
        best_score=best.score,
        monitor=monitor.name,
        epochs_run=len(history),
        throughput=[],
        thresholds=thresholds,
        dropped_problems=[str(p) for p in training_set.problems],
    )


def at_backbone_rate(config: Config, backbone: EmbeddingModel) -> Config:
    """``config`` with audio decoded at the backbone's sample rate (what ``predict`` decodes at)."""
    data = config.model_dump(mode="json")
    data["audio"]["sample_rate"] = int(backbone.sample_rate)
    data["frontend"]["fmax"] = min(float(data["frontend"]["fmax"]), backbone.sample_rate / 2)
    data["embedding"]["backbone"] = backbone.name
    return Config.model_validate(data)


def embedding_cache_dir(config: Config) -> Path:
    """Where embeddings are cached: ``train.cache_dir/embeddings`` when set, else
    ``$DAWNCHORUS_CACHE/embeddings``, else ``$XDG_CACHE_HOME/dawnchorus/embeddings`` (``~/.cache``):
    shared by every run, so a second run on the same clips embeds nothing."""
    if config.train.cache_dir is not None:
        return Path(config.train.cache_dir) / "embeddings"
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "embeddings"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dawnchorus" / "embeddings"


# --- the embedding cache -----------------------------------------------------------------------------


class EmbeddingCache:
    """Pooled embeddings on disk, one ``.npy`` per item, under a folder per backbone and weights.

    :meth:`key` hashes what an embedding depends on; :meth:`get_or_compute` returns the cached ones
    and computes the missing ones in batches (``computed`` and ``reused`` count them). Files are
    written atomically, so runs may share a cache.
    """

    def __init__(self, folder: str | Path, backbone: EmbeddingModel, config: Config) -> None:
        self.backbone = backbone
        self.info: BackboneInfo = backbone.info()
        self.folder = Path(folder) / f"{self.info.name}-{self.info.weights_sha256[:12]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.digests = FileDigests(Path(folder) / DIGESTS_FILE)
        self.window_s = float(config.audio.clip_s)
        self.pooling = config.embedding.pooling
        self.sub_windows = config.embedding.sub_windows
        self.computed = self.reused = 0
        self._base = {
            "backbone": self.info.as_dict(),
            "window_s": self.window_s,
            "pooling": self.pooling,
            "sub_windows": self.sub_windows,
        }

    def key(self, **parts: Any) -> str:
        """The cache key of an item described by ``parts`` (JSON-able), with the backbone, window
        and pooling."""
        text = json.dumps({**self._base, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def file_identity(self, path: str | Path) -> dict[str, Any]:
        """What identifies a file's content in a key: its size and SHA-256, not where it is."""
        return {"size": os.stat(path).st_size, "sha256": self.digests.sha256(path)}

    def bank_identity(self, folder: str | Path | None) -> list[Any] | None:
        """A noise bank's identity in a key: each audio file's name relative to the bank (the order
        and names the bank draws by), size and SHA-256; None without a bank."""
        if folder is None:
            return None
        root = Path(folder).resolve()
        return [
            [path.relative_to(root).as_posix(), path.stat().st_size, self.digests.sha256(path)]
            for path in find_audio_files(root)
        ]

    def get_or_compute(
        self,
        keys: Sequence[str],
        windows: Callable[[int], np.ndarray],
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embeddings ``(len(keys), D)``: cached ones read, the others computed from
        ``windows(i)`` (one window of ``window_s`` at the backbone's rate) and stored."""
        result = np.zeros((len(keys), self.info.embedding_size), dtype=np.float32)
        missing = []
        for index, key in enumerate(keys):
            cached = self._read(self.path(key))
            if cached is None:
                missing.append(index)
            else:
                result[index] = cached
        self.reused += len(keys) - len(missing)
        for first in range(0, len(missing), EMBED_BATCH):
            chunk = missing[first:first + EMBED_BATCH]
            batch = np.stack([windows(index) for index in chunk])
            output = window_embeddings(self.backbone, batch, self.window_s, self.pooling, self.sub_windows)
            for index, embedding in zip(chunk, output.embeddings, strict=True):
                result[index] = embedding
                self._write(self.path(keys[index]), embedding)
            self.computed += len(chunk)
            if progress is not None:
                progress(first + len(chunk), len(missing))
        return result

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            values = np.load(path)
        except (OSError, ValueError):  # absent, or damaged (a full disk): computed again
            return None
        return values if values.shape == (self.info.embedding_size,) else None

    def _write(self, path: Path, embedding: np.ndarray) -> None:
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.save(handle, np.asarray(embedding, dtype=np.float32))

        atomic_write(path, write)


class FileDigests:
    """SHA-256 of files' bytes for cache keys, remembered in ``path`` (a JSON file in the embedding
    cache folder) by where each file is and its ``stat`` (device, inode, size, modification and
    change times): a file is read once while it is unchanged. Any write to a file changes its POSIX
    change time (which no tool sets back, unlike the modification time), so a changed file is
    always hashed again; a copied or moved one is hashed again once, to the same digest. A damaged
    or missing record only costs reading again; concurrent runs merge their records when saving
    (:meth:`save`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._known = self._load()
        self._new: dict[str, list[Any]] = {}

    def sha256(self, file: str | Path) -> str:
        """Hex SHA-256 of ``file``'s bytes."""
        where = os.path.abspath(file)
        stat = os.stat(where)
        seal = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        entry = self._new.get(where) or self._known.get(where)
        if entry is not None and entry[:-1] == seal:
            return entry[-1]
        digest = file_sha256(where)
        self._new[where] = [*seal, digest]
        return digest

    def save(self) -> None:
        """Add this run's digests to the record on disk (re-read first: another run's are kept)."""
        if not self._new:
            return
        merged = {**self._load(), **self._new}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(merged))
        self._known, self._new = merged, {}

    def _load(self) -> dict[str, list[Any]]:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict):
            return {}
        return {k: v for k, v in record.items() if isinstance(v, list) and len(v) == 6}


# --- embedding a training set ----------------------------------------------------------------------


@dataclass
class EmbeddedSet:
    """Embeddings ``(N, D)`` and targets ``(N, C)`` of validation clips or soundscape windows."""

    embeddings: np.ndarray
    targets: np.ndarray


@dataclass
class EmbeddedTrainingSet:
    """Everything the head trains and validates on.

    ``train_draws``: ``(clips, draws, D)`` for the training clips (after oversampling: repeats share
    their draws), ``train_targets`` ``(clips, C)``, ``train_weights`` ``(clips,)``, ``train_primary``
    their primary labels; ``negatives`` ``(n, D)`` bird-free windows; ``validation`` clips and
    ``soundscape`` windows (None when there are none).
    """

    train_clips: np.ndarray
    train_draws: np.ndarray
    train_targets: np.ndarray
    train_weights: np.ndarray
    train_primary: np.ndarray
    negatives: np.ndarray
    validation: EmbeddedSet | None
    soundscape: EmbeddedSet | None


def embed_training_set(
    training_set: TrainingSet,
    config: Config,
    cache: EmbeddingCache,
    progress: ProgressCallback | None = None,
) -> EmbeddedTrainingSet:
    """Split ``training_set`` as the timm path does and embed it (see the module docstring)."""
    clips, labels = training_set.clips, training_set.labels
    settings = config.train
    targets = encode_targets(clips, labels, secondary_weight=config.imbalance.secondary_weight)
    train_idx, val_idx = split_clips(training_set, config)
    primary = clips["primary_label"].to_numpy()
    paths = clips["path"].to_numpy()
    names = clips["filename"].to_numpy()  # relative to the audio folder: draws do not depend on where it is
    rate, clip_samples = config.audio.sample_rate, config.audio.clip_samples
    noise_dir = config.augment.noise_dir
    # Decoded only when an embedding must be computed: a run on cached embeddings never loads it.
    bank = functools.cache(lambda: NoiseBank.cached(noise_dir, rate) if noise_dir else None)
    waveform = {
        k: v for k, v in config.augment.model_dump(mode="json").items() if k not in BATCH_AUGMENT_FIELDS
    }
    waveform["noise_dir"] = cache.bank_identity(config.augment.noise_dir)
    draws = config.embedding.draws

    # Training clips: each under `draws` draws (the unique clips; oversampled repeats share them).
    unique_train = np.unique(train_idx)
    keys, makers = [], []
    decoded: dict[str, np.ndarray] = {}

    def samples_of(path: str) -> np.ndarray:
        if path not in decoded:
            decoded.clear()  # clips are drawn in order: keep one decoded at a time
            decoded[path] = audio.load(path, sample_rate=rate)
        return decoded[path]

    for clip in unique_train:
        identity = cache.file_identity(paths[clip])
        for draw in range(draws):
            if draw == 0:
                keys.append(cache.key(item="clip", file=identity))
            else:
                keys.append(cache.key(item="draw", file=identity, name=str(names[clip]), draw=draw,
                                      seed=settings.seed, waveform=waveform))
            makers.append((str(paths[clip]), str(names[clip]), draw))

    cache.digests.save()  # before the long part: the files are not read again if it is stopped

    def train_window(index: int) -> np.ndarray:
        path, name, draw = makers[index]
        return clip_draw(samples_of(path), draw, clip_samples, rate, config, bank(), name)

    embedded = cache.get_or_compute(keys, train_window, progress)
    by_clip = embedded.reshape(len(unique_train), draws, -1)
    position = {int(clip): row for row, clip in enumerate(unique_train)}

    # Oversampling repeats rare classes' clips (each repeat draws among the clip's cached draws).
    train_rows = oversample(
        train_idx, primary[train_idx], config.imbalance.min_clips_per_class, settings.seed
    )
    rating = clips["rating"].fillna(5.0).clip(lower=0.5).to_numpy(dtype=np.float32) / 5.0
    weights = rating if config.imbalance.rating_weight else np.ones(len(clips), dtype=np.float32)

    negatives = np.zeros((0, cache.info.embedding_size), dtype=np.float32)
    if noise_dir is not None and config.embedding.negatives:
        bank_id = waveform["noise_dir"]
        neg_keys = [cache.key(item="negative", bank=bank_id, index=i, seed=settings.seed)
                    for i in range(config.embedding.negatives)]
        negatives = cache.get_or_compute(
            neg_keys,
            lambda i: bank().random_segment(clip_samples, np.random.default_rng([settings.seed, 7, i])),
        )

    validation = None
    if len(val_idx):
        val_keys = [cache.key(item="clip", file=cache.file_identity(paths[clip])) for clip in val_idx]
        val_embeddings = cache.get_or_compute(
            val_keys, lambda i: clip_draw(samples_of(str(paths[val_idx[i]])), 0, clip_samples, rate, config)
        )
        validation = EmbeddedSet(val_embeddings, targets[val_idx])

    soundscape = None
    # Soundscapes are decoded (into a temporary folder) only for windows not yet in the cache.
    with tempfile.TemporaryDirectory(prefix="dawnchorus-soundscapes-") as decoded_dir:
        windows = soundscape_windows(training_set, labels, config, AudioCache(decoded_dir, rate))
        if windows is not None:
            sound_keys = [
                cache.key(item="soundscape", file=cache.file_identity(path), start=int(start))
                for path, start in zip(windows.paths, windows.starts, strict=True)
            ]
            sound_embeddings = cache.get_or_compute(sound_keys, lambda i: windows[i]["audio"].numpy())
            soundscape = EmbeddedSet(sound_embeddings, np.asarray(windows.targets, dtype=np.float32))
    cache.digests.save()

    return EmbeddedTrainingSet(
        train_clips=train_rows,
        train_draws=by_clip[[position[int(row)] for row in train_rows]],
        train_targets=targets[train_rows],
        train_weights=weights[train_rows],
        train_primary=primary[train_rows],
        negatives=negatives,
        validation=validation,
        soundscape=soundscape,
    )


def split_clips(training_set: TrainingSet, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of ``training_set.clips``: fold ``train.fold`` of a K-fold, else
    the stratified ``train.val_fraction`` split (as the timm path splits)."""
    settings, clips = config.train, training_set.clips
    if settings.fold is not None:
        return fold_split(clips, settings.folds, settings.fold, settings.seed)
    return stratified_split(clips, settings.val_fraction, settings.seed)


def clip_draw(
    samples: np.ndarray,
    draw: int,
    clip_samples: int,
    sample_rate: int,
    config: Config,
    bank: NoiseBank | None = None,
    name: str = "",
) -> np.ndarray:
    """Draw ``draw`` of a clip: ``clip_samples`` samples. Draw 0 is the clip's start (zero-padded),
    as validation and the timm path's validation read it; draw ``k > 0`` a random crop through the
    waveform augmentation, seeded by ``train.seed``, the clip's ``name`` (its file name in the data
    set) and ``k``: reproducible wherever the data set lies, and the same whatever other clips or
    draws are embedded."""
    if draw == 0:
        return np.asarray(audio.crop_or_pad(samples, clip_samples, mode="start"), dtype=np.float32)
    stream = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng([config.train.seed, draw, stream])
    crop = np.array(audio.crop_or_pad(samples, clip_samples, mode="random", rng=rng), dtype=np.float32)
    augmented = WaveformAugment(config.augment, sample_rate, seed=rng, noise_bank=bank)(crop, sample_rate)
    return np.asarray(audio.crop_or_pad(augmented, clip_samples, mode="start"), dtype=np.float32)


@contextlib.contextmanager
def _embedding_bar(show: bool, name: str) -> Iterator[ProgressCallback | None]:
    """A transient terminal bar fed by ``(done, total)`` calls (one phase after another), or None."""
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(f"embedding ({name})"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("embedding", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# --- the head ---------------------------------------------------------------------------------------


@dataclass
class Best:
    """The best epoch so far by the monitored metric."""

    epoch: int = 0
    score: float | None = None
    state: dict[str, torch.Tensor] | None = None


def fit_head(
    data: EmbeddedTrainingSet,
    config: Config,
    num_classes: int,
    embedding_size: int,
    monitor: Monitor | None = None,
) -> tuple[EmbeddingClassifier, list[dict[str, float]], Best]:
    """Train the head; returns it (with the best epoch's weights), one metrics row per epoch, and
    the best epoch by ``monitor`` (default ``train.monitor``; an epoch where it is undefined is never
    the best and does not count towards ``train.patience``)."""
    settings, train = config.embedding, config.train
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    head = EmbeddingClassifier(embedding_size, num_classes, settings.head, config.model.drop_rate)
    head.fit_scaler(np.concatenate([data.train_draws.reshape(-1, embedding_size), data.negatives]))

    clips = len(data.train_draws)
    negatives = len(data.negatives)
    if config.imbalance.sampler == "weighted":
        clip_weights = class_balanced_weights(list(data.train_primary), config.imbalance.sampler_power)
    else:
        clip_weights = np.ones(clips)
    chances = np.concatenate([clip_weights, np.ones(negatives)])
    chances = chances / chances.sum()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=train.weight_decay)
    total = train.epochs * settings.steps_per_epoch
    if train.max_steps > 0:
        total = min(total, train.max_steps)
    warmup = min(total // 2, int(train.warmup_epochs * settings.steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    monitor = monitor or Monitor(train.monitor, train.monitor_mode)
    best, history, step, stale = Best(), [], 0, 0
    for epoch in range(train.epochs):
        head.train()
        losses = []
        for _ in range(settings.steps_per_epoch):
            if step >= total:
                break
            items = rng.choice(clips + negatives, size=train.batch_size, p=chances)
            x, targets, weights = _batch(items, rng, data)
            if config.augment.mixup_p > 0 and rng.random() < config.augment.mixup_p and len(x) > 1:
                x, targets = mixup(x, targets, config.augment.mixup_alpha, generator)
            loss = clip_loss(head(x), targets, weights, config.imbalance)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(head.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
        row = {
            "epoch": epoch, "step": step, "train/loss_epoch": float(np.mean(losses)) if losses else math.nan
        }
        row.update(validation_metrics(head, data))
        history.append(row)
        score = row.get(monitor.name, math.nan)
        # Ties go to the later epoch (Monitor.improves): a small validation set saturates early
        # (ROC-AUC 1.0 after a few steps), and the head trained longer is the better one on unseen
        # soundscapes.
        if monitor.improves(score, best.score):
            best = Best(epoch, float(score), {k: v.clone() for k, v in head.state_dict().items()})
            stale = 0
        elif math.isfinite(score):
            stale += 1
        if (train.patience and stale >= train.patience) or step >= total:
            break
    if best.state is not None:
        head.load_state_dict(best.state)
    else:
        best = Best(len(history) - 1, None, None)  # the monitored metric was never defined: last epoch
    return head.eval(), history, best


def _batch(
    items: np.ndarray, rng: np.random.Generator, data: EmbeddedTrainingSet
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings, targets and weights of sampled items: a clip (one of its draws at random) or a
    negative (all-zero targets, weight 1; items from ``len(train_draws)`` on)."""
    clips, draws, size = data.train_draws.shape
    is_clip = items < clips
    clip_items = items[is_clip]
    x = np.empty((len(items), size), dtype=np.float32)
    y = np.zeros((len(items), data.train_targets.shape[1]), dtype=np.float32)
    w = np.ones(len(items), dtype=np.float32)
    x[is_clip] = data.train_draws[clip_items, rng.integers(draws, size=len(clip_items))]
    y[is_clip] = data.train_targets[clip_items]
    w[is_clip] = data.train_weights[clip_items]
    x[~is_clip] = data.negatives[items[~is_clip] - clips]
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)


@torch.no_grad()
def predict_embeddings(head: EmbeddingClassifier, embeddings: np.ndarray) -> np.ndarray:
    """Probabilities ``(N, C)`` of embeddings ``(N, D)``."""
    head.eval()
    return torch.sigmoid(head(torch.from_numpy(np.ascontiguousarray(embeddings)))).numpy()


def validation_metrics(head: EmbeddingClassifier, data: EmbeddedTrainingSet) -> dict[str, float]:
    """The timm path's validation metrics: ``val/*`` on clips, ``val_soundscape/*`` on soundscape
    windows (NaN where a metric is undefined, e.g. no validation clip has a positive)."""
    metrics: dict[str, float] = {}
    for prefix, part in (("val", data.validation), ("val_soundscape", data.soundscape)):
        if part is None:
            continue
        probs = predict_embeddings(head, part.embeddings)
        truth = (part.targets >= 0.5).astype(int)
        metrics[f"{prefix}/roc_auc"] = _safe(macro_roc_auc, truth, probs)
        metrics[f"{prefix}/cmap"] = _safe(padded_cmap, truth, probs)
        if prefix == "val":
            clipped = np.clip(probs, 1e-7, 1 - 1e-7)
            loss = -(part.targets * np.log(clipped) + (1 - part.targets) * np.log(1 - clipped)).mean()
            metrics["val/loss"] = float(loss)
    return metrics


def write_metrics(history: list[dict[str, float]], path: Path) -> None:
    """One row per epoch (``epoch, step, train/loss_epoch, val/...``), as the timm path's CSV log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(history)
    atomic_write(path, lambda temporary: frame.to_csv(temporary, index=False))


def _safe(metric: Callable[[np.ndarray, np.ndarray], float], truth: np.ndarray, probs: np.ndarray) -> float:
    try:
        return float(metric(truth, probs))
    except ValueError:
        return math.nan
