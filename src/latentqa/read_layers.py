"""Which target layers a decoder reads: the choice, its default, checked against the target.

Training and steering both take an optional ``read_layers`` option; this is the one
place that turns it into checked, normalised layer indices.
"""

from __future__ import annotations

from collections.abc import Sequence

from latentqa.layers import check_layer_index


def resolve_read_layers(
    layers: Sequence[int] | None, n_layers: int, default: Sequence[int] | None = None
) -> list[int]:
    """The read layers, checked and normalised (a negative index counts from the end).

    Args:
        layers: The layers chosen; ``None``: ``default``.
        n_layers: The target's number of decoder layers.
        default: The layers read when none are chosen (e.g. a trained decoder's own);
            ``None``: half depth (the paper read 15 of 32).

    Raises:
        LatentQAError: A layer is out of range for the target.
    """
    if layers is None:
        layers = [n_layers // 2] if default is None else default
    return [check_layer_index(layer, n_layers, "read layer") for layer in layers]
