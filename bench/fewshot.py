"""Few-shot species on noisy soundscapes: a CNN from scratch vs heads on frozen BirdNET embeddings.

Protocol. Focal clips of real species (``../shared/data/real`` and ``../shared/data/real-more``:
great tit, European storm-petrel, Bengalese finch, domestic chicken; the species with a single clip,
peafowl, duck and zebra finch, are left out because none could be held out) and of synthetic
species (:func:`dawnchorus.synth.soundscapes.make_dataset`'s clips). Each species' clips are split
once (``--data-seed``) into a *training pool* and a *test pool* (a third, at least one clip): no
test-pool clip is ever trained on.

The real bird-free ambiences (manifest rows ``kind == background``, ``contains_birds == no`` of both
folders) are split in two banks holding the same kinds of sound (rain, wind, water, insects) but
different recordings: the *training* bank is what the noise augmentation mixes in and what the
validation soundscapes are built on, the *test* bank is heard only in the test soundscapes.

Soundscapes (60 s, 32 kHz, BirdCLEF 2021 labels per 5-s window): a background from
:func:`~dawnchorus.synth.soundscapes.soundscape_background` (1-2 real ambiences of the bank, 60-90 %
of the power, with coloured noise, wind and sometimes insects), a community of 2-5 species, 0-3
calls starting per window; a call is the loudest of a few random crops of at most ``CALL_MAX_S``
of one of the species' clips, mixed at an SNR drawn from ``SNR_DB_RANGE`` (the synthetic set's:
-5 to 15 dB against the background under the call). Calls overlap; windows are labelled by
:func:`~dawnchorus.synth.soundscapes.window_labels`.

- **Test soundscapes** (``--test-soundscapes``, fixed): test-pool clips over the test bank.
- Per k (1, 2, 5, all clips per species) and seed: k training-pool clips per species (first k of a
  seeded permutation, so the sets are nested), and **validation soundscapes** built from those same
  k clips over the training bank, in the data set's ``test_soundscapes/`` + ``test_labels.csv``:
  what a user with k clips can make. ``train`` validates on them (``train.monitor =
  val_soundscape/roc_auc``, no clip is held out: ``train.val_fraction`` leaves none at these
  sizes) and tunes its thresholds on them.

Arms, each trained on exactly the k clips per species:

- ``cnn``: today's timm recipe (``model.backbone`` default, mobilenetv4_conv_small since issue 16;
  the quoted figures are efficientnet_b0's: ``--cnn-backbone``; no pretrained weights: benches never
  download), noise augmentation from the training bank, ``--cnn-epochs`` epochs (``--cnn-train``
  overrides more of its train section);
- ``birdnet plain``: ``--backbone birdnet``, linear head, ``embedding.draws=1, negatives=0``, no
  noise bank;
- ``birdnet aug``: ``--backbone birdnet`` with the defaults (draws, negatives) and the training bank;
- ``logreg``: the BirdNET-Analyzer custom-classifier peer recipe: scikit-learn one-vs-rest
  ``LogisticRegression`` on BirdNET embeddings of the clean clips (the clip's first 5 s, pooled as
  ``train`` pools them), thresholds tuned (``tune_thresholds``) on the validation soundscapes'
  embeddings.

The first three run through the package (``dawnchorus.train``, ``dawnchorus.predict`` on the test
soundscapes, thresholds from the model file), all four are scored by
:func:`dawnchorus.evaluate.metrics.evaluate` on the held-out test soundscapes: macro ROC-AUC,
padded cmAP, macro F1 at the model's own (per-class, validation-tuned) thresholds; mean ± sd over
seeds. A second table splits ROC-AUC into the real and the synthetic species.

    python bench/fewshot.py --quick
    python bench/fewshot.py                       # the quoted table (3 seeds, k = 1 2 5 all)
    python bench/fewshot.py --arms "birdnet aug" --k all,tail --imbalance '{"sampler": "weighted"}'

Imbalance: ``--imbalance JSON`` overrides the imbalance section of every trained arm; ``--k tail``
is a long-tailed set, :data:`TAIL` clips per species by rank of pool size (13 great tits, then
6, 6, 4, 3, 3, 2, 2 and five species with one clip; which synthetic species gets which count
depends on the seed). Run folders are named by the overrides, so one work folder holds them all.

Embeddings are cached under the work folder (``train.cache_dir``), so ``--work-dir DIR`` re-runs
embed nothing again. Real data: ``$DAWNCHORUS_REAL_DATA`` or ``<repo>/../shared/data/real``; the
second folder is ``real-more`` beside it. Needs the ``birdnet`` extra and scikit-learn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import run_in_work_dir

import dawnchorus
from dawnchorus.augment.noise import rms
from dawnchorus.config import Config, build_config
from dawnchorus.embed.base import window_embeddings
from dawnchorus.embed.registry import create_embedding_model
from dawnchorus.evaluate.metrics import align_predictions, evaluate
from dawnchorus.evaluate.thresholds import tune_thresholds
from dawnchorus.inference.embeddings import EmbedSettings, embedding_frame
from dawnchorus.io import audio
from dawnchorus.io.annotations import read_birdclef_labels
from dawnchorus.synth.calls import stream_rng
from dawnchorus.synth.soundscapes import (
    CALLS_PER_WINDOW_WEIGHTS,
    SNR_DB_RANGE,
    CallEvent,
    make_dataset,
    soundscape_background,
    window_labels,
)

REPO = Path(__file__).resolve().parents[1]
RATE = 32000  # soundscapes are written at the synthetic set's rate
WINDOW_S = 5.0
CALL_MAX_S = 4.0
CALL_CANDIDATES = 6  # random crops of a long clip; the loudest becomes the call
TEST_FRACTION = 1 / 3
TEST_STREAM, VALIDATION_STREAM = 40, 41  # the test and validation soundscapes never share draws
# Bird-free ambiences: the training bank (augmentation, validation soundscapes) and the test bank
# (test soundscapes only) hold the same kinds of sound, never the same recording.
TRAIN_BANK = (
    "redeclipse_rain", "redeclipse_wind", "redeclipse_creek", "supertuxkart_river_loop",
    "redeclipse_nightcrickets", "0ad_rain_11", "0ad_wind_11", "0ad_windgust_11", "0ad_windleaves_10",
    "0ad_thunder_11", "0ad_river_slow_21", "0ad_river_fast_21", "0ad_waterfall_31", "0ad_wave_21",
    "ufoai_arcticwind", "ufoai_water01", "ufoai_cricket_loop",
)
TEST_BANK = (
    "redeclipse_stormrain", "redeclipse_wind1", "redeclipse_blowwind", "redeclipse_waterfall",
    "supertuxkart_waterfall_loop_2", "0ad_rain_12", "0ad_windstorm_11", "0ad_windleaves_11",
    "0ad_river_med_21", "0ad_river_raging_21", "0ad_wavecrash_21", "0ad_waverocky_21",
    "ufoai_waterfontain", "gcompris_LRRain_in_garden_01_LA_cut", "gcompris_LRFrogsInPondDuringStormLACut",
    "scratch_Crickets",
)
# k = "tail": clips per species by rank of pool size, a long tail (13:1; the great tit's pool is 13)
TAIL = (13, 6, 6, 4, 3, 3, 2, 2, 1, 1, 1, 1)
METRICS = (("roc_auc_macro", "ROC-AUC"), ("cmap_padded", "cmAP"), ("f1_macro_2022", "F1@own"))
ARMS = ("cnn", "birdnet plain", "birdnet aug", "logreg")
FULL = {"synth_species": 8, "synth_clips": 9, "test_soundscapes": 12, "val_soundscapes": 6,
        "seeds": 3, "k": "1,2,5,all", "cnn_epochs": 5}
QUICK = {"synth_species": 4, "synth_clips": 6, "test_soundscapes": 4, "val_soundscapes": 3,
         "seeds": 1, "k": "1,all", "cnn_epochs": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few species and soundscapes, 1 seed")
    parser.add_argument("--seeds", type=int, default=None, help="N seeds from --first-seed (full: 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first training seed")
    parser.add_argument("--k", default=None,
                        help="clips per species, comma-separated; 'all' = the pool, 'tail' = long-tailed")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--cnn-epochs", type=int, default=None,
                        help="CNN epochs (full: 5; the default 20 takes ~3 min a run here)")
    parser.add_argument("--cnn-backbone", default=None,
                        help="timm backbone of the CNN (default: the config's)")
    parser.add_argument("--cnn-train", default="{}",
                        help="JSON overrides of the cnn arm's train section")
    parser.add_argument("--embedding", default="{}",
                        help="JSON overrides of the 'birdnet aug' arm's embedding section")
    parser.add_argument("--augment", default="{}",
                        help="JSON overrides of the 'birdnet aug' arm's augment section")
    parser.add_argument("--imbalance", default="{}",
                        help="JSON overrides of the imbalance section of every trained arm (not logreg)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the pools and the test soundscapes")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep data, cache and runs here (default: a temporary folder, deleted)")
    parser.add_argument("--real-data", type=Path, default=None, help="the real recordings folder")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.seeds = args.seeds or preset["seeds"]
    args.k = [None if part == "all" else part if part == "tail" else int(part)
              for part in (args.k or preset["k"]).split(",")]
    args.cnn_epochs = args.cnn_epochs or preset["cnn_epochs"]
    args.arms = [arm.strip() for arm in args.arms.split(",")]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}")
    args.preset = preset
    return args


# --- data -----------------------------------------------------------------------------------------


def real_data_dirs(override: Path | None = None) -> list[Path]:
    """The shared real-recordings folders (``real`` and, when present, ``real-more`` beside it)."""
    configured = override or os.environ.get("DAWNCHORUS_REAL_DATA")
    folder = Path(configured) if configured else REPO.parent / "shared" / "data" / "real"
    if not (folder / "manifest.csv").is_file():
        sys.exit(f"real recordings not found at {folder}: set DAWNCHORUS_REAL_DATA or --real-data")
    more = folder.parent / "real-more"
    return [folder, more] if (more / "manifest.csv").is_file() else [folder]


def manifest_rows(folders: Sequence[Path]) -> pd.DataFrame:
    """Every manifest row of ``folders`` with an absolute ``file`` column."""
    frames = []
    for folder in folders:
        frame = pd.read_csv(folder / "manifest.csv")
        frame["file"] = [folder / path for path in frame["path"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def link(target: Path, link_path: Path) -> Path:
    """A symbolic link to ``target`` (the repository and the work folder never hold copies)."""
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if not link_path.is_symlink():
        link_path.symlink_to(Path(target).resolve())
    return link_path


def noise_bank(rows: pd.DataFrame, names: tuple[str, ...], folder: Path) -> Path:
    """A folder of links to the named bird-free ambiences."""
    free = rows[(rows["kind"] == "background") & (rows["contains_birds"] == "no")]
    by_stem = {Path(path).stem: path for path in free["file"]}
    missing = [name for name in names if name not in by_stem]
    if missing:
        sys.exit(f"bird-free background(s) not in the manifests: {', '.join(missing)}")
    for name in names:
        link(by_stem[name], folder / Path(by_stem[name]).name)
    return folder


@dataclass
class Pools:
    """Clips per species (paths relative to the shared audio folder), split into training and test
    pools; ``real`` lists the real species."""

    train: dict[str, list[str]]
    test: dict[str, list[str]]
    real: list[str]

    @property
    def labels(self) -> list[str]:
        return sorted(self.train)


def build_pools(rows: pd.DataFrame, synth_dir: Path, audio_dir: Path, seed: int) -> Pools:
    """Link every focal clip under ``audio_dir/<label>/`` and split each species' clips."""
    clips: dict[str, list[str]] = {}
    focal = rows[rows["kind"] == "focal"]
    for label, file in zip(focal["label"], focal["file"], strict=True):
        clips.setdefault(str(label), []).append(f"{label}/{Path(file).name}")
        link(file, audio_dir / clips[str(label)][-1])
    real = sorted(label for label, files in clips.items() if len(files) >= 2)
    metadata = pd.read_csv(synth_dir / "train_metadata.csv")
    for label, filename in zip(metadata["primary_label"], metadata["filename"], strict=True):
        clips.setdefault(str(label), []).append(str(filename))
        link(synth_dir / "train_audio" / filename, audio_dir / filename)
    train, test = {}, {}
    rng = np.random.default_rng(seed)
    for label in sorted(clips):
        files = sorted(clips[label])
        if len(files) < 2:
            continue  # nothing to hold out
        order = [files[i] for i in rng.permutation(len(files))]
        held = max(1, int(round(len(files) * TEST_FRACTION)))
        test[label], train[label] = order[:held], order[held:]
    return Pools(train, test, real)


