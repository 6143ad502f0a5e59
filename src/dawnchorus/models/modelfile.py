"""The self-contained model file: weights, labels, settings, thresholds and the package version.

:func:`save_model_file` writes it, :func:`load_model` restores it with no other input into a
:class:`LoadedModel`. A model on a frozen pretrained backbone (``train --backbone birdnet``) holds
its head's weights and the backbone's record (name, version, SHA-256 of its weights: a
:class:`~dawnchorus.embed.base.BackboneInfo` as plain data), never the backbone's weights; the
inference layer builds that backbone and checks it against the record. A model calibrated on reviewed
detections (``dawnchorus calibrate``) holds a ``calibration`` entry: per label, the slope and
intercept of ``P(true detection) = sigmoid(slope * logit(score) + intercept)`` (plain numbers, see
:data:`CALIBRATION_METHOD`); files without it load as before.

This module owns only the file format; the network it holds is built by
:mod:`dawnchorus.models.classifier`, and prediction lives in :mod:`dawnchorus.inference`. It does
not import Lightning, and imports timm only when a timm network is built: ``load_model(path,
build_network=False)`` reads the file's settings and weights and leaves the network to its first
use, so ``predict`` with the ONNX engine and a cached graph (and every dask worker running it) starts
without timm and torchvision. torch itself is imported only to read or write the file (a torch
archive) and to build a network: :func:`read_record` gives a file's entries without its weights as
plain data (stored with an exported graph), and :func:`model_from_record` restores a
:class:`LoadedModel` from them without torch, reading the weights from the file on first use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from dawnchorus.config import DEFER_BACKBONE_CHECK, Config
from dawnchorus.errors import ModelError, ModelFileError
from dawnchorus.io.files import atomic_write
from dawnchorus.version import __version__

if TYPE_CHECKING:  # torch and the networks: imported where they are used
    import torch

    from dawnchorus.models.classifier import SpectrogramClassifier
    from dawnchorus.models.embedding_classifier import EmbeddingClassifier
    from dawnchorus.models.features import LogMel

MODEL_FORMAT = "dawnchorus-model"
MODEL_FORMAT_VERSION = 1
# The entries every model file holds, and what each must be (format_version 1 on).
REQUIRED_ENTRIES: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "labels": (list, tuple),
    "config": (str,),
    "thresholds": (dict,),
    "state_dict": (dict,),
}
# The one calibration a model file holds so far (dawnchorus.evaluate.calibration.LogisticCalibration).
CALIBRATION_METHOD = "logistic-logit"


@dataclass
class LoadedModel:
    """A trained model restored from its file: everything ``predict`` needs.

    ``backbone`` is None for a fine-tuned timm model (``network`` a :class:`SpectrogramClassifier`:
    audio in); for a head on a frozen pretrained backbone it is that backbone's record (plain data)
    and ``network`` an :class:`EmbeddingClassifier` (embeddings in).

    A model loaded with ``load_model(path, build_network=False)`` holds its stored weights
    (``stored_state``) and builds its timm network on the first use of :attr:`network` (which then
    raises what loading would have: a backbone the installed timm lacks, weights that do not fit);
    :attr:`frontend` gives the log-mel frontend without building it. One restored by
    :func:`model_from_record` holds neither and reads the weights from :attr:`path` then.
    """

    built_network: SpectrogramClassifier | EmbeddingClassifier | None
    labels: list[str]
    config: Config
    thresholds: dict[str, Any] = field(default_factory=lambda: {"global": 0.5, "per_class": None})
    scored_labels: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    backbone: dict[str, Any] | None = None
    stored_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    device: str | torch.device = "cpu"
    calibration: dict[str, Any] | None = None  # see calibration_entry; None: not calibrated
    _frontend: LogMel | None = field(default=None, init=False, repr=False)

    @property
    def network(self) -> SpectrogramClassifier | EmbeddingClassifier:
        """The network, in eval mode on :attr:`device`; built from the stored weights on first use."""
        if self.built_network is None:
            if self.stored_state is None and self.path is not None and Path(self.path).is_file():
                self.stored_state = _read_payload(Path(self.path))["state_dict"]  # model_from_record
            if self.stored_state is None:
                raise ModelError(f"{self.path or 'model'}: neither a network nor stored weights to build one")
            self.built_network = _spectrogram_classifier(
                self.config, self.labels, self.stored_state, self.path or Path("model"), self._frontend
            )
            self.built_network.eval().to(self.device)
            self.stored_state = None
        return self.built_network

    @property
    def network_is_built(self) -> bool:
        """Whether :attr:`network` has been built (always, unless loaded with ``build_network=False``)."""
        return self.built_network is not None

    @property
    def frontend(self) -> LogMel:
        """The log-mel frontend of a timm model (on CPU, eval mode), without building its network.

        Built from the stored settings exactly as the network builds it (the frontend has no
        stored weights); the network's own once the network is built."""
        if self.backbone is not None:
            raise ModelError(f"{self.path or 'model'}: a head on a frozen backbone has no log-mel frontend")
        if self.built_network is not None:
            return self.built_network.frontend
        if self._frontend is None:
            from dawnchorus.models.features import LogMel

            self._frontend = LogMel.from_settings(self.config.audio, self.config.frontend).eval()
        return self._frontend

    @property
    def class_thresholds(self) -> np.ndarray:
        """One threshold per label: the tuned per-class ones, else the global one."""
        per_class = self.thresholds.get("per_class")
        if per_class is not None:
            return np.asarray(per_class, dtype=np.float32)
        return np.full(len(self.labels), float(self.thresholds.get("global", 0.5)), dtype=np.float32)

    @property
    def calibration_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(slopes, intercepts), one per label (NaN for a label without a calibration), or None
        when the model has no calibration."""
        if not self.calibration:
            return None
        fitted = self.calibration["labels"]
        slopes = np.array([fitted[label]["slope"] if label in fitted else np.nan for label in self.labels])
        intercepts = np.array(
            [fitted[label]["intercept"] if label in fitted else np.nan for label in self.labels]
        )
        return slopes, intercepts

    def save(self, path: str | Path | None = None) -> Path:
        """Write the model file (atomically)."""
        target = Path(path or self.path)
        save_model_file(
            target,
            self.network,
            self.labels,
            self.config,
            thresholds=self.thresholds,
            scored_labels=self.scored_labels,
            metadata=self.metadata,
            backbone=self.backbone,
            calibration=self.calibration,
        )
        return target


def save_model_file(
    path: str | Path,
    network: SpectrogramClassifier | EmbeddingClassifier,
    labels: list[str],
    config: Config,
    thresholds: dict[str, Any] | None = None,
    scored_labels: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    backbone: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """One file: weights, labels, settings, thresholds, package version. Written atomically.

    ``backbone``: the record of the frozen backbone an :class:`EmbeddingClassifier` runs on
    (``BackboneInfo.as_dict()``: str, int and float values only); stored as plain data.
    ``calibration``: see :func:`calibration_entry` (checked before anything is written).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    thresholds = thresholds or {"global": 0.5, "per_class": None}
    per_class = thresholds.get("per_class")
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": list(labels),
        "scored_labels": list(scored_labels) if scored_labels else None,
        "config": json.dumps(config.model_dump(mode="json")),
        "thresholds": {
            "global": float(thresholds.get("global", 0.5)),
            "per_class": [float(t) for t in per_class] if per_class is not None else None,
        },
        "metadata": json.dumps(metadata or {}),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in network.classifier.state_dict().items()},
    }
    if backbone is not None:
        payload["backbone"] = _plain_record(dict(backbone), path)
    if calibration is not None:
        payload["calibration"] = calibration_entry(calibration, list(labels), path)

    def write(temporary: Path) -> None:
        # Through a file object: a full disk is then an OSError (ENOSPC) that atomic_write names,
        # where torch.save to a path reports only "file write failed".
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)

    return atomic_write(path, write)


