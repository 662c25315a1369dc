"""The decoder's open answers on held-out items: their win rate, and their read marks.

``latentqa read`` and the web page mark an open answer "read" when its evidence (its
mean log-likelihood per token given the dialog's read minus its mean over the 16
reference dialogs' reads, :func:`latentqa.scoring.evidence_rows`) exceeds the decoder's
``read_threshold``. :func:`open_marks` calibrates that threshold on held-out items, as
:mod:`~latentqa.evals.system_prompt_marks` does for the multiple-choice picks: an open
answer counts as right when, among the item's options, its sentence embedding is nearest
the gold one (chance 1 in 5), and the threshold is the smallest evidence above which at
least 80% of the marked answers are right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentqa.evals.embed import embedder
from latentqa.evals.system_prompt_items import Item
from latentqa.evals.system_prompt_marks import read_marks
from latentqa.evals.system_prompt_scoring import reference_means, score_rows
from latentqa.reader import Reader

OPEN_MARKS = (
    "open_mark_precision",
    "open_mark_coverage",
    "open_mark_threshold",
    "open_evidence_max",
)
"""The measures of :func:`open_marks` (``lit`` only, with ``--open-marks``)."""


def open_win_rate(answers: Sequence[str], items: Sequence[Item]) -> float:
    """How often an answer's embedding is closer to the gold answer's than to the
    item's distractor's (chance 0.5)."""
    model = embedder()
    a = model.embed(list(answers))
    gold = model.embed([item.gold for item in items])
    other = model.embed([item.distractor for item in items])
    wins = ((a * gold).sum(-1) > (a * other).sum(-1)).float()
    return float(wins.mean())


def nearest_options(answers: Sequence[str], items: Sequence[Item]) -> list[int]:
    """Per item, the index of the option whose sentence embedding is nearest its answer."""
    model = embedder()
    said = model.embed(list(answers))  # [n_items, d]
    options = model.embed([o for item in items for o in item.options])  # [n_options, d]
    picks, at = [], 0
    for row, item in zip(said, items, strict=True):
        width = len(item.options)
        picks.append(int((options[at : at + width] @ row).argmax()))
        at += width
    return picks


def open_evidence(
    reader: Reader, vectors: Sequence[torch.Tensor], items: Sequence[Item], answers: Sequence[str]
) -> list[float]:
    """Each answer's evidence against the reference dialogs' reads, as
    :meth:`latentqa.reader.Reader.ask` weighs it."""
    real = score_rows(
        reader,
        [(v, item.question, a) for v, item, a in zip(vectors, items, answers, strict=True)],
        "open marks",
    )
    pairs = sorted({(item.question, a) for item, a in zip(items, answers, strict=True)})
    means = reference_means(reader, "open marks: references")(pairs)
    return [
        score - means[(item.question, a)]
        for score, item, a in zip(real, items, answers, strict=True)
    ]


def open_marks(
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    answers: Sequence[str],
    seed: int,
) -> dict[str, float | None]:
    """``open_mark_precision`` and ``open_mark_coverage`` (2-fold by label: threshold
    tuned on half the labels, measured on the other half), ``open_mark_threshold`` (the
    rule on all items: the value to store as the decoder's ``read_threshold``; ``None``
    when no threshold reaches the precision) and ``open_evidence_max``, the largest
    evidence of any answer (a threshold there marks none of these items)."""
    evidence = open_evidence(reader, vectors, items, answers)
    found = read_marks(nearest_options(answers, items), evidence, items, seed)
    marks = {f"open_{key.removeprefix('read_')}": value for key, value in found.items()}
    return {**marks, "open_evidence_max": max(evidence)}


def threshold_to_save(lit: dict) -> tuple[float, str]:
    """The ``read_threshold`` to store from ``lit``'s measures, and why: the calibrated
    threshold, or where none reaches the precision, the largest held-out evidence (the
    decoder then marks an answer read only beyond every held-out answer's evidence)."""
    if lit.get("open_mark_threshold") is not None:
        precision = lit.get("open_mark_precision")
        shown = "none marked" if precision is None else f"{precision:.3f}"
        return lit["open_mark_threshold"], f"calibrated (held-out precision {shown})"
    return lit["open_evidence_max"], (
        "no threshold marks open answers right 0.80 of the time on these items: the largest "
        "evidence of any held-out answer, so that none like them is marked read"
    )