def load_bank(folder: Path) -> list[np.ndarray]:
    return [audio.load(path, sample_rate=RATE) for path in sorted(folder.iterdir())]


def call_segment(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The whole clip when short, else the loudest of a few random crops of ``CALL_MAX_S``."""
    length = int(CALL_MAX_S * RATE)
    if len(samples) <= length:
        return samples
    starts = rng.integers(0, len(samples) - length + 1, size=CALL_CANDIDATES)
    best = max(starts, key=lambda start: rms(samples[start:start + length]))
    return samples[best:best + length]


def write_soundscapes(
    folder: Path, labels_csv: Path, prefix: str, count: int, clips: dict[str, list[Path]],
    bank: list[np.ndarray], streams: tuple[int, ...], duration_s: float = 60.0,
) -> list[str]:
    """Write ``count`` soundscapes of ``clips`` over ``bank`` and their 5-s window labels into
    ``labels_csv``; returns their ids. Soundscape ``i`` draws from ``stream_rng(*streams, i)``."""
    decoded: dict[Path, np.ndarray] = {}
    n = int(duration_s * RATE)
    window = int(WINDOW_S * RATE)
    n_windows = n // window
    species = sorted(clips)
    rows, ids = [], []
    for index in range(count):
        rng = stream_rng(*streams, index)
        background = soundscape_background(n, rng, bank) * 10 ** (rng.uniform(-34, -24) / 20)
        community = rng.choice(species, size=min(len(species), int(rng.integers(2, 6))), replace=False)
        counts = rng.choice(len(CALLS_PER_WINDOW_WEIGHTS), size=n_windows, p=CALLS_PER_WINDOW_WEIGHTS)
        calls = np.zeros(n)
        events = []
        for w, calls_here in enumerate(counts):
            for _ in range(calls_here):
                code = str(rng.choice(community))
                path = clips[code][int(rng.integers(len(clips[code])))]
                if path not in decoded:
                    decoded[path] = audio.load(path, sample_rate=RATE)
                call = call_segment(decoded[path], rng)[: n - w * window]
                start = min(w * window + int(rng.integers(0, window)), n - len(call))
                snr_db = float(rng.uniform(*SNR_DB_RANGE))
                gain = rms(background[start:start + len(call)]) / max(rms(call), 1e-12) * 10 ** (snr_db / 20)
                fade = np.minimum(1.0, np.minimum(np.arange(len(call)), np.arange(len(call))[::-1]) / 160)
                calls[start:start + len(call)] += call * fade * gain
                events.append(CallEvent(code, start / RATE, (start + len(call)) / RATE, snr_db))
        mix = background + calls
        audio_id = f"{prefix}_{index:02d}"
        peak = max(np.abs(mix).max(), 1e-9)
        audio.write_audio(folder / f"{audio_id}.flac", mix * min(1.0, 0.9 / peak), RATE)
        for w, birds in enumerate(window_labels(events, n_windows)):
            seconds = int(round((w + 1) * WINDOW_S))
            rows.append({"row_id": f"{audio_id}_{seconds}", "audio_id": audio_id, "seconds": seconds,
                         "birds": " ".join(birds) if birds else "nocall"})
        ids.append(audio_id)
    pd.DataFrame(rows).to_csv(labels_csv, index=False)
    return ids


def select(pools: Pools, k: int | str | None, seed: int) -> dict[str, list[str]]:
    """k clips per species from the training pool (the first k of a seeded permutation: nested);
    ``k = "tail"``: :data:`TAIL` clips, the most to the largest pools (ties in a seeded order)."""
    rng = np.random.default_rng([seed, 11])
    chosen = {}
    for label in pools.labels:
        files = pools.train[label]
        order = [files[i] for i in rng.permutation(len(files))]
        chosen[label] = order if k is None or k == "tail" else order[:k]
    if k == "tail":
        tiebreak = dict(zip(pools.labels, np.random.default_rng([seed, 12]).random(len(pools.labels)),
                            strict=True))
        ranked = sorted(pools.labels, key=lambda label: (-len(pools.train[label]), tiebreak[label]))
        for rank, label in enumerate(ranked):
            chosen[label] = chosen[label][:TAIL[min(rank, len(TAIL) - 1)]]
    return chosen


def write_training_set(data: Path, chosen: dict[str, list[str]], bank: list[np.ndarray],
                       val_soundscapes: int, tag: str, streams: tuple[int, ...]) -> None:
    """Point ``data`` (one folder for every run, so clip paths and their cached embeddings stay the
    same) at the chosen clips and at validation soundscapes made of them."""
    rows = [{"primary_label": label, "secondary_labels": "[]", "filename": name}
            for label, names in chosen.items() for name in names]
    pd.DataFrame(rows).to_csv(data / "train_metadata.csv", index=False)
    audio_dir = data / "train_audio"
    clips = {label: [audio_dir / name for name in names] for label, names in chosen.items()}
    soundscapes = data / "test_soundscapes"
    if not any(soundscapes.glob(f"{tag}_*.flac")) or not (data / f"labels_{tag}.csv").is_file():
        write_soundscapes(soundscapes, data / f"labels_{tag}.csv", tag, val_soundscapes, clips, bank, streams)
    (data / "test_labels.csv").write_text((data / f"labels_{tag}.csv").read_text())


# --- arms -----------------------------------------------------------------------------------------


def arm_config(arm: str, args: argparse.Namespace, work: Path, train_bank: Path, seed: int) -> Config:
    """The settings of one arm; everything not named here is the package default."""
    train = {"seed": seed, "cache_dir": str(work / "cache"), "val_fraction": 0.001,
             "monitor": "val_soundscape/roc_auc", "num_workers": 0}
    imbalance = json.loads(args.imbalance)
    if arm == "cnn":
        model: dict[str, Any] = {"pretrained": False}
        if args.cnn_backbone:
            model["backbone"] = args.cnn_backbone
        return build_config({"model": model, "augment": {"noise_dir": str(train_bank)},
                             "imbalance": imbalance,
                             "train": {**train, "epochs": args.cnn_epochs, **json.loads(args.cnn_train)}})
    if arm == "birdnet plain":
        return build_config({"embedding": {"backbone": "birdnet", "draws": 1, "negatives": 0},
                             "imbalance": imbalance, "train": train})
    return build_config({
        "embedding": {"backbone": "birdnet", **json.loads(args.embedding)},
        "augment": {"noise_dir": str(train_bank), **json.loads(args.augment)},
        "imbalance": imbalance,
        "train": train,
    })


def run_tag(arm: str, args: argparse.Namespace) -> str:
    """A run folder suffix naming the arm's overrides (runs of other settings never share a folder)."""
    overrides = {"cnn": [args.cnn_train], "birdnet aug": [args.embedding, args.augment]}.get(arm, [])
    text = "_".join(part for part in [*overrides, args.imbalance] if json.loads(part))
    return "_" + hashlib.sha256(text.encode()).hexdigest()[:8] if text else ""


def train_and_predict(
    data: Path, run: Path, config: Config, test_files: list[Path]
) -> tuple[pd.DataFrame, Any]:
    """What a user runs: ``train`` then ``predict`` on the test soundscapes."""
    result = dawnchorus.train(data, run, config, progress_bar=False)
    model = dawnchorus.load_model(result.model_path)
    return dawnchorus.predict(model, test_files).reset_index(), model


class LogisticPeer:
    """BirdNET-Analyzer's custom-classifier recipe: one-vs-rest logistic regression on the BirdNET
    embeddings of the clean clips (each clip's first 5 s, pooled as ``train`` pools them)."""

    def __init__(self, work: Path) -> None:
        self.backbone = create_embedding_model("birdnet")
        self.cache = work / "logreg_embeddings"
        self.cache.mkdir(parents=True, exist_ok=True)

    def clip_embedding(self, path: Path) -> np.ndarray:
        stored = self.cache / (path.parent.name + "__" + path.name + ".npy")
        if stored.is_file():
            return np.load(stored)
        samples = audio.load(path, sample_rate=self.backbone.sample_rate)
        window = audio.crop_or_pad(samples, int(WINDOW_S * self.backbone.sample_rate), mode="start")
        embedding = window_embeddings(self.backbone, np.asarray(window)[None], WINDOW_S).embeddings[0]
        np.save(stored, embedding)
        return embedding

    def soundscape_embeddings(self, files: list[Path]) -> pd.DataFrame:
        frames = []
        for path in files:
            stored = self.cache / f"scape__{path.stem}.parquet"
            if not stored.is_file():
                embedding_frame(self.backbone, path, EmbedSettings(window_s=WINDOW_S)).to_parquet(stored)
            frames.append(pd.read_parquet(stored))
        return pd.concat(frames)

    def run(self, data: Path, labels: list[str], val_files: list[Path], test_files: list[Path]
            ) -> tuple[pd.DataFrame, np.ndarray]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        metadata = pd.read_csv(data / "train_metadata.csv")
        x = np.stack([self.clip_embedding(data / "train_audio" / name) for name in metadata["filename"]])
        y = np.stack([[float(label == primary) for label in labels] for primary in metadata["primary_label"]])
        classifier = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(x, y)
        val = self.soundscape_embeddings(val_files)
        val_probs = frame_probabilities(classifier, val, labels)
        truth = read_birdclef_labels(data / "test_labels.csv", labels=labels)
        aligned, aligned_truth = align_predictions(val_probs, truth)
        _, per_class = tune_thresholds(aligned_truth[labels].to_numpy(dtype=np.int64),
                                       aligned[labels].to_numpy(dtype=np.float64))
        test_probs = frame_probabilities(classifier, self.soundscape_embeddings(test_files), labels)
        return test_probs, per_class


def frame_probabilities(classifier: Any, frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """``file, start_s, end_s`` and one probability column per label, from an embedding table."""
    frame = frame.reset_index()
    columns = [c for c in frame.columns if c.startswith("e") and c[1:].isdigit()]
    probs = classifier.predict_proba(frame[columns].to_numpy(dtype=np.float32))
    out = frame[["file", "start_s", "end_s"]].copy()
    for index, label in enumerate(labels):
        out[label] = probs[:, index]
    return out


# --- report ---------------------------------------------------------------------------------------

# scores[(arm, k)] -> one summary per seed; each summary: {"all": evaluate(), "real": ..., "synth": ...}
Scores = dict[tuple[str, str], list[dict[str, dict[str, Any]]]]


def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return f"{'-':>15}"
    spread = f" ± {np.std(values):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):>7.3f}{spread:<8}"


def render_tables(scores: Scores) -> str:
    header = f"{'arm':<15}{'k':>5}" + "".join(f"{title:>15}" for _, title in METRICS)
    lines = ["all species (macro):", header, "-" * len(header)]
    for (arm, k), runs in scores.items():
        cells = "".join(_cell([run["all"][key] for run in runs]) for key, _ in METRICS)
        lines.append(f"{arm:<15}{k:>5}{cells}")
    titles = ("ROC-AUC real", "ROC-AUC synth", "cmAP real", "cmAP synth")
    header = f"{'arm':<15}{'k':>5}" + "".join(f"{title:>15}" for title in titles)
    lines += ["", "real vs synthetic species:", header, "-" * len(header)]
    for (arm, k), runs in scores.items():
        cells = "".join(
            _cell([run[part][key] for run in runs])
            for key in ("roc_auc_macro", "cmap_padded") for part in ("real", "synth")
        )
        lines.append(f"{arm:<15}{k:>5}{cells}")
    return "\n".join(lines)


def score(predictions: pd.DataFrame, truth: pd.DataFrame, labels: list[str], thresholds: np.ndarray,
          pools: Pools) -> dict[str, dict[str, Any]]:
    synth = [label for label in labels if label not in pools.real]
    return {
        "all": evaluate(predictions, truth, labels, thresholds),
        "real": evaluate(predictions, truth, labels, thresholds, pools.real),
        "synth": evaluate(predictions, truth, labels, thresholds, synth),
    }


def run(args: argparse.Namespace, work: Path) -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()
    preset = args.preset
    check_work_dir(work, {**preset, "data_seed": args.data_seed})
    rows = manifest_rows(real_data_dirs(args.real_data))
    train_bank = noise_bank(rows, TRAIN_BANK, work / "noise_train")
    test_bank = noise_bank(rows, TEST_BANK, work / "noise_test")
    synth_dir = work / f"synth_{preset['synth_species']}x{preset['synth_clips']}"
    if not (synth_dir / "train_metadata.csv").is_file():
        make_dataset(synth_dir, species=preset["synth_species"], soundscapes=0, seed=args.data_seed,
                     clips_per_species=(preset["synth_clips"], preset["synth_clips"]), overwrite=True)
    data = work / "trainset"
    pools = build_pools(rows, synth_dir, data / "train_audio", args.data_seed)
    labels = pools.labels
    test_dir, test_labels = work / "test_soundscapes", work / "test_labels.csv"
    if not test_labels.is_file():
        audio_dir = data / "train_audio"
        clips = {label: [audio_dir / name for name in names] for label, names in pools.test.items()}
        write_soundscapes(test_dir, test_labels, "test", preset["test_soundscapes"], clips,
                          load_bank(test_bank), (args.data_seed, TEST_STREAM))
    test_files = sorted(test_dir.glob("*.flac"))
    truth = read_birdclef_labels(test_labels, labels=labels)
    print(f"{len(labels)} species ({len(pools.real)} real: {', '.join(pools.real)}); training pool "
          f"{sum(map(len, pools.train.values()))} clips, test pool {sum(map(len, pools.test.values()))}; "
          f"{len(test_files)} test soundscapes ({len(truth)} windows, test bank), "
          f"{preset['val_soundscapes']} validation soundscapes per k and seed (training bank)")
    print("training pool per species: " + ", ".join(f"{lb} {len(pools.train[lb])}" for lb in labels))
    train_noise = load_bank(train_bank)
    peer = LogisticPeer(work) if "logreg" in args.arms else None
    scores: Scores = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for k in args.k:
            k_name = "all" if k is None else str(k)
            tag = f"val_k{k_name}_s{seed}"
            chosen = select(pools, k, seed)
            streams = (seed, VALIDATION_STREAM, _k_order(k_name))
            write_training_set(data, chosen, train_noise, preset["val_soundscapes"], tag, streams)
            val_files = sorted((data / "test_soundscapes").glob(f"{tag}_*.flac"))
            for arm in args.arms:
                began = time.perf_counter()
                if arm == "logreg":
                    predictions, thresholds = peer.run(data, labels, val_files, test_files)
                    arm_labels = labels
                else:
                    config = arm_config(arm, args, work, train_bank, seed)
                    run_dir = work / "runs" / f"{arm.replace(' ', '_')}{run_tag(arm, args)}_k{k_name}_s{seed}"
                    predictions, model = train_and_predict(data, run_dir, config, test_files)
                    thresholds, arm_labels = model.class_thresholds, list(model.labels)
                result = score(predictions, truth, arm_labels, thresholds, pools)
                scores.setdefault((arm, k_name), []).append(result)
                print(f"seed {seed} k={k_name:>3} {arm:<14} ROC-AUC {result['all']['roc_auc_macro']:.3f} "
                      f"cmAP {result['all']['cmap_padded']:.3f} F1 {result['all']['f1_macro_2022']:.3f} "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)
    order = sorted(scores, key=lambda key: (ARMS.index(key[0]), _k_order(key[1])))
    ordered = {key: scores[key] for key in order}
    print()
    print(render_tables(ordered))
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


def check_work_dir(work: Path, settings: dict[str, Any]) -> None:
    """Refuse a work folder whose data (pools, soundscapes) were made with other settings."""
    marker = work / "fewshot_data.json"
    if marker.is_file() and json.loads(marker.read_text()) != settings:
        sys.exit(f"{work} holds data made with other settings ({marker}): use another --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings))


def _k_order(k: str) -> int:
    return {"all": 10**6, "tail": 10**6 + 1}.get(k) or int(k)


def main(argv: list[str] | None = None) -> None:
    run_in_work_dir(run, parse_args(argv), prefix="dawnchorus_fewshot_")


if __name__ == "__main__":
    main()
