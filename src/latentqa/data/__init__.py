"""LatentQA datasets: the public release format and the project's own built-in dataset.

- :func:`load_latentqa` reads a folder in the public format into a
  :class:`LatentQADataset` of :class:`Behavior` items and their QA pairs.
- :func:`build_dataset` writes the built-in dataset (personas, goals, tones, styles)
  in the same format, with train and held-out splits by label.
- :func:`make_generate` turns a model and tokenizer into the reply generator that
  ``build_dataset`` uses for ``stimulus_completion`` behaviours.

Importing this package is cheap: torch is imported only when ``make_generate`` is
called, and the source packages are read only by ``build_dataset``.
"""

from __future__ import annotations

from latentqa.data.build import build_dataset
from latentqa.data.format import (
    FIELDS,
    KINDS,
    Behavior,
    LatentQADataset,
    QAExample,
    load_latentqa,
)
from latentqa.data.replies import make_generate

__all__ = [
    "FIELDS",
    "KINDS",
    "Behavior",
    "LatentQADataset",
    "QAExample",
    "build_dataset",
    "load_latentqa",
    "make_generate",
]
