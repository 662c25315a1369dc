"""``latentqa eval system-prompt --pooled``: picks pooled over a hidden prompt's dialogs.

The held-out set has several dialogs per behaviour (other user turns under the same
hidden system prompt), as an auditor of a deployment has several conversations. The
pooled measure gives every dialog of a label the options of the label's first item and
picks, per label, the option whose yes/no margins summed over the label's dialogs are
largest (:func:`latentqa.picks.choice_from_scores`). It is a measure per hidden prompt,
not per dialog (fewer and coarser units: 59 labels on the shipped set), and it costs one
more scoring pass per decoder method (less the rows of the first items, scored by the
method already), so it is opt-in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from latentqa.evals.system_prompt_items import Item
from latentqa.evals.system_prompt_scoring import RunScores, item_scores
from latentqa.picks import choice_from_scores

if TYPE_CHECKING:
    from latentqa.reader import Reader

POOLED = "mc_yes_no_pooled"
"""The measure's key: the share of labels whose pooled pick is their own behaviour."""
POOLED_LABELS = "pooled_labels"
"""How many labels (hidden prompts) the pooled measure counts."""


def shared_options(items: Sequence[Item]) -> list[Item]:
    """``items`` with each label's options (and gold index) those of its first item."""
    first: dict[str, Item] = {}
    for item in items:
        first.setdefault(item.label, item)
    return [
        replace(item, options=first[item.label].options, gold_index=first[item.label].gold_index)
        for item in items
    ]


def pooled_accuracy(items: Sequence[Item], margins: Sequence[Sequence[float]]) -> float:
    """The share of labels whose summed margins pick their gold option; ``items`` share
    their label's options (:func:`shared_options`), ``margins`` is per item."""
    by_label: dict[str, list[list[float]]] = {}
    first: dict[str, Item] = {}
    for item, row in zip(items, margins, strict=True):
        by_label.setdefault(item.label, []).append(list(row))
        first.setdefault(item.label, item)
    right = 0
    for label, rows in by_label.items():
        choice = choice_from_scores(list(first[label].options), rows)
        right += choice.pooled_pick == first[label].gold_index
    return right / len(by_label)


def pooled_measures(
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    zeroed: RunScores,
    desc: str,
) -> dict[str, float]:
    """``{POOLED: accuracy, POOLED_LABELS: n}`` of one decoder method's reads."""
    shared = shared_options(items)
    scored = item_scores(
        reader, vectors, shared, zeroed, f"{desc} pooled", yes_no=False, likelihood=False
    )
    labels = len({item.label for item in items})
    return {POOLED: pooled_accuracy(shared, scored.option_margins), POOLED_LABELS: labels}