def load_model(
    path: str | Path, device: str | torch.device = "cpu", *, build_network: bool = True
) -> LoadedModel:
    """Restore a model file with no other input (weights-only unpickling: safe on untrusted files).

    A file that cannot be read as a model file, or lacks an entry one holds, is a
    :class:`ModelFileError` naming the file and the problem in one line; nothing stored in it runs.

    ``build_network=False`` checks the file, its settings and labels but builds the timm network
    (importing timm) only on the first use of :attr:`LoadedModel.network`, which raises then what
    would otherwise be raised here: the backbone the installed timm lacks, weights that do not fit
    the settings. ``predict`` loads so: with the ONNX engine and a graph cached for this very file
    (same SHA-256) the network is never built. A head on a frozen backbone is always built here (no
    timm in it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return _model_from_payload(path, _read_payload(path), device, build_network)


def read_record(path: str | Path) -> dict[str, Any]:
    """A model file's entries except its weights, as plain data (JSON-serialisable: str, int, float,
    lists, dicts, None): what :func:`model_from_record` restores a model from. Read as
    :func:`load_model` reads (weights-only; a damaged file is a :class:`ModelFileError`). A model on
    a frozen backbone has no record (its backbone's weights are found when it is built)."""
    path = Path(path)
    payload = _read_payload(path)
    if payload.get("backbone") is not None:
        raise ModelFileError(f"{path}: a head on a frozen backbone has no record without its weights")
    record = {key: value for key, value in payload.items() if key != "state_dict"}
    return json.loads(json.dumps(record))  # plain data, or a TypeError naming what is not


def model_from_record(path: str | Path, record: Any) -> LoadedModel:
    """The :class:`LoadedModel` of the model file ``path`` from its :func:`read_record` (kept with a
    graph exported from these very bytes), without torch: checked as :func:`load_model` checks the
    file (a record that is not one is a :class:`ModelFileError`); the weights are read from ``path``
    on the first use of :attr:`LoadedModel.network`. The caller vouches that ``record`` is this
    file's (a graph keeps the file's SHA-256 beside it)."""
    path = Path(path)
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: the stored record of this model file is not one")
    if record.get("backbone") is not None:
        raise ModelFileError(f"{path}: a head on a frozen backbone is not restored from a record")
    _check_entries(path, record, {k: v for k, v in REQUIRED_ENTRIES.items() if k != "state_dict"})
    return _model_from_payload(path, record, "cpu", build_network=False)


def _model_from_payload(
    path: Path, payload: dict[str, Any], device: str | torch.device, build_network: bool
) -> LoadedModel:
    if payload["format_version"] > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format {payload['format_version']} is newer than this dawnchorus "
            f"({__version__}) reads; upgrade dawnchorus"
        )
    try:
        stored_config = json.loads(payload["config"])
        metadata = json.loads(payload.get("metadata") or "{}")
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: damaged model file: its settings are not valid JSON ({exc})") from None
    backbone = payload.get("backbone")
    config = _portable_config(stored_config, path, check_backbone=build_network and backbone is None)
    labels = list(payload["labels"])
    network: SpectrogramClassifier | EmbeddingClassifier | None = None
    if backbone is not None:
        backbone = _plain_record(backbone, path)
        network = _embedding_classifier(backbone, config, len(labels), path)
        _load_weights(network.classifier, payload["state_dict"], len(labels), path)
        network.eval().to(device)
    model = LoadedModel(
        built_network=network,
        labels=labels,
        config=config,
        thresholds=dict(payload["thresholds"]),
        scored_labels=payload.get("scored_labels"),
        metadata=metadata,
        path=path,
        backbone=backbone,
        stored_state=payload.get("state_dict") if network is None else None,
        device=device,
        calibration=calibration_entry(payload.get("calibration"), labels, path),
    )
    if build_network:
        model.network  # noqa: B018 - built now: its problems are raised by load_model
    return model


