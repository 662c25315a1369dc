"""Decoder scoring for the system-prompt evaluation: options, yes/no pairs, zeroed reads.

A decoder method's rows (each item's options, its calibration baseline and its yes/no
questions) are scored in one call of :func:`latentqa.scoring.score_rows_shared`: the
rows of one item pass the same vectors object, so they form one token trie whose
common prefixes (the read, the question, the yes/no question before ``Yes.`` /
``No.``) run once. Zeroed vectors carry nothing of the dialog, so a row given zeros
depends only on their shape, its question and its answer: :class:`RunScores` scores
each such row once per run and gives rows of one shape one zeros object (one trie).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from latentqa.answering import generate_ids_once
from latentqa.conditions import activation_conditions
from latentqa.decoder.projector import text_soft_tokens
from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt_items import Dialog, Item, yes_no_questions
from latentqa.questions import NO, YES, yes_no_question
from latentqa.reader import Reader

Row = tuple[torch.Tensor, str, str]
"""(vectors ``[n, d_model]``, question, answer)."""


def _progress(desc: str):
    return lambda chunks: tqdm(list(chunks), desc=desc, leave=False)


def reference_means(
    reader: Reader, desc: str
) -> Callable[[Sequence[tuple[str, str]]], dict[tuple[str, str], float]]:
    """Per ``(question, answer)``, its normalised score averaged over the reference reads,
    with a progress bar (:meth:`~latentqa.reader.Reader.reference_scores`: ``latentqa
    read`` weighs an answer against the same means)."""
    refs = reader.reference_reads()
    return lambda pairs: reader.reference_scores(refs, pairs, progress=_progress(desc))


def score_rows(reader: Reader, rows: Sequence[Row], desc: str) -> list[float]:
    """Normalised log-likelihoods of (vectors, question, answer) rows, with a progress bar;
    rows that pass the same vectors object share one trie."""
    if not rows:
        return []
    vectors, questions, answers = zip(*rows, strict=True)
    return reader.score_rows_shared(
        list(vectors), list(questions), list(answers), True, progress=_progress(desc)
    )


class RunScores:
    """What one reader computed in a run, kept so that no row is scored twice: rows
    given all-zero vectors (:attr:`cache`), rows given a read (:attr:`live`) and greedy
    open answers (:attr:`answers`).

    A zeroed row's score depends only on the vectors' shape and dtype, the question and
    the answer (the decoder's prompt holds nothing of the dialog), so that is the key:
    an item's calibration baseline, ``lit_zeroed``'s rows and the baselines of the
    other methods' reads of the same shape are scored once. Rows of one shape share
    one zeros object, so their common prompt is one trie.
    """

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.cache: dict[tuple, float] = {}
        self._zeros: dict[tuple, torch.Tensor] = {}
        self.live: dict[tuple, tuple[torch.Tensor, float]] = {}
        """Scores of rows given a read, by (vectors object, question, answer), with the
        vectors (kept alive, so the id stays theirs): a later pass over the same reads
        (the pooled picks, a permuted condition) reuses them."""
        self.answers: dict[tuple, tuple[torch.Tensor, str]] = {}
        """Greedy open answers the same way, by (vectors object, question, length)."""

    @staticmethod
    def live_key(row: Row) -> tuple:
        vectors, question, answer = row
        return (id(vectors), question, answer)

    @staticmethod
    def key(vectors: torch.Tensor, question: str, answer: str) -> tuple:
        return (tuple(vectors.shape), vectors.dtype, question, answer)

    def zeros(self, like: torch.Tensor) -> torch.Tensor:
        """The one zeros tensor shaped like ``like``."""
        key = (tuple(like.shape), like.dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros_like(like)
        return self._zeros[key]

    def rows(self, wanted: Iterable[Row]) -> list[Row]:
        """The rows of ``wanted`` (given zeros of some shape) not scored yet, each once."""
        todo: dict[tuple, Row] = {}
        for vectors, question, answer in wanted:
            key = self.key(vectors, question, answer)
            if key not in self.cache and key not in todo:
                todo[key] = (self.zeros(vectors), question, answer)
        return list(todo.values())

    def store(self, rows: Sequence[Row], scores: Sequence[float]) -> None:
        for row, score in zip(rows, scores, strict=True):
            self.cache[self.key(*row)] = score

    def __call__(self, vectors: torch.Tensor, question: str, answer: str) -> float:
        return self.cache[self.key(vectors, question, answer)]


@dataclass
class ItemScores:
    """A decoder method's scores on the items."""

    options: list[list[float]] | None
    """Per item, each option's normalised log-likelihood (``None``: not scored)."""
    baseline: list[list[float]] | None
    """Per item, the same options given zeroed vectors of the method's shape."""
    yes_no: list[float]
    """Per question of :func:`yes_no_questions`, the ``YES`` then the ``NO`` row's score."""
    option_margins: list[list[float]]
    """Per item, each option's yes/no margin ``score(YES) - score(NO)`` when asked as
    ``yes_no_question(question, option)``: multiple choice by the decoder's yes/no."""


def item_scores(
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    zeroed: RunScores,
    desc: str,
    yes_no: bool = True,
    likelihood: bool = True,
) -> ItemScores:
    """Options, calibration baseline and yes/no rows of every item, in one batched call.

    Rows whose vectors are all zero (the baseline, and every row of ``lit_zeroed``)
    come from, and fill, ``zeroed``; the others are scored here. ``likelihood=False``
    leaves out the options' likelihood and baseline rows (``options`` and ``baseline``
    are then ``None``).
    """
    pairs = [
        (v, item.question, o) for v, item in zip(vectors, items, strict=True) for o in item.options
    ]
    options = pairs if likelihood else []
    zero_options = [(zeroed.zeros(v), q, o) for v, q, o in options]
    asked = yes_no_questions(items) if yes_no else []
    yes_no_rows = [(vectors[i], q, answer) for i, q, _ in asked for answer in (YES, NO)]
    option_rows = [(v, yes_no_question(q, o), answer) for v, q, o in pairs for answer in (YES, NO)]
    listed = (*options, *yes_no_rows, *option_rows)
    key = zeroed.live_key
    live = [row for row in listed if row[0].any()]
    new = list({key(row): row for row in live if key(row) not in zeroed.live}.values())
    dead = zeroed.rows(row for row in (*listed, *zero_options) if not row[0].any())
    scores = score_rows(reader, [*new, *dead], desc)
    zeroed.store(dead, scores[len(new) :])
    zeroed.live.update(
        (key(row), (row[0], score)) for row, score in zip(new, scores[: len(new)], strict=True)
    )
    # Rows given a read come from the live cache; every other row is a zeroed one.
    flat = [zeroed.live[key(row)][1] if row[0].any() else zeroed(*row) for row in listed]
    width = [len(item.options) for item in items]
    starts = [sum(width[:i]) for i in range(len(items))]

    def per_item(scores: list[float]) -> list[list[float]]:  # one list per item's options
        return [scores[s : s + w] for s, w in zip(starts, width, strict=True)]

    tail = flat[len(options) + len(yes_no_rows) :]  # YES, NO per option
    margins = [tail[2 * k] - tail[2 * k + 1] for k in range(len(pairs))]
    return ItemScores(
        per_item(flat) if likelihood else None,
        per_item([zeroed(*row) for row in zero_options]) if likelihood else None,
        flat[len(options) : len(options) + len(yes_no_rows)],
        per_item(margins),
    )


def yes_no_accuracy(scores: Sequence[float], items: Sequence[Item]) -> tuple[float, float]:
    """Yes/no accuracy, and the paired version that a constant bias cannot move.

    ``scores`` are :attr:`ItemScores.yes_no`. Paired: per item, the margin
    ``log P(yes) - log P(no)`` is larger for the gold candidate than for the distractor
    (ties count half).
    """
    asked = yes_no_questions(items)
    margins = [scores[2 * k] - scores[2 * k + 1] for k in range(len(asked))]
    right = sum((m > 0) == is_gold for m, (_, _, is_gold) in zip(margins, asked, strict=True))
    # yes_no_questions lists each item's gold question, then its distractor question.
    pairs = [(margins[k], margins[k + 1]) for k in range(0, len(margins), 2)]
    paired = sum(1.0 if g > d else 0.5 if g == d else 0.0 for g, d in pairs)
    return right / len(asked), paired / len(pairs)


def decoder_answers(
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    max_new_tokens: int,
    known: dict[tuple, tuple[torch.Tensor, str]] | None = None,
) -> list[str]:
    """Greedy open answers, one per item.

    Rows given all-zero vectors of one shape and the same question are one prompt, so
    they are generated once (``lit_zeroed``: one answer per read length, not per item).
    ``known`` (:attr:`RunScores.answers`, one per reader and run) keeps each answer
    by vectors object and question: ``lit_shuffled`` passes ``lit``'s vectors in another
    order, so its answers are ``lit``'s, not generated again.
    """
    known = {} if known is None else known
    keys = [(id(v), item.question, max_new_tokens) for v, item in zip(vectors, items, strict=True)]
    todo = [k for k, key in enumerate(keys) if key not in known and keys.index(key) == k]
    if todo:
        rows, questions = [vectors[k] for k in todo], [items[k].question for k in todo]
        ids = generate_ids_once(reader.generate_ids, rows, questions, max_new_tokens)
        for k, row in zip(todo, ids, strict=True):
            text = reader.tokenizer.decode(row, skip_special_tokens=True).strip()
            known[keys[k]] = (vectors[k], text)  # the tensor keeps its id
    return [known[key][1] for key in keys]


class ConditionReads:
    """Each condition's vectors, read (or derived) once, when a method first needs them.

    The real reads keep their raw spans too (:attr:`spans`): the probe pools those.
    """

    def __init__(
        self,
        reader: Reader,
        base: Reader | None,
        items: Sequence[Item],
        layer: int | None,
        seed: int,
    ) -> None:
        self.reader, self.base, self.items, self.layer, self.seed = reader, base, items, layer, seed
        self.done: dict[str, list[torch.Tensor]] = {}
        self.spans: list[torch.Tensor] = []
        """Raw reads ``[n_layers, span, d_model]`` of the items (after the real read)."""

    @property
    def layers(self) -> list[int]:
        return list(self.reader.spec.read_layers) if self.layer is None else [self.layer]

    def raw(self, dialogs: list[Dialog]) -> list[torch.Tensor]:
        """Raw reads of ``dialogs`` at the read layers."""
        return self.reader.read_spans(dialogs, self.layers, subject=[None] * len(dialogs))

    def __call__(self, condition: str) -> list[torch.Tensor]:
        if condition not in self.done:
            self.done[condition] = self._read(condition)
        return self.done[condition]

    def _read(self, condition: str) -> list[torch.Tensor]:
        dialogs = [item.dialog for item in self.items]
        if condition == "real":
            self.spans = self.raw(dialogs)
            return [self.reader.decoder.inputs(span, self.layers) for span in self.spans]
        if condition in ("zeroed", "shuffled"):
            labels = [item.label for item in self.items]
            return activation_conditions(self("real"), labels, self.seed)[condition]
        if condition == "text":
            return self._text_oracle()
        if condition == "user_only":
            return self.reader.read_many([i.user_dialog for i in self.items], self.layer)
        assert self.base is not None
        return self.base.read_many(dialogs, self.layer)

    def _text_oracle(self) -> list[torch.Tensor]:
        """Per item, the hidden system prompt's scaled mean input embedding in every slot."""
        check_text_oracle(self.reader)
        if any(item.dialog[0]["role"] != "system" for item in self.items):
            raise LatentQAError("lit_text_oracle reads the hidden system prompt: none here")
        hidden = [item.dialog[0]["content"] for item in self.items]
        n_slots = self.reader.decoder.spec.n_slots
        embeddings = self.reader.model.get_input_embeddings()
        tokens = text_soft_tokens(embeddings, self.reader.tokenizer, hidden)  # [n, d_model]
        dtype = embeddings.weight.dtype
        device = embeddings.weight.device
        return [row.to(device, dtype).expand(n_slots, -1).clone() for row in tokens]


def check_text_oracle(reader: Reader) -> None:
    """Refuse ``lit_text_oracle`` for a decoder without a projector, before any work.

    Raises:
        LatentQAError: The decoder has no projector.
    """
    if reader.decoder.projector is None:
        raise LatentQAError(
            "lit_text_oracle needs a decoder with a projector (trained with --projector "
            "linear or mlp): its soft tokens live in the input-embedding space"
        )


DECODER_CONDITIONS = {
    "lit": "real",
    "lit_zeroed": "zeroed",
    "lit_shuffled": "shuffled",
    "lit_text_oracle": "text",
    "no_system_prompt": "user_only",
    "base_patchscope": "base",
}
"""The decoder methods and the vectors each reads (see :class:`ConditionReads`)."""
