"""The learning-rate schedule shared by LIT training and steering."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine down to ``min_ratio``, per optimizer step.

    Args:
        warmup: Steps of linear warmup.
        total: Steps of the whole run (the cosine reaches ``min_ratio`` there).
        min_ratio: The final factor.

    Returns:
        The factor of the base learning rate at each step, for ``LambdaLR``.
    """

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
