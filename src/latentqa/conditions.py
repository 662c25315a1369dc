"""The real / zeroed / shuffled activation conditions every reading evaluation compares.

A decoder that reads its input should do better with the real vectors than with
zeroed ones (it sees nothing) or shuffled ones (it sees another label's
activations); the gap is the evidence that it reads.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

import torch

CONDITIONS = ("real", "zeroed", "shuffled")


def other_label_picks(labels: Sequence[Hashable], seed: int) -> list[int]:
    """For each item, a seeded random item with another label (the next item if none has).

    Args:
        labels: Each item's label (a behaviour, a fact's subject).
        seed: The draw is ``random.Random(seed + 1)``, apart from the seed's other uses.

    Returns:
        One index into ``labels`` per item.
    """
    rng = random.Random(seed + 1)
    picks = []
    for i, label in enumerate(labels):
        choices = [j for j, other in enumerate(labels) if other != label]
        picks.append(rng.choice(choices) if choices else (i + 1) % len(labels))
    return picks


def activation_conditions(
    vectors: Sequence[torch.Tensor],
    labels: Sequence[Hashable] | None = None,
    seed: int = 0,
    *,
    shuffled: Sequence[torch.Tensor] | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Each item's vectors under every condition of :data:`CONDITIONS`.

    Args:
        vectors: The real vectors, one tensor per item.
        labels: Each item's label, for the shuffled condition (see
            :func:`other_label_picks`).
        seed: Seed of the shuffle.
        shuffled: The shuffled condition's vectors, when the caller draws them itself
            (training fetches the partners' vectors from its activation source).

    Returns:
        ``{"real", "zeroed", "shuffled"}``, each a list with one tensor per item;
        zeroed vectors have the real ones' shapes and dtypes.
    """
    if shuffled is None:
        if labels is None:
            raise ValueError("activation_conditions needs labels or shuffled vectors")
        shuffled = [vectors[j] for j in other_label_picks(labels, seed)]
    return {
        "real": list(vectors),
        "zeroed": [torch.zeros_like(v) for v in vectors],
        "shuffled": list(shuffled),
    }