def calibration_entry(entry: Any, labels: list[str], path: Path) -> dict[str, Any] | None:
    """A model file's ``calibration`` entry as plain data, checked: ``{"method": "logistic-logit",
    "target_precision": float or None, "labels": {label: {"slope": > 0, "intercept": float, "n":
    int}}}`` for labels of the model. None stays None; anything else is a :class:`ModelFileError`
    naming the file (a newer dawnchorus's method too: refused, never guessed at)."""
    if entry is None:
        return None
    problem = f"{path}: damaged model file: its 'calibration' entry"
    if not isinstance(entry, dict) or not isinstance(entry.get("labels"), dict):
        raise ModelFileError(f"{problem} is not a calibration")
    if entry.get("method") != CALIBRATION_METHOD:
        raise ModelFileError(
            f"{path}: calibration method {entry.get('method')!r} is not one this dawnchorus "
            f"({__version__}) reads ({CALIBRATION_METHOD}); upgrade dawnchorus"
        )
    target = entry.get("target_precision")
    if target is not None and not _finite(target):
        raise ModelFileError(f"{problem} has a target precision that is not a number")
    fitted: dict[str, dict[str, float | int]] = {}
    for label, values in entry["labels"].items():
        if label not in labels:
            raise ModelFileError(f"{problem} names {label!r}, not a label of the model")
        if not isinstance(values, dict) or not all(_finite(values.get(k)) for k in ("slope", "intercept")):
            raise ModelFileError(f"{problem} for {label!r} lacks a numeric slope and intercept")
        if not values["slope"] > 0:
            raise ModelFileError(f"{problem} for {label!r} has a slope <= 0")
        n = values.get("n", 0)
        fitted[label] = {
            "slope": float(values["slope"]),
            "intercept": float(values["intercept"]),
            "n": int(n) if _finite(n) else 0,
        }
    return {
        "method": CALIBRATION_METHOD,
        "target_precision": None if target is None else float(target),
        "labels": fitted,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def load_refusal(exc: Exception) -> tuple[str | None, str]:
    """What a weights-only :func:`torch.load` found wrong with a file: (the Python object it refused
    to call, or None; its diagnosis in one line).

    PyTorch's message goes on to advise loading the file again without the weights-only restriction;
    for a crafted file that is the exploit, so only the diagnosis is kept.
    """
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:  # weights-only refusals: the diagnosis follows the marker, then advice
        detail = text.split(marker, 1)[1].strip()
        first = _first_sentence(detail.splitlines()[0]) if detail else "not a weights-only pickle"
        found = re.match(r"Unsupported global: GLOBAL (\S+)", first)
        return (found.group(1) if found else None), f"not a weights-only pickle: {first}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return None, _first_sentence(lines[0]) if lines else type(exc).__name__


def _read_payload(path: Path) -> dict[str, Any]:
    """The unpickled dictionary of a model file, checked for the entries :func:`load_model` reads.

    Unpickling is weights-only: a file holding any other Python object is refused before it is
    built, so nothing in it runs. PyTorch's own message then advises retrying without that
    restriction, which for a crafted file is the exploit: only its diagnosis is kept.
    """
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a model file"
        raise ModelFileError(f"{path}: {_unpickling_problem(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a dawnchorus model file (no '{MODEL_FORMAT}' format mark)")
    _check_entries(path, payload, REQUIRED_ENTRIES)
    return payload


def _check_entries(path: Path, payload: dict[str, Any], required: dict[str, tuple[type, ...]]) -> None:
    for key, kinds in required.items():
        if key not in payload:
            raise ModelFileError(f"{path}: damaged model file: it has no {key!r} entry")
        if not isinstance(payload[key], kinds) or isinstance(payload[key], bool):
            raise ModelFileError(
                f"{path}: damaged model file: its {key!r} entry is a {type(payload[key]).__name__}, "
                f"not a {' or '.join(kind.__name__ for kind in kinds)}"
            )
    labels = payload["labels"]
    if not labels or not all(isinstance(label, str) and label for label in labels):
        raise ModelFileError(f"{path}: damaged model file: its 'labels' entry is not a list of label names")


def _unpickling_problem(exc: Exception) -> str:
    """Why :func:`torch.load` refused a model file, without its advice to load it unsafely."""
    pickled_object, diagnosis = load_refusal(exc)
    if pickled_object is not None:
        return (
            f"unsafe file, refused: it holds a pickled Python object ({pickled_object}) that unpickling "
            "would call, and a dawnchorus model file holds only tensors and plain data; nothing in it ran"
        )
    return f"not a dawnchorus model file ({diagnosis})"


def _first_sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")


def _portable_config(stored: dict[str, Any], path: Path, check_backbone: bool = True) -> Config:
    """The stored settings, minus machine-specific paths that need not exist where the model is used.

    Settings this installation cannot use raise :class:`ModelFileError` naming the file; with
    ``check_backbone`` above all a backbone the installed timm does not have (a model trained with a
    newer timm), checked before the settings themselves.
    """
    stored = json.loads(json.dumps(stored))
    stored.setdefault("model", {}).update({"pretrained": False, "weights": None})
    stored.setdefault("augment", {})["noise_dir"] = None
    stored.setdefault("train", {})["cache_dir"] = None
    if isinstance(stored.get("embedding"), dict):
        stored["embedding"]["weights"] = None
    if check_backbone:
        _check_timm_backbone(stored["model"].get("backbone"), path)
    try:
        return Config.model_validate(stored, context={DEFER_BACKBONE_CHECK: not check_backbone})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
        )
        raise ModelFileError(
            f"{path}: settings stored in the model file are not valid for dawnchorus {__version__}: "
            f"{problems}"
        ) from None


