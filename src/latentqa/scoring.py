"""Scoring answers with a decoder, and the evidence an answer owes to the activations.

Functions of a :class:`~latentqa.decoder.loaded.LoadedDecoder`: log-likelihoods of
given answers, batched, with each read computed once through a shared prefix
(:mod:`latentqa.decoder.packing`), and the *evidence* of an answer: its mean
log-likelihood per token with the real activations minus with zeroed ones (see
:class:`Answer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.lora_gate import lora_scope
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import shared_decoder_batch
from latentqa.decoder.prompt import build_decoder_prompt
from latentqa.decoder.trie import BATCH_TOKENS, ROW_TOKENS, TriePrompt, pack_tries, trie_logprobs
from latentqa.errors import LatentQAError
from latentqa.models import unwrap_causal_lm
from latentqa.patch import patch_activations
from latentqa.questions import NO, YES, check_questions, yes_no_question

EVIDENCE_THRESHOLD = 0.1
"""Evidence, in nats per answer token, above which an answer counts as *read*, for a
decoder whose folder names no calibrated threshold (``read_threshold`` in its
``latentqa.json``, chosen by ``latentqa eval system-prompt``'s read-mark calibration).

An answer whose mean per-token log-likelihood rises by more than this when the real
activations replace the reference ones is labelled "read" (from the activations);
otherwise "guessed" (the question alone, or the decoder's prior, explains it). The CLI,
the server and the web page take the threshold from the answer itself.
"""


@dataclass(frozen=True)
class Answer:
    """A generated answer and how much the activations support it.

    Attributes:
        text: The decoded answer.
        evidence: ``logprob_real - logprob_reference`` (or ``- logprob_zeroed`` when no
            reference reads were given), in nats per answer token. Above 0 the real
            activations made this answer more likely than other dialogs' activations
            did on average; near or below 0 the decoder would have said it of any dialog.
        logprob_real: Mean log-likelihood per answer token with the real activations.
        logprob_zeroed: The same with the activations replaced by zeros (reported, not
            the mark: zeroed vectors are out of distribution, so nearly any answer
            gains against them).
        logprob_reference: The same, averaged over the reference dialogs' reads; ``None``
            without references.
        threshold: Evidence above which the answer counts as read.

    The log-likelihoods score ``text`` as :func:`score_vectors` does with
    ``normalize=True`` (the answer's tokens include the end-of-turn token).
    """

    text: str
    evidence: float
    logprob_real: float
    logprob_zeroed: float
    logprob_reference: float | None = None
    threshold: float = EVIDENCE_THRESHOLD

    @property
    def read(self) -> bool:
        """Whether ``evidence`` exceeds :attr:`threshold` (read, not guessed)."""
        return self.evidence > self.threshold

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
    references: Sequence[torch.Tensor] | None = None,
    threshold: float = EVIDENCE_THRESHOLD,
) -> list[Answer]:
    """Weigh given answers: real ``vectors`` against other dialogs' reads, per row.

    Row ``i`` scores ``answers[i]`` to ``questions[i]`` given ``vectors[i]``
    (``[n_i, d_model]``), with zeros of the same shape, and with each of
    ``references`` (reads of other dialogs, as the decoder takes them). ``evidence`` is
    the real score minus the mean reference score (or minus the zeroed score without
    references); a reference row's score depends only on (reference, question,
    answer), so each is computed once.

    Args:
        decoder: The decoder scoring.
        vectors: One ``[n, d_model]`` tensor per row.
        questions: One question per row.
        answers: One answer per row (may be empty: it is scored by its end-of-turn
            token alone).
        batch_size: Rows per decoder pass.
        references: Reads of other dialogs (see
            :meth:`latentqa.reader.Reader.reference_reads`); ``None``: zeroed vectors
            are the reference.
        threshold: Evidence above which an answer counts as read.

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
    logprob_reference: list[float | None] = [None] * len(answers)
    if references:
        pairs = sorted(set(zip(questions, answers, strict=True)))
        means = reference_scores(decoder, references, pairs)
        logprob_reference = [means[qa] for qa in zip(questions, answers, strict=True)]
    return [
        Answer(
            text=text,
            evidence=lr - (lz if lref is None else lref),
            logprob_real=lr,
            logprob_zeroed=lz,
            logprob_reference=lref,
            threshold=threshold,
        )
        for text, lr, lz, lref in zip(
            answers, logprob_real, logprob_zeroed, logprob_reference, strict=True
        )
    ]


def reference_scores(
    decoder: LoadedDecoder,
    references: Sequence[torch.Tensor],
    pairs: Sequence[tuple[str, str]],
    progress: Callable[[Iterable], Iterable] | None = None,
) -> dict[tuple[str, str], float]:
    """Per ``(question, answer)``, its normalised score averaged over the reference
    reads: the answer's likelihood for a dialog the decoder knows nothing particular
    about. One token trie per reference read (its rows share the read)."""
    refs = [decoder.check_vectors(r) for r in references]
    rows = [(r, q, a) for r in refs for q, a in pairs]
    flat = score_rows_shared(
        decoder,
        [r for r, _, _ in rows],
        [q for _, q, _ in rows],
        [a for _, _, a in rows],
        True,
        progress=progress,
    )
    n = len(pairs)
    return {
        pair: sum(flat[k * n + j] for k in range(len(refs))) / len(refs)
        for j, pair in enumerate(pairs)
    }


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
        batch, flat = shared_decoder_batch(
            decoder.tokenizer, reads, pairs, order=decoder.spec.prompt_order
        )
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
            lora_from=decoder.spec.lora_from,
        )
        # sums: [branches, 2] = per row (summed nll, answer token count), group order
        scores = -sums[:, 0] / sums[:, 1].clamp_min(1) if normalize else -sums[:, 0]
        by_row = dict(zip([r for group in members for r in group], scores.tolist(), strict=True))
        values += [by_row[row] for row in rows]
    return values


@torch.no_grad()
def score_rows_shared(
    decoder: LoadedDecoder,
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    answers: Sequence[str],
    normalize: bool = False,
    *,
    row_tokens: int = ROW_TOKENS,
    max_tokens: int = BATCH_TOKENS,
    progress: Callable[[Iterable[slice]], Iterable[slice]] | None = None,
) -> list[float]:
    """:func:`score_rows`, with every token prefix that rows share computed once.

    Rows are packed as token tries (:mod:`latentqa.decoder.trie`): beyond the read that
    :func:`score_rows` shares, the question and template of an item's options, a yes/no
    question's ``Yes.`` and ``No.`` rows, identical rows, and (for a question-first
    decoder) a question asked of several reads run once. The scores equal :func:`score_rows`'s up
    to float round-off (tested); an evaluation scoring thousands of short answers
    computes about a third of the tokens.

    Args:
        decoder: The decoder scoring.
        vectors: One ``[n, d_model]`` tensor per row; pass the same object for rows
            that read the same vectors (they share a trie).
        questions: One question per row.
        answers: One answer per row.
        normalize: Divide each sum by its number of answer tokens.
        row_tokens: Width of the rows tries are packed into, and the most nodes of a
            trie (a larger group is split into several tries).
        max_tokens: Rows x width per forward pass.
        progress: Wraps the forward passes' row slices (e.g. in a progress bar).

    Raises:
        LatentQAError: Rows of unequal lengths, bad vectors, or a prompt longer than
            the model's context.
    """
    _check_rows(vectors, questions, answers)
    groups: dict[int, list[int]] = {}
    for row, read in enumerate(vectors):
        groups.setdefault(id(read), []).append(row)
    members = list(groups.values())
    reads = [decoder.check_vectors(vectors[group[0]]) for group in members]
    prompts = []
    for read, group in zip(reads, members, strict=True):
        prompts.append([_trie_prompt(decoder, len(read), questions[r], answers[r]) for r in group])
    # Across reads too: a question-first decoder's question is computed once for all reads.
    batch = pack_tries(
        prompts, decoder.pad_id, row_tokens, trie_tokens=row_tokens, across_groups=True
    )
    decoder.check_length(int(batch.position_ids.max()) + 1, "the decoder prompt with its answer")
    causal_lm = unwrap_causal_lm(decoder.model)
    dtype = causal_lm.get_input_embeddings().weight.dtype

    def body(rows: slice) -> torch.Tensor:
        mask, flat = batch.slot_vectors(rows, reads)  # [n_rows, seq], [n_slots, d_model]
        inputs = batch.body_inputs(rows, decoder.device, dtype)
        mask = mask.to(decoder.device)
        with (
            patch_activations(
                causal_lm,
                decoder.spec.write_layer,
                mask,
                flat,
                decoder.spec.mode,
                blocks=decoder.blocks,  # write where the read was taken from
            ),
            lora_scope(causal_lm, decoder.spec.lora_from, mask, inputs["attention_mask"]),
        ):
            return causal_lm.base_model(**inputs, use_cache=False).last_hidden_state

    sums = trie_logprobs(decoder.model, batch, body, max_tokens=max_tokens, progress=progress)
    scores = sums[:, 0] / sums[:, 1].clamp_min(1) if normalize else sums[:, 0]
    by_row = dict(zip([r for group in members for r in group], scores.tolist(), strict=True))
    return [by_row[row] for row in range(len(answers))]


def _trie_prompt(decoder: LoadedDecoder, n: int, question: str, answer: str) -> TriePrompt:
    """A decoder prompt as a trie prompt: its answer tokens scored, vector ``k`` at its
    ``k``-th placeholder."""
    prompt = build_decoder_prompt(
        decoder.tokenizer, n, question, answer, order=decoder.spec.prompt_order
    )
    slots = [-1] * len(prompt.input_ids)
    slots[prompt.placeholder_start : prompt.placeholder_end] = range(n)
    return TriePrompt(prompt.input_ids, prompt.label_mask, slots)


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


def yes_no_margins(
    decoder: LoadedDecoder, vectors: torch.Tensor, question: str, candidates: Sequence[str]
) -> list[float]:
    """Per candidate, ``log P(Yes.) - log P(No.)`` when the decoder is asked whether it
    answers ``question`` about ``vectors`` (:func:`~latentqa.questions.yes_no_question`).

    A decoder trained on yes/no pairs (50/50) has its margins calibrated across
    candidates, so the largest margin is its pick; all rows run in one shared pass.

    Raises:
        LatentQAError: An empty question, no candidates, or bad vectors.
    """
    (question,) = check_questions([question])
    candidates = check_answers(candidates)
    asked = [yes_no_question(question, c) for c in candidates for _ in (YES, NO)]
    answers = [YES, NO] * len(candidates)
    flat = score_rows_shared(decoder, [vectors] * len(asked), asked, answers, True)
    return [flat[2 * k] - flat[2 * k + 1] for k in range(len(candidates))]
