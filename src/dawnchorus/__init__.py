"""dawnchorus: bird-sound classifiers from short clips, species detection in long field recordings.

The public API: :func:`load_model`, :func:`predict`, :func:`train` and the error classes (all on
:class:`DawnchorusError`). Heavy imports (torch, Lightning) wait until a function is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dawnchorus.errors import *  # noqa: F403 - the error classes are public API
from dawnchorus.errors import __all__ as _error_names
from dawnchorus.version import __version__

if TYPE_CHECKING:
    import pandas as pd

    from dawnchorus.config import Config, PredictSettings
    from dawnchorus.inference.ensemble import Ensemble
    from dawnchorus.models.modelfile import LoadedModel
    from dawnchorus.training.result import TrainResult


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Restore a model file written by ``dawnchorus train`` with no other input."""
    from dawnchorus.models.modelfile import load_model as _load

    return _load(path, device=device)


def predict(
    model: LoadedModel | str | Path | list[LoadedModel | str | Path],
    paths: Any,
    settings: PredictSettings | None = None,
    *,
    weights: str | Path | Sequence[str | Path] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Per-window probabilities of ``paths`` (files, folders), indexed by (file, start_s, end_s).

    ``model`` is a loaded model or a model file, or a list of them: an ensemble sharing labels,
    averaged per window with ``ensemble_weights`` (default equal). ``settings`` (a
    :class:`~dawnchorus.config.PredictSettings`) and ``options`` (any of its fields: ``hop_s=2.5``,
    ``batch_size=8``, ``engine="torch"``, ``device="cuda"``..., validated like the settings) choose
    how it runs; the defaults are those of ``dawnchorus predict``, and so is the way it runs: a model
    file with a graph cached by the ONNX engine is restored from that graph's record (the ``onnx``
    and ``onnx-int8`` engines then run without importing torch), and ``engine="onnx-int8"`` with no
    int8 graph yet calibrates one on ``paths``.

    ``weights``: for a model on a frozen backbone (``train --backbone birdnet`` / ``perch-v2``), the
    backbone's weights file, or a list of them, as ``dawnchorus predict --weights FILE``: each file's
    SHA-256 is checked against the one the model file records, and every member with that hash runs on
    it (one file can serve several ensemble members; a BirdNET and a Perch member take one each).
    Default: the file the model was trained with if still there, else the backbone's own. A missing
    file, a file no model records, or weights for a fine-tuned CNN raise one-line
    :class:`~dawnchorus.errors.ModelError`. Models passed in loaded are not changed.
    """
    from dawnchorus.config import build_predict_settings
    from dawnchorus.inference.ensemble import as_predictor
    from dawnchorus.inference.run import predict_frame

    if options:
        base = settings.model_dump() if settings is not None else {}
        settings = build_predict_settings({**base, **options}, source="predict() options")
    # Model files are loaded as `dawnchorus predict` loads them: from a cached graph's record where
    # there is one, the network built (and torch imported) only if the engine runs it.
    predictor = as_predictor(model, settings.ensemble_weights if settings is not None else None)
    if weights is not None:
        predictor = _on_backbone_weights(predictor, weights)
    if settings is not None and settings.engine == "onnx-int8":  # as the CLI: calibrated on `paths`
        from dawnchorus.inference.ensemble import members_of
        from dawnchorus.inference.quantise import prepare_int8

        prepare_int8(members_of(predictor), [paths] if isinstance(paths, str | Path) else list(paths))
    return predict_frame(predictor, paths, settings)


def _on_backbone_weights(
    predictor: LoadedModel | Ensemble, weights: str | Path | Sequence[str | Path]
) -> LoadedModel | Ensemble:
    """``predictor`` with its frozen-backbone models running on the backbone weights files ``weights``
    (:func:`~dawnchorus.inference.frozen.use_backbone_weights`, as ``predict --weights``), on copies of
    its models, so a model the caller loaded keeps its own settings."""
    import copy
    import dataclasses
    import os

    from dawnchorus.errors import PredictionError
    from dawnchorus.inference.ensemble import Ensemble, members_of
    from dawnchorus.inference.frozen import use_backbone_weights

    files = [weights] if isinstance(weights, str | os.PathLike) else list(weights)
    if not all(isinstance(file, str | os.PathLike) for file in files):
        raise PredictionError(
            f"weights: backbone weights files (a path or a list of paths), got {weights!r}; an ensemble's "
            "weights are ensemble_weights="
        )
    copies = []
    for member in members_of(predictor):
        own = copy.copy(member)
        own.config = member.config.model_copy(deep=True)
        copies.append(own)
    use_backbone_weights(copies, files)
    if isinstance(predictor, Ensemble):
        return dataclasses.replace(predictor, members=copies)
    return copies[0]


def train(data: str | Path, out: str | Path, config: Config | None = None, **options: Any) -> TrainResult:
    """Train on a data set (BirdCLEF layout or a folder per species) and write ``out/model.pt``."""
    from dawnchorus.config import Config
    from dawnchorus.training.run import train as _train

    return _train(data, out, config or Config(), **options)


__all__ = ["__version__", "load_model", "predict", "train", *_error_names]