def _plain_record(record: Any, path: Path) -> dict[str, Any]:
    """A backbone record as plain data (str keys; str, int, float values) with the fields a model
    needs; anything else is a :class:`ModelFileError` naming the file."""
    if not isinstance(record, dict) or not all(
        isinstance(key, str) and isinstance(value, str | int | float) and not isinstance(value, bool)
        for key, value in record.items()
    ):
        raise ModelFileError(f"{path}: damaged model file: its 'backbone' entry is not a backbone record")
    for key, kind in (("name", str), ("embedding_size", int), ("weights_sha256", str)):
        if not isinstance(record.get(key), kind):
            raise ModelFileError(f"{path}: damaged model file: its backbone record has no {key!r}")
    return dict(record)


def _embedding_classifier(
    backbone: dict[str, Any], config: Config, num_classes: int, path: Path
) -> EmbeddingClassifier:
    from dawnchorus.models.embedding_classifier import EmbeddingClassifier

    try:
        return EmbeddingClassifier(
            int(backbone["embedding_size"]), num_classes, config.embedding.head, config.model.drop_rate
        )
    except ModelError as exc:
        raise ModelFileError(f"{path}: damaged model file: {exc}") from None


def _check_timm_backbone(backbone: Any, path: Path) -> None:
    """A backbone name the installed timm does not have is a :class:`ModelFileError` naming the file."""
    import timm

    if isinstance(backbone, str) and not timm.is_model(backbone):
        raise ModelFileError(
            f"{path}: the model's backbone {backbone!r} is not in the installed timm {timm.__version__}; "
            f"install the timm version the model was trained with (or a newer one)"
        )


def _spectrogram_classifier(
    config: Config,
    labels: list[str],
    state: dict[str, torch.Tensor],
    path: Path,
    frontend: LogMel | None = None,
) -> SpectrogramClassifier:
    """The timm network of a model file (log-mel frontend + classifier) with its stored weights.

    ``frontend``: one already built from the same settings (reused, so a frontend handed out before
    the network was built stays the network's)."""
    from dawnchorus.models.classifier import SpectrogramClassifier, build_model
    from dawnchorus.models.features import LogMel

    _check_timm_backbone(config.model.backbone, path)
    classifier = build_model(config.model, len(labels))
    _load_weights(classifier, state, len(labels), path)
    frontend = frontend or LogMel.from_settings(config.audio, config.frontend)
    return SpectrogramClassifier(frontend, classifier, channels_last=False)


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], labels: int, path: Path) -> None:
    """Load stored weights; weights that do not fit the network are a :class:`ModelFileError`."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first names only the network class
        raise ModelFileError(
            f"{path}: damaged model file: its weights do not fit its settings and {labels} labels "
            f"({detail[:200]})"
        ) from None
