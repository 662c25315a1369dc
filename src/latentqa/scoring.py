"""Scoring answers with a decoder, and the evidence an answer owes to the activations.

Functions of a :class:`~latentqa.decoder.loaded.LoadedDecoder`: log-likelihoods of
given answers, batched, with each read computed once through a shared prefix
(:mod:`latentqa.decoder.packing`), and the *evidence* of an answer: its mean
log-likelihood per token with the real activations minus with zeroed ones (see
:class:`Answer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import shared_decoder_batch
from latentqa.errors import LatentQAError
from latentqa.questions import check_questions

EVIDENCE_THRESHOLD = 0.1
"""Evidence, in nats per answer token, above which an answer counts as *read*.

An answer whose mean per-token log-likelihood rises by more than this when the real
activations replace zeroed ones is labelled "read" (from the activations); otherwise
"guessed" (the question alone, or the decoder's prior, explains it). The one place this
cut-off is set: the CLI, the server and the web page all take it from here.
"""


@dataclass(frozen=True)
class Answer:
    """A generated answer and how much the activations support it.

    Attributes:
        text: The decoded answer.
        evidence: ``logprob_real - logprob_zeroed``, in nats per answer token. Above 0 the
            real activations made this answer more likely than zeroed activations of the
            same shape did; near or below 0 the decoder would have said it anyway.
        logprob_real: Mean log-likelihood per answer token with the real activations.
        logprob_zeroed: The same with the activations replaced by zeros.

    Both log-likelihoods score ``text`` as :func:`score_vectors` does with
    ``normalize=True`` (the answer's tokens include the end-of-turn token).
    """

    text: str
    evidence: float
    logprob_real: float
    logprob_zeroed: float

    @property
    def read(self) -> bool:
        """Whether ``evidence`` exceeds :data:`EVIDENCE_THRESHOLD` (read, not guessed)."""
        return self.evidence > EVIDENCE_THRESHOLD

    @property
    def label(self) -> str:
        """``"read"`` or ``"guessed"``, by :attr:`read`."""
        return "read" if self.read else "guessed"

    def __str__(self) -> str:
        return self.text


def check_answers(answers: Sequence[str]) -> list[str]:
    """``answers`` as a list, checked: a non-empty list of strings.

    Raises:
        LatentQAError: Anything else (a lone string included).
    """
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise LatentQAError("answers must be a non-empty list of strings")
    return list(answers)


def _check_rows(vectors: Sequence, questions: Sequence, answers: Sequence) -> None:
    if not len(vectors) == len(questions) == len(answers):
        raise LatentQAError(
            f"{len(vectors)} vector sets, {len(questions)} questions and "
            f"{len(answers)} answers: need one of each per row"
        )


def evidence_rows(
    decoder: LoadedDecoder,
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 32,
) -> list[Answer]:
    """Weigh given answers: real ``vectors`` against zeroed ones, per row.

    Row ``i`` scores ``answers[i]`` to ``questions[i]`` given ``vectors[i]``
    (``[n_i, d_model]``), once as is and once with zeros of the same shape, each
    condition in batches of ``batch_size`` rows. ``evidence`` equals
    ``score_vectors(decoder, v, q, [a], normalize=True)`` minus the same with
    ``torch.zeros_like(v)``, up to batching round-off.

    Args:
        decoder: The decoder scoring.
        vectors: One ``[n, d_model]`` tensor per row.
        questions: One question per row.
        answers: One answer per row (may be empty: it is scored by its end-of-turn
            token alone).
        batch_size: Rows per decoder pass.

    Returns:
        One :class:`Answer` per row.

    Raises:
        LatentQAError: Rows of unequal lengths, empty questions, or vectors of the
            wrong hidden size.
    """
    questions = check_questions(questions)
    if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
        raise LatentQAError("answers must be a list of strings")
    answers = list(answers)
    _check_rows(vectors, questions, answers)
    if batch_size < 1:
        raise LatentQAError(f"batch_size must be at least 1, got {batch_size}")
    real = [decoder.check_vectors(v) for v in vectors]
    zeroed = [torch.zeros_like(v) for v in real]
    logprob_real = score_rows(decoder, real, questions, answers, True, batch_size)
    logprob_zeroed = score_rows(decoder, zeroed, questions, answers, True, batch_size)
    return [
        Answer(text=text, evidence=lr - lz, logprob_real=lr, logprob_zeroed=lz)
        for text, lr, lz in zip(answers, logprob_real, logprob_zeroed, strict=True)
    ]


@torch.no_grad()
def score_rows(
    decoder: LoadedDecoder,
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    answers: Sequence[str],
    normalize: bool = False,
    batch_size: int = 32,
) -> list[float]:
    """Log-likelihood of ``answers[i]`` to ``questions[i]`` given ``vectors[i]``, batched.

    Many (vectors, question, answer) rows in decoder passes of ``batch_size`` rows:
    evaluations score thousands of options, and one pass per item would leave the
    hardware mostly idle. With ``normalize`` each sum is divided by its token count.
    """
    _check_rows(vectors, questions, answers)
    values: list[float] = []
    for start in range(0, len(answers), batch_size):
        rows = range(start, min(start + batch_size, len(answers)))
        # Rows given the same vectors object read once: their prompts share the
        # prefix up to the last placeholder (see latentqa.decoder.packing).
        groups: dict[int, list[int]] = {}
        for row in rows:
            groups.setdefault(id(vectors[row]), []).append(row)
        members = list(groups.values())
        reads = [decoder.check_vectors(vectors[group[0]]) for group in members]
        pairs = [[(questions[r], answers[r]) for r in group] for group in members]
        batch, flat = shared_decoder_batch(decoder.tokenizer, reads, pairs)
        decoder.check_length(
            int(batch.position_ids.max()) + 1, "the decoder prompt with its answer"
        )
        sums = answer_token_loss(
            decoder.model,
            batch.to(decoder.device),
            flat,
            write_layer=decoder.spec.write_layer,
            mode=decoder.spec.mode,
            reduction="none",
            blocks=decoder.blocks,  # write where the read was taken from
        )
        # sums: [branches, 2] = per row (summed nll, answer token count), group order
        scores = -sums[:, 0] / sums[:, 1].clamp_min(1) if normalize else -sums[:, 0]
        by_row = dict(zip([r for group in members for r in group], scores.tolist(), strict=True))
        values += [by_row[row] for row in rows]
    return values


def score_vectors(
    decoder: LoadedDecoder,
    vectors: torch.Tensor,
    question: str,
    answers: Sequence[str],
    normalize: bool = False,
) -> list[float]:
    """Log-likelihood of each candidate answer given already-read vectors ``[n, d_model]``.

    The answer's tokens include the template's end-of-turn token (as in training).
    With ``normalize`` each sum is divided by its number of answer tokens; all
    candidates run in one decoder pass.

    Raises:
        LatentQAError: An empty question, no answers, or bad vectors.
    """
    (question,) = check_questions([question])
    answers = check_answers(answers)
    n = len(answers)  # all candidates in one decoder pass
    return score_rows(decoder, [vectors] * n, [question] * n, answers, normalize, batch_size=n)
