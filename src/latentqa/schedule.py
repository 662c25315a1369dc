"""The seeded schedules shared by LIT training and steering: examples and learning rate.

Which example each step sees is a pure function of the seed and the stream position,
so a resumed run recomputes the same batches from its step count alone; the learning
rate is a pure function of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def _units(
    order: list[int], dialogs: Sequence[int] | None, share: int, generator: torch.Generator
) -> list[list[int]]:
    """Cut the shuffled ``order`` into units of up to ``share`` examples of one dialog,
    in shuffled order: a dialog's units land apart, so which dialogs meet in a batch
    stays random. Without sharing, one unit per example and no extra random draw (the
    order is the one runs had before sharing existed)."""
    if dialogs is None or share <= 1:
        return [[i] for i in order]
    by_dialog: dict[int, list[int]] = {}
    for i in order:
        by_dialog.setdefault(dialogs[i], []).append(i)
    units = [
        members[j : j + share]
        for members in by_dialog.values()
        for j in range(0, len(members), share)
    ]
    return [units[u] for u in torch.randperm(len(units), generator=generator).tolist()]


def epoch_permutation(
    n: int,
    seed: int,
    epoch: int,
    lengths: Sequence[int] | None = None,
    group: int = 1,
    dialogs: Sequence[int] | None = None,
    share: int = 1,
) -> list[int]:
    """The shuffled example order of one epoch, a pure function of its arguments.

    With ``lengths``, each window of about ``32 * group`` shuffled examples is sorted
    by length, cut into batches of ``group`` and the batches shuffled again: a batch
    then holds examples of similar length (a quarter of a random batch was padding),
    while which examples share a window stays random. With ``dialogs`` (each example's
    dialog) and ``share`` > 1, up to ``share`` examples of one dialog are kept next to
    each other, so a batch can compute their read once
    (:mod:`latentqa.decoder.packing`); every example still appears once per epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    units = _units(order, dialogs, share, generator)
    if lengths is None or group <= 1:
        return [i for unit in units for i in unit]
    window, grouped = 32 * group, []
    start = 0
    while start < len(units):
        # Units up to about `window` examples, sorted by length, as one flat run.
        end, size = start, 0
        while end < len(units) and size < window:
            size += len(units[end])
            end += 1
        ranked = sorted(units[start:end], key=lambda unit: max(lengths[i] for i in unit))
        chunk = [i for unit in ranked for i in unit]
        batches = [chunk[i : i + group] for i in range(0, len(chunk), group)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            grouped += batches[b]
        start = end
    return grouped


def example_order(
    n: int,
    seed: int,
    positions: range,
    lengths: Sequence[int] | None = None,
    group: int = 1,
    dialogs: Sequence[int] | None = None,
    share: int = 1,
) -> list[int]:
    """Example indices at stream ``positions``: epoch after epoch, each freshly shuffled.

    The data position of a run is just its step count: resuming recomputes the same
    order (see :func:`epoch_permutation` for the other arguments).
    """
    perms: dict[int, list[int]] = {}
    out = []
    for position in positions:
        epoch, offset = divmod(position, n)
        if epoch not in perms:
            perms[epoch] = epoch_permutation(n, seed, epoch, lengths, group, dialogs, share)
        out.append(perms[epoch][offset])
    return out


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
