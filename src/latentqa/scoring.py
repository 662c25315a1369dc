"""Scoring answers with a decoder, and the evidence an answer owes to the activations.

:class:`ReaderScoring` holds the scoring half of :class:`latentqa.reader.Reader`
(mixed into it): log-likelihoods of given answers, batched, with each read computed
once through a shared prefix (:mod:`latentqa.shared_prefix`), and the *evidence* of
an answer: its mean log-likelihood per token with the real activations minus with
zeroed ones (see :class:`Answer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from latentqa.chat import Message, Subjects
from latentqa.decoder.packing import shared_answer_loss, shared_decoder_batch
from latentqa.errors import LatentQAError
from latentqa.questions import check_questions

VectorsTransform = Callable[[torch.Tensor], torch.Tensor]
"""Maps read vectors ``[n, d_model]`` to replacements of the same shape."""

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

    Both log-likelihoods score ``text`` as :meth:`Reader.score_vectors` does with
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


def _as_answers(answers: Sequence[str]) -> list[str]:
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise LatentQAError("answers must be a non-empty list of strings")
    return list(answers)


class ReaderScoring:
    """Scoring and evidence methods of :class:`latentqa.reader.Reader`.

    A mixin: it uses the reader's ``model``, ``tokenizer``, ``spec``, ``device``,
    ``layers_path``, ``read``, ``_answer_rows``, ``_check_vectors`` and
    ``_check_length``.
    """

    def ask_with_evidence(
        self,
        dialog: Sequence[Message],
        questions: str | Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        batch_size: int = 32,
        subject: str | None = None,
    ) -> list[Answer]:
        """Answer like :meth:`ask`, and weigh each answer against zeroed activations.

        After generation, each answer is scored twice: with the vectors it was generated
        from, and with zeros of the same shape (one batched decoder pass per condition).
        ``Answer.evidence`` is the difference of the mean per-token log-likelihoods; an
        answer with evidence above :data:`EVIDENCE_THRESHOLD` was *read* from the
        activations, otherwise it was *guessed* from the question.

        Args:
            dialog: ``{"role", "content"}`` messages; a leading system prompt is masked.
            questions: The questions (a single string counts as one).
            max_new_tokens: Answer length limit.
            temperature: 0 for greedy decoding, else sampling.
            layer: Read this target block instead of the decoder's read layers.
            vectors_transform: Applied to the read vectors ``[n, d_model]`` first; the
                zeroed condition uses zeros of the transformed vectors' shape.
            batch_size: Dialogs per target pass / rows per generation and scoring batch.
            subject: Read only the tokens of this text in the last user turn (see
                :meth:`ask`); ``None``: the whole dialog after the system prompt.

        Returns:
            One :class:`Answer` per question; ``str(answer)`` is its text, equal to what
            :meth:`ask` returns.
        """
        answers = self.ask_many_with_evidence(
            [dialog],
            questions,
            max_new_tokens,
            temperature,
            layer,
            vectors_transform=vectors_transform,
            batch_size=batch_size,
            subject=subject,
        )
        return answers[0]

    def ask_many_with_evidence(
        self,
        dialogs: Sequence[Sequence[Message]],
        questions: str | Sequence[str],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        batch_size: int = 32,
        subject: Subjects = None,
    ) -> list[list[Answer]]:
        """:meth:`ask_with_evidence` for every dialog: ``[dialog][question]`` answers.

        ``subject`` is one text for every dialog or one per dialog (see
        :meth:`~latentqa.reader.Reader.read_many`).
        """
        rows, row_questions, texts, width = self._answer_rows(
            dialogs,
            questions,
            max_new_tokens,
            temperature,
            layer,
            vectors_transform,
            batch_size,
            subject=subject,
        )
        flat = self.evidence_vectors(rows, row_questions, texts, batch_size)
        return [flat[i : i + width] for i in range(0, len(flat), width)]

    def evidence_vectors(
        self,
        vectors: Sequence[torch.Tensor],
        questions: Sequence[str],
        answers: Sequence[str],
        batch_size: int = 32,
    ) -> list[Answer]:
        """Weigh given answers: real ``vectors`` against zeroed ones, per row.

        Row ``i`` scores ``answers[i]`` to ``questions[i]`` given ``vectors[i]``
        (``[n_i, d_model]``), once as is and once with zeros of the same shape, each
        condition in batches of ``batch_size`` rows. ``evidence`` equals
        ``score_vectors(v, q, [a], normalize=True)`` minus the same with
        ``torch.zeros_like(v)``, up to batching round-off.

        Args:
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
        if not len(vectors) == len(questions) == len(answers):
            raise LatentQAError(
                f"{len(vectors)} vector sets, {len(questions)} questions and "
                f"{len(answers)} answers: need one of each per row"
            )
        if batch_size < 1:
            raise LatentQAError(f"batch_size must be at least 1, got {batch_size}")
        real = [self._check_vectors(v) for v in vectors]
        zeroed = [torch.zeros_like(v) for v in real]
        logprob_real = self.score_rows(real, questions, answers, True, batch_size)
        logprob_zeroed = self.score_rows(zeroed, questions, answers, True, batch_size)
        return [
            Answer(text=text, evidence=lr - lz, logprob_real=lr, logprob_zeroed=lz)
            for text, lr, lz in zip(answers, logprob_real, logprob_zeroed, strict=True)
        ]

    @torch.no_grad()
    @torch.no_grad()
    def score_rows(
        self,
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
        if not len(vectors) == len(questions) == len(answers):
            raise LatentQAError(
                f"{len(vectors)} vector sets, {len(questions)} questions and "
                f"{len(answers)} answers: need one of each per row"
            )
        values: list[float] = []
        for start in range(0, len(answers), batch_size):
            rows = range(start, min(start + batch_size, len(answers)))
            # Rows given the same vectors object read once: their prompts share the
            # prefix up to the last placeholder (see latentqa.shared_prefix).
            groups: dict[int, list[int]] = {}
            for row in rows:
                groups.setdefault(id(vectors[row]), []).append(row)
            members = list(groups.values())
            reads = [self._check_vectors(vectors[group[0]]) for group in members]
            pairs = [[(questions[r], answers[r]) for r in group] for group in members]
            batch, flat = shared_decoder_batch(self.tokenizer, reads, pairs)
            self._check_length(
                int(batch.position_ids.max()) + 1, "the decoder prompt with its answer"
            )
            sums = shared_answer_loss(
                self.model,
                batch.to(self.device),
                flat,
                write_layer=self.spec.write_layer,
                mode=self.spec.mode,
                reduction="none",
                blocks=self.handle.blocks,  # write where the read was taken from
            )
            # sums: [branches, 2] = per row (summed nll, answer token count), group order
            scores = -sums[:, 0] / sums[:, 1].clamp_min(1) if normalize else -sums[:, 0]
            by_row = dict(
                zip([r for group in members for r in group], scores.tolist(), strict=True)
            )
            values += [by_row[row] for row in rows]
        return values

    @torch.no_grad()
    def score_vectors(
        self,
        vectors: torch.Tensor,
        question: str,
        answers: Sequence[str],
        normalize: bool = False,
    ) -> list[float]:
        """Log-likelihood of each candidate answer given already-read vectors ``[n, d_model]``.

        The answer's tokens include the template's end-of-turn token (as in training).
        With ``normalize`` each sum is divided by its number of answer tokens.
        """
        (question,) = check_questions([question])
        answers = _as_answers(answers)
        n = len(answers)  # all candidates in one decoder pass
        return self.score_rows([vectors] * n, [question] * n, answers, normalize, batch_size=n)

    def score(
        self,
        dialog: Sequence[Message],
        question: str,
        answers: Sequence[str],
        normalize: bool = False,
        layer: int | None = None,
        *,
        vectors_transform: VectorsTransform | None = None,
        subject: str | None = None,
    ) -> list[float]:
        """Log-likelihood (sum of log-probs) of each candidate answer to ``question``.

        One target read and one decoder forward over all candidates; ``normalize``,
        ``layer``, ``vectors_transform`` and ``subject`` are as in :meth:`score_vectors`
        and :meth:`ask`.
        """
        (question,) = check_questions([question])
        _as_answers(answers)
        vectors = self.read(dialog, layer, subject=subject)
        if vectors_transform is not None:
            vectors = vectors_transform(vectors)
        return self.score_vectors(vectors, question, answers, normalize)
