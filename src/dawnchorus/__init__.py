"""dawnchorus: bird-sound classifiers from short clips, species detection in long field recordings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dawnchorus.modelfile import LoadedModel


def load_model(path: Any, device: str = "cpu") -> LoadedModel:
    """Restore a model file written by ``dawnchorus train`` with no other input."""
    from dawnchorus.modelfile import load_model as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_model"]
