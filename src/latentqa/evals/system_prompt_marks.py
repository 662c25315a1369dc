"""Read marks on held-out items: is an answer marked "read" usually the right one?

An answer's evidence is its normalised log-likelihood given the dialog's read minus its
mean over the reference dialogs' reads (:meth:`latentqa.reader.Reader.reference_reads`).
Here the answer is the decoder's multiple-choice pick (the option it finds likeliest),
and the mark is right when that pick is the gold option. The threshold is chosen, on
items of half the labels, as the smallest evidence above which at least
:data:`TARGET_PRECISION` of the marked picks are right; the precision and coverage are
measured on the other half, and the two halves swap (2-fold, split by label, so no
behaviour is both tuned on and scored). ``read_mark_threshold`` is the same rule on all
items: the value to store as a decoder's ``read_threshold``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from latentqa.evals.system_prompt_items import Item

TARGET_PRECISION = 0.8
MIN_MARKED = 3
"""A threshold must mark at least this many calibration items to count."""

ReferenceMeans = Callable[[list[tuple[str, str]]], dict[tuple[str, str], float]]
"""Per ``(question, answer)``, its mean normalised score over the reference reads."""


def pick_evidence(
    reference_means: ReferenceMeans,
    options: Sequence[Sequence[float]],
    items: Sequence[Item],
) -> tuple[list[int], list[float]]:
    """Each item's pick (likeliest option) and its evidence against the references.

    Args:
        reference_means: The picked answers' mean scores over the reference reads
            (:func:`~latentqa.evals.system_prompt_scoring.reference_means`).
        options: Per item, each option's normalised score given the item's read.
        items: The items.
    """
    picks = [max(range(len(row)), key=row.__getitem__) for row in options]
    pairs = sorted({(item.question, item.options[p]) for item, p in zip(items, picks, strict=True)})
    mean = reference_means(pairs)
    evidence = [
        row[p] - mean[(item.question, item.options[p])]
        for row, p, item in zip(options, picks, items, strict=True)
    ]
    return picks, evidence


def margin_gaps(margins: Sequence[Sequence[float]]) -> tuple[list[int], list[float]]:
    """Each item's pick (largest yes/no margin) and its evidence: the pick's margin minus
    the largest margin among the other options.

    Args:
        margins: Per item, each option's yes/no margin (at least two options).
    """
    picks = [max(range(len(row)), key=row.__getitem__) for row in margins]
    gaps = [
        row[p] - max(m for j, m in enumerate(row) if j != p)
        for row, p in zip(margins, picks, strict=True)
    ]
    return picks, gaps


def choose_threshold(evidence: Sequence[float], right: Sequence[bool]) -> float:
    """The smallest threshold whose marks (evidence above it) are right at least
    :data:`TARGET_PRECISION` of the time, marking at least :data:`MIN_MARKED` items;
    ``inf`` (mark nothing) when none is."""
    ranked = sorted(zip(evidence, right, strict=True), reverse=True)
    best = float("inf")
    hits = 0
    for count, (value, ok) in enumerate(ranked, start=1):
        hits += ok
        below = ranked[count][0] if count < len(ranked) else value - 1.0
        # marking the top `count` items: any threshold in [next value, this value)
        if count >= MIN_MARKED and hits / count >= TARGET_PRECISION and below < value:
            best = below
    return best


def read_marks(
    picks: Sequence[int], evidence: Sequence[float], items: Sequence[Item], seed: int
) -> dict[str, float | None]:
    """``read_mark_precision`` and ``read_mark_coverage`` (2-fold by label) and
    ``read_mark_threshold`` (chosen on all items)."""
    right = [p == item.gold_index for p, item in zip(picks, items, strict=True)]
    labels = sorted({item.label for item in items})
    random.Random(f"read-marks:{seed}").shuffle(labels)
    half = set(labels[: len(labels) // 2])
    folds = [[i for i, item in enumerate(items) if (item.label in half) == side] for side in (0, 1)]
    marked = hits = 0
    for tune, test in (folds, folds[::-1]):
        cut = choose_threshold([evidence[i] for i in tune], [right[i] for i in tune])
        chosen = [i for i in test if evidence[i] > cut]
        marked += len(chosen)
        hits += sum(right[i] for i in chosen)
    threshold = choose_threshold(evidence, right)
    return {
        "read_mark_precision": hits / marked if marked else None,
        "read_mark_coverage": marked / len(items),
        "read_mark_threshold": None if threshold == float("inf") else threshold,
    }
