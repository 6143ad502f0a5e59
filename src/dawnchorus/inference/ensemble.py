"""Ensembles: several models that share labels, averaged window by window (``predict m1.pt m2.pt ...``).

An :class:`Ensemble` stands where one model stands in both runners and :func:`dawnchorus.predict`:
it has the ``labels``, audio ``config``, ``class_thresholds`` and ``scored_labels`` they read, and
:func:`predictor_batch_function` gives its batch function (:func:`combine`): every member's own
engine (torch, onnx, auto; a frozen-backbone member its backbone and head) classifies the same batch
of decoded windows, and the ensemble's probability is the weighted mean of the members'
probabilities, each member's columns put in the ensemble's label order. Averaging happens per
window, before overlap averaging, smoothing, max scaling and thresholds, so an ensemble flows through
segments, resumed runs and Dask chunks exactly like one model.

What an ensemble must share, checked when it is built (one :class:`~dawnchorus.errors.ModelError`
line naming the member file): the set of labels (members whose order differs are reordered) and the
window grid (window length and sample rate: windows are decoded once for every member). Its
detection thresholds are the members' per-class thresholds averaged with the ensemble's weights
(``--threshold`` still overrides them); its identity (:func:`ensemble_sha256`, in the run tag of
:func:`dawnchorus.inference.run.run_tag`) covers every member's file hash and weight, in order, so a
changed ensemble never reuses the parts of another.

Decoding and batching belong to ``pipeline.py``, single-model engines to ``engines.py``, writing to
``run.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dawnchorus.errors import ModelError, PredictionError
from dawnchorus.inference.engines import (
    DEFAULT_BATCH_SIZE,
    BatchFunction,
    Engine,
    StagedBatchFunction,
    batch_function_for,
    describe_engine,
    load_for_prediction,
)

if TYPE_CHECKING:
    from dawnchorus.config import Config
    from dawnchorus.models.modelfile import LoadedModel

# File endings taken as ensemble members on the command line (see :func:`looks_like_model_file`).
MODEL_SUFFIXES = (".pt", ".onnx")


@dataclass
class Ensemble:
    """Models sharing labels and a window grid, averaged per window with ``weights`` (sum 1).

    ``orders[i]`` lists, for each ensemble label (the first member's order), its column in member
    ``i``'s output. Build one with :func:`ensemble_of` (or :func:`load_ensemble`), which checks the
    members.
    """

    members: list[LoadedModel]
    weights: tuple[float, ...]
    orders: list[np.ndarray] = field(repr=False)

    # What the runners read from a model ------------------------------------------------------------

    @property
    def labels(self) -> list[str]:
        """The ensemble's labels: the first member's, in its order."""
        return list(self.members[0].labels)

    @property
    def config(self) -> Config:
        """The first member's settings; the audio settings (window length, sample rate) every member
        shares are what the runners read."""
        return self.members[0].config

    @property
    def class_thresholds(self) -> np.ndarray:
        """Per-class detection thresholds: each member's own (tuned or global) per-class thresholds,
        in the ensemble's label order, averaged with the ensemble's weights."""
        stacked = np.stack(
            [m.class_thresholds[order] for m, order in zip(self.members, self.orders, strict=True)]
        )
        return (np.asarray(self.weights)[:, None] * stacked).sum(axis=0).astype(np.float32)

    @property
    def scored_labels(self) -> list[str] | None:
        """The labels any member scores (BirdCLEF 2022 submission), in the ensemble's order."""
        scored = [set(m.scored_labels) for m in self.members if m.scored_labels]
        if not scored:
            return None
        union = set().union(*scored)
        return [label for label in self.labels if label in union]

    @property
    def path(self) -> None:
        """An ensemble has no file of its own (its members do)."""
        return None

    @property
    def backbone(self) -> None:
        """Members with a frozen backbone run it in their own batch functions."""
        return None


@dataclass(frozen=True)
class EnsembleBatchFunction(StagedBatchFunction):
    """The batch function of an ensemble (see :func:`combine`); ``members`` are the members' own."""

    members: tuple[BatchFunction, ...] = ()
    weights: tuple[float, ...] = ()


def looks_like_model_file(path: str | Path) -> bool:
    """Whether a command-line argument is meant as a model (ends in .pt or .onnx): the leading such
    arguments of ``predict`` are the ensemble's members, the rest its inputs. Recordings never end so."""
    return Path(path).suffix.lower() in MODEL_SUFFIXES


def check_member_file(path: str | Path) -> None:
    """Refuse an exported ONNX graph as a member with one line saying what to pass instead."""
    if Path(path).suffix.lower() == ".onnx":
        raise ModelError(
            f"{path}: an exported ONNX graph, not a model file; pass the model file it was exported "
            "from (the onnx engine exports and caches its graph beside it)"
        )


def normalised_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """``weights`` scaled to sum 1 (default: equal); a count other than ``count`` members, a negative
    or non-finite weight, or all zero is a :class:`PredictionError` naming the problem."""
    if weights is None:
        return tuple(1.0 / count for _ in range(count))
    values = [float(w) for w in weights]
    if len(values) != count:
        raise PredictionError(
            f"ensemble weights: {len(values)} weight(s) given for {count} model(s); give one per model"
        )
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise PredictionError(f"ensemble weights must be finite, >= 0 and not all 0, got {values}")
    total = sum(values)
    return tuple(w / total for w in values)


def ensemble_of(models: Sequence[LoadedModel], weights: Sequence[float] | None = None) -> Ensemble:
    """An :class:`Ensemble` of ``models``, checked: same label set (reordered to the first model's
    order where needed) and the same window length and sample rate; one :class:`ModelError` line
    names the member that differs and how."""
    if not models:
        raise PredictionError("an ensemble needs at least one model")
    first = models[0]
    reference = list(first.labels)
    audio = first.config.audio
    orders = []
    for model in models:
        where = model.path or "model"
        labels = list(model.labels)
        if set(labels) != set(reference) or len(labels) != len(reference):
            missing = ", ".join(sorted(set(reference) - set(labels))[:5]) or "none"
            extra = ", ".join(sorted(set(labels) - set(reference))[:5]) or "none"
            detail = f"lacks: {missing}; extra: {extra}"
            raise ModelError(
                f"{where}: its labels differ from {first.path or 'the first model'}'s ({detail}); "
                "ensemble members must share their labels"
            )
        own = model.config.audio
        if own.clip_s != audio.clip_s or own.sample_rate != audio.sample_rate:
            raise ModelError(
                f"{where}: windows of {own.clip_s:g} s at {own.sample_rate} Hz, but "
                f"{first.path or 'the first model'}'s are {audio.clip_s:g} s at {audio.sample_rate} Hz; "
                "ensemble members must share the window grid"
            )
        position = {label: index for index, label in enumerate(labels)}
        orders.append(np.asarray([position[label] for label in reference], dtype=np.int64))
    return Ensemble(list(models), normalised_weights(weights, len(models)), orders)


def load_ensemble(
    paths: Sequence[str | Path], weights: Sequence[float] | None = None, *, build_network: bool = False
) -> Ensemble:
    """Load the model files ``paths`` (see :func:`dawnchorus.models.modelfile.load_model`) and build
    their :func:`ensemble_of`."""
    from dawnchorus.models.modelfile import load_model

    for path in paths:
        check_member_file(path)
    return ensemble_of([load_model(path, build_network=build_network) for path in paths], weights)


def predictor_of(
    models: Sequence[LoadedModel], weights: Sequence[float] | None = None
) -> LoadedModel | Ensemble:
    """One model as itself (its outputs and run tag exactly those of a run without ensembles; a
    ``weights`` of one value is accepted and moot), several as their checked :func:`ensemble_of`."""
    if len(models) == 1:
        normalised_weights(weights, 1)  # a count that does not match is still refused
        return models[0]
    return ensemble_of(models, weights)


def members_of(predictor: LoadedModel | Ensemble) -> list[LoadedModel]:
    """The models of ``predictor``: an ensemble's members, or the one model."""
    return list(predictor.members) if isinstance(predictor, Ensemble) else [predictor]


def as_predictor(
    model: LoadedModel | Ensemble | str | Path | Sequence[LoadedModel | str | Path],
    weights: Sequence[float] | None = None,
) -> LoadedModel | Ensemble:
    """What :func:`dawnchorus.predict` runs: a loaded model or ensemble as given, a model file
    loaded, or a list of them (model files or loaded models) as :func:`predictor_of` makes it.

    Model files are loaded as ``dawnchorus predict`` loads them
    (:func:`~dawnchorus.inference.engines.load_for_prediction`): from the record of a cached graph
    when there is one, so the ONNX engines on a cached graph run without torch."""
    if isinstance(model, str | Path):
        check_member_file(model)
        return load_for_prediction(model)
    if not isinstance(model, Sequence):
        return model
    loaded = []
    for item in model:
        if isinstance(item, str | Path):
            check_member_file(item)
            item = load_for_prediction(item)
        loaded.append(item)
    return predictor_of(loaded, weights)


def ensemble_sha256(member_hashes: Sequence[str], weights: Sequence[float]) -> str:
    """An ensemble's identity: SHA-256 over each member's (model SHA-256, normalised weight), in
    member order; :func:`dawnchorus.inference.run.model_sha256` gives it for an :class:`Ensemble`."""
    members = [[digest, round(float(w), 12)] for digest, w in zip(member_hashes, weights, strict=True)]
    return hashlib.sha256(json.dumps(members).encode()).hexdigest()


# --- running an ensemble ------------------------------------------------------------------------------


def combine(functions: Sequence[BatchFunction], ensemble: Ensemble) -> EnsembleBatchFunction:
    """One batch function from the members' ``functions`` (in ``ensemble.members`` order): every
    member classifies the same audio batch, and the result is ``sum_i w_i p_i`` (float64, each
    member's columns in the ensemble's label order), float32 like every engine's.

    Staged members keep their stages: the ensemble's ``prepare`` runs each member's (e.g. its log-mel)
    in the decoding thread or a lane, its ``classify`` each member's network. It classifies as many
    batches at once as its fewest-laned member (a CUDA or frozen-backbone member: one)."""
    if len(functions) != len(ensemble.members):
        raise PredictionError(f"{len(functions)} batch functions for {len(ensemble.members)} members")
    stages = [
        f if isinstance(f, StagedBatchFunction) else StagedBatchFunction(prepare=None, classify=f)
        for f in functions
    ]
    weights = ensemble.weights
    orders = ensemble.orders
    staged = any(s.prepare is not None for s in stages)

    def prepare(batch: np.ndarray) -> tuple[Any, ...]:
        return tuple(batch if s.prepare is None else s.prepare(batch) for s in stages)

    def classify(inputs: Any) -> np.ndarray:
        each = inputs if staged else [inputs] * len(stages)
        total = None
        for stage, prepared, weight, order in zip(stages, each, weights, orders, strict=True):
            probabilities = np.asarray(stage.classify(prepared), dtype=np.float64)[:, order]
            total = weight * probabilities if total is None else total + weight * probabilities
        return total.astype(np.float32)

    return EnsembleBatchFunction(
        prepare=prepare if staged else None,
        classify=classify,
        lanes=min(s.lanes for s in stages),
        members=tuple(functions),
        weights=tuple(weights),
    )


def predictor_batch_function(
    model: LoadedModel | Ensemble,
    engine: Engine = "torch",
    device: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    lanes: int | None = None,
    include_frontend: bool = False,
) -> BatchFunction:
    """:func:`dawnchorus.inference.engines.batch_function_for` for a model, and for an ensemble the
    :func:`combine` of every member's (same engine, device, threads and lanes)."""
    if not isinstance(model, Ensemble):
        return batch_function_for(model, engine, device, batch_size, threads, lanes, include_frontend)
    functions = [
        batch_function_for(member, engine, device, batch_size, threads, lanes, include_frontend)
        for member in model.members
    ]
    return combine(functions, model)


def describe_predictor(batch_function: BatchFunction) -> dict[str, Any]:
    """:func:`dawnchorus.inference.engines.describe_engine`, and for an ensemble's batch function
    ``{"engine": "ensemble", "members": [each member's description], "weights": [...]}``."""
    if isinstance(batch_function, EnsembleBatchFunction):
        return {
            "engine": "ensemble",
            "members": [describe_engine(f) for f in batch_function.members],
            "weights": list(batch_function.weights),
            "lanes": batch_function.lanes,
        }
    return describe_engine(batch_function)
