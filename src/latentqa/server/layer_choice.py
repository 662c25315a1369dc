"""Which target layers a request reads: checked, each once, and the chart's default.

The page's chart scores an answer with each layer the decoder reads alone. A decoder
without a projector reads any layer; one with a projector has maps for its own read
layers only, so its chart covers those (``readable_layers`` in
:func:`~latentqa.server.host_api.describe_reader`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index
from latentqa.server.schemas import MAX_LAYERS


def check_layer(layer: int, n_layers: int | None) -> int:
    """``layer`` in ``0..n_layers - 1`` (negative counts from the end); unchecked without
    ``n_layers``.

    Raises:
        LatentQAError: Out of range, saying the valid ones.
    """
    return layer if n_layers is None else check_layer_index(layer, n_layers)


def every_layer(described: dict[str, Any]) -> list[int]:
    """The layers a request without ``layers`` scores: each one the decoder reads alone."""
    layers, n_layers = described["readable_layers"], described["n_layers"]
    if layers is None and n_layers is None:
        raise LatentQAError("the reader does not report its number of layers; pass `layers`")
    layers = list(range(n_layers)) if layers is None else layers
    if len(layers) > MAX_LAYERS:
        raise LatentQAError(
            f"the decoder reads {len(layers)} layers and one request scores at most "
            f"{MAX_LAYERS}: pass `layers`, split over several requests"
        )
    return layers


def distinct_layers(layers: Sequence[int], n_layers: int | None) -> list[int]:
    """Checked layers, each once, in the order given, at most :data:`MAX_LAYERS`."""
    distinct = list(dict.fromkeys(check_layer(layer, n_layers) for layer in layers))
    if len(distinct) > MAX_LAYERS:
        raise LatentQAError(
            f"`layers` names {len(distinct)} distinct layers; one request scores at most "
            f"{MAX_LAYERS}: split them over several requests"
        )
    return distinct
