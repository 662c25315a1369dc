"""Pick among candidate answers from a decoder's reads: per dialog, and pooled over dialogs.

An auditor rarely sees one conversation of a deployed model: usually several, all under
the same hidden system prompt. Each conversation's read is noisy evidence about that
prompt; summing each candidate's score over the conversations pools the evidence, so
the pooled pick is right more often than a single dialog's (the shipped decoder, 59
held-out prompts with 3 user turns each: 0.576 pooled against 0.401 per dialog;
docs/decoder-experiments.md). Pooling assumes the dialogs share one hidden prompt: it
answers "which behaviour governs all of these", not a question about each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from latentqa.errors import LatentQAError
from latentqa.questions import check_questions

if TYPE_CHECKING:
    import torch

    from latentqa.chat import Message
    from latentqa.reader import Reader


@dataclass(frozen=True)
class Choice:
    """The decoder's picks among ``options`` for a set of dialogs."""

    options: list[str]
    """The candidate answers, in the order given."""
    scores: list[list[float]]
    """Per dialog, each option's score (larger: more likely the right one)."""
    picks: list[int]
    """Per dialog, the index of its best-scoring option."""
    pooled: list[float]
    """Each option's score summed over the dialogs."""
    pooled_pick: int
    """The index of the option with the largest pooled score."""


def option_scores(
    reader: Reader,
    dialogs: Sequence[Sequence[Message]],
    question: str,
    options: Sequence[str],
    *,
    reads: Sequence[torch.Tensor] | None = None,
) -> list[list[float]]:
    """Per dialog, each option's score as an answer to ``question``.

    A decoder trained on yes/no questions (``reader.spec.picks_by_yes_no``) scores an
    option by its yes/no margin ``log P(yes) - log P(no)`` (the 50/50 training calibrates
    it); any other by how much the dialog's read raises the option's mean log-likelihood
    per token over its mean with the 16 reference dialogs' reads (a prior every dialog
    shares, so a decoder that says one answer of everything does not win by it).

    Args:
        reader: A loaded reader.
        dialogs: Chat dialogs (a system prompt is masked, as in training).
        question: The question the options answer.
        options: At least two candidate answers.
        reads: The dialogs' reads (``reader.read_many(dialogs)``), when the caller has
            them; ``None``: read here.

    Returns:
        ``[len(dialogs)][len(options)]`` scores.

    Raises:
        LatentQAError: Fewer than two options, an empty option, or no dialog.
    """
    (question,) = check_questions([question])
    options = check_options(options)
    if not dialogs:
        raise LatentQAError("pick among options: give at least one dialog")
    reads = reader.reads_for([list(d) for d in dialogs], reads)
    if reader.spec.picks_by_yes_no:
        return [reader.yes_no_margins(vectors, question, options) for vectors in reads]
    # Each option's mean likelihood over the reference dialogs, then given each read: all
    # as token tries (a read's question and template once for all its options).
    pairs = [(question, option) for option in options]
    prior = reader.reference_scores(reader.reference_reads(), pairs)
    rows = [vectors for vectors in reads for _ in options]
    real = reader.score_rows_shared(rows, [question] * len(rows), list(options) * len(reads), True)
    n = len(options)
    return [
        [real[k * n + j] - prior[pair] for j, pair in enumerate(pairs)] for k in range(len(reads))
    ]


def choose(
    reader: Reader,
    dialogs: Sequence[Sequence[Message]],
    question: str,
    options: Sequence[str],
    *,
    reads: Sequence[torch.Tensor] | None = None,
) -> Choice:
    """Each dialog's pick among ``options`` and the pick pooled over all ``dialogs``.

    Args:
        reader: A loaded reader.
        dialogs: Dialogs under one hidden system prompt (for the pooled pick).
        question: The question the options answer, e.g. "What was the assistant
            instructed to do?".
        options: At least two candidate answers.
        reads: The dialogs' reads, when the caller has them (see :func:`option_scores`).

    Returns:
        A :class:`Choice`.
    """
    scores = option_scores(reader, dialogs, question, options, reads=reads)
    return choice_from_scores(list(options), scores)


def choice_from_scores(options: list[str], scores: list[list[float]]) -> Choice:
    """A :class:`Choice` from per-dialog option scores ``[n_dialogs][n_options]``."""
    pooled = [sum(column) for column in zip(*scores, strict=True)]
    return Choice(
        options=options,
        scores=scores,
        picks=[_argmax(row) for row in scores],
        pooled=pooled,
        pooled_pick=_argmax(pooled),
    )


def check_options(options: Sequence[str]) -> list[str]:
    """``options`` as a list, or a clear error: at least two, none empty, no repeats."""
    options = [str(option).strip() for option in options]
    if len(options) < 2:
        raise LatentQAError("give at least two options to pick among")
    if any(not option for option in options):
        raise LatentQAError("an option is empty: give each candidate answer as text")
    if len(set(options)) < len(options):
        raise LatentQAError("the options repeat: give each candidate answer once")
    return options


def _argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=row.__getitem__)
