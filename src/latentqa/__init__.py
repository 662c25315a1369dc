"""latentqa: read a language model's activations in plain English, and steer with them.

The top-level names are imported lazily so that ``import latentqa`` (and the CLI's
``--help``) stays fast; torch and transformers load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentqa.errors import LatentQAError

if TYPE_CHECKING:
    from latentqa.models import load_model
    from latentqa.reader import Reader
    from latentqa.train import TrainConfig, train

__version__ = "0.1.0"
__all__ = ["LatentQAError", "Reader", "TrainConfig", "__version__", "load_model", "train"]

_LAZY = {
    "Reader": "latentqa.reader",
    "load_model": "latentqa.models",
    "TrainConfig": "latentqa.train",
    "train": "latentqa.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentqa' has no attribute {name!r}")
