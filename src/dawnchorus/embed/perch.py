"""``perch-v2``: Google Perch 2.0 (32 kHz, 5-s windows, 1536-d embeddings) from a local ONNX file.

The file: ``weights=PATH`` (``--weights PATH`` of train, predict and embed), else
``$DAWNCHORUS_PERCH_V2_ONNX``, else ``perch_v2.onnx`` from the Hugging Face hub
(:func:`hub_weights`: downloaded into the hub's cache on first use when online, that copy afterwards;
offline and not cached, one line says where to get it). Google publishes Perch 2.0 as a TensorFlow
SavedModel (Kaggle: ``google/bird-vocalization-classifier``, variation ``perch_v2``); the ONNX file
perch-hoplite itself loads (``PerchV2OnnxModel``) is the community conversion ``perch_v2.onnx`` in the
Hugging Face repository ``justinchuby/Perch-onnx``. Run by onnxruntime (the ``onnx`` extra).

The graph contract, from public code that runs that file (perch-hoplite's ONNX model, BirdCLEF 2026
notebooks): input ``inputs`` ``(B, 160000)`` float32; outputs ``embedding`` ``(B, 1536)`` and
``label`` ``(B, 14795)`` logits (also ``spatial_embedding``, ``frontend``, unused here). These names
were not checked against the real file here (it was not available offline); so a graph with one
input of another name is fed through that input, and without an ``embedding`` output the 2-D output
of width 1536 is taken. Audio is peak-normalised to 0.25 per window first, as perch-hoplite does
(``target_peak``). Class names come from ``labels.csv`` / ``labels.txt`` beside the file (one name a
line, an optional first header line); without one the model gives embeddings only.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from pathlib import Path

import numpy as np

from dawnchorus.embed.base import EmbeddingModel, EmbeddingOutput, labels_from_lines
from dawnchorus.errors import ModelError
from dawnchorus.io.files import usable_cores

PERCH_LICENCE = "Apache-2.0 (Perch 2.0, Google DeepMind)"
WEIGHTS_ENV = "DAWNCHORUS_PERCH_V2_ONNX"
INPUT_NAME = "inputs"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "label"
TARGET_PEAK = 0.25  # perch-hoplite's TaxonomyModel target_peak
HUB_REPO = "justinchuby/Perch-onnx"  # the file perch-hoplite's PerchV2OnnxModel loads
HUB_FILE = "perch_v2.onnx"
WHERE_TO_GET = (
    "get perch_v2.onnx (Perch 2.0 converted to ONNX: Hugging Face repository justinchuby/Perch-onnx, the "
    "file perch-hoplite loads) and pass it with --weights PATH (train, predict, embed; weights=PATH in "
    f"Python) or set {WEIGHTS_ENV}=PATH"
)


class PerchV2(EmbeddingModel):
    """Perch 2.0 from an ONNX file, through onnxruntime (CPU).

    ``weights``: the ``.onnx`` file (default ``$DAWNCHORUS_PERCH_V2_ONNX``, else the hub's copy:
    :func:`hub_weights`); ``threads``: onnxruntime intra-op threads (default: the usable cores).
    """

    name = "perch-v2"
    version = "2.0"
    sample_rate = 32_000
    window_s = 5.0
    embedding_size = 1536
    licence = PERCH_LICENCE

    def __init__(self, weights: str | Path | None = None, threads: int | None = None) -> None:
        weights = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or hub_weights()
        if weights is None:
            raise ModelError(
                f"perch-v2 needs its weights file, and the Hugging Face hub has none cached and cannot be "
                f"reached (offline?): {WHERE_TO_GET}"
            )
        self.weights_path = Path(weights)
        if not self.weights_path.is_file():
            raise ModelError(f"{self.weights_path}: Perch 2.0 ONNX file not found; {WHERE_TO_GET}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError('perch-v2 needs onnxruntime: pip install "dawnchorus[onnx]"') from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or usable_cores())
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.weights_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unusable graphs
            raise ModelError(f"{self.weights_path}: not a usable ONNX file ({exc})") from None
        inputs = self._session.get_inputs()
        names = [i.name for i in inputs]
        if INPUT_NAME in names:
            self._input = INPUT_NAME
        elif len(inputs) == 1:
            self._input = names[0]
        else:
            raise ModelError(f"{self.weights_path}: expected one input {INPUT_NAME!r}, got {names}")
        outputs = {o.name: o.shape for o in self._session.get_outputs()}
        self._embedding = _pick_embedding(outputs, self.embedding_size)
        if self._embedding is None:
            raise ModelError(
                f"{self.weights_path}: no {EMBEDDING_OUTPUT!r} output of width {self.embedding_size} "
                f"(outputs: {', '.join(outputs)}); not Perch 2.0"
            )
        self._logits = LOGITS_OUTPUT if LOGITS_OUTPUT in outputs else None
        self.labels = None
        if self._logits is not None:
            width = outputs[self._logits][-1]
            self.labels = _labels_beside(self.weights_path, width if isinstance(width, int) else None)
        self._lock = threading.Lock()

    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        """Embeddings ``(B, 1536)`` (and logits where a class list is known) of 5-s windows at 32 kHz."""
        batch = self.check_batch(batch)
        if len(batch) == 0:
            return EmbeddingOutput(np.zeros((0, self.embedding_size), np.float32), None)
        wanted = [self._embedding] + ([self._logits] if self.labels is not None else [])
        with self._lock:
            results = self._session.run(wanted, {self._input: peak_normalise(batch)})
        embeddings = np.asarray(results[0], dtype=np.float32).reshape(len(batch), -1)
        if len(results) == 1:
            return EmbeddingOutput(embeddings, None)
        return EmbeddingOutput(embeddings, np.asarray(results[1], dtype=np.float32).reshape(len(batch), -1))


def hub_weights() -> Path | None:
    """``perch_v2.onnx`` of the Hugging Face repository ``justinchuby/Perch-onnx``: the copy in the
    hub's cache, downloaded there first when online (``huggingface_hub``, which timm installs;
    ``HF_HUB_OFFLINE=1`` never downloads). None when it cannot be had: offline and not cached, the hub
    unreachable, or ``huggingface_hub`` missing. The hub is tried only after a connection to it opens
    within a few seconds (measured here without a network: the hub client's own retries took 25 s
    and printed six warnings before giving up)."""
    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(HUB_REPO, HUB_FILE)
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE or not _reachable(constants.ENDPOINT):
        return None
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE))
    except Exception:  # refused, moved, interrupted: the caller says where to get the file instead
        return None


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # through a proxy: let the hub client try
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def peak_normalise(batch: np.ndarray, target_peak: float = TARGET_PEAK) -> np.ndarray:
    """Scale each window so its largest absolute sample is ``target_peak`` (silent windows stay 0)."""
    peaks = np.abs(batch).max(axis=1, keepdims=True)
    scale = np.where(peaks > 0, target_peak / np.maximum(peaks, 1e-12), 1.0).astype(np.float32)
    return np.ascontiguousarray(batch * scale, dtype=np.float32)


def _pick_embedding(outputs: dict[str, list], size: int) -> str | None:
    if EMBEDDING_OUTPUT in outputs:
        return EMBEDDING_OUTPUT
    for name, shape in outputs.items():
        if len(shape) == 2 and shape[-1] == size:
            return name
    return None


def _labels_beside(weights: Path, width: int | None) -> tuple[str, ...] | None:
    for name in ("labels.csv", "labels.txt"):
        path = weights.with_name(name)
        if path.is_file():
            labels = labels_from_lines(path.read_text(encoding="utf-8").splitlines())
            if width is not None and len(labels) == width + 1:
                labels = labels[1:]  # a header line (Perch's labels.csv starts with its namespace)
            if width is None or len(labels) == width:
                return labels
    return None
