"""Decoder scoring for the system-prompt evaluation: options, yes/no pairs, zeroed reads.

Each item's options (and its yes/no questions) are scored against one read: the rows
pass the same vectors object, so :meth:`latentqa.reader.Reader.score_rows` packs them
behind one shared prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from latentqa.evals.system_prompt_items import Item, yes_no_questions
from latentqa.questions import NO, YES
from latentqa.reader import Reader


def yes_no_accuracy(
    reader: Reader, vectors: Sequence[torch.Tensor], items, desc: str
) -> tuple[float, float]:
    """Yes/no accuracy, and the paired version that a constant bias cannot move.

    Paired: per item, the margin ``log P(yes) - log P(no)`` is larger for the gold
    candidate than for the distractor (ties count half).
    """
    asked = yes_no_questions(items)
    rows = [(vectors[i], q, answer) for i, q, _ in asked for answer in (YES, NO)]
    scores = score_rows(reader, rows, f"{desc} yes/no")
    margins = [scores[2 * k] - scores[2 * k + 1] for k in range(len(asked))]
    right = sum((m > 0) == is_gold for m, (_, _, is_gold) in zip(margins, asked, strict=True))
    # yes_no_questions lists each item's gold question, then its distractor question.
    pairs = [(margins[k], margins[k + 1]) for k in range(0, len(margins), 2)]
    paired = sum(1.0 if g > d else 0.5 if g == d else 0.0 for g, d in pairs)
    return right / len(asked), paired / len(pairs)


def score_rows(reader: Reader, rows: Sequence[tuple], desc: str, batch: int = 32) -> list[float]:
    """Normalised log-likelihoods of (vectors, question, answer) rows, with a progress bar."""
    out: list[float] = []
    for start in tqdm(range(0, len(rows), batch), desc=desc, leave=False):
        chunk = rows[start : start + batch]
        out += reader.score_rows(
            [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], normalize=True
        )
    return out


def option_scores(reader: Reader, vectors: Sequence[torch.Tensor], items, desc: str):
    """Per item, the normalised log-likelihood of each of its options."""
    rows = [
        (v, item.question, o) for v, item in zip(vectors, items, strict=True) for o in item.options
    ]
    flat = score_rows(reader, rows, desc)
    widths = [len(item.options) for item in items]
    starts = [sum(widths[:i]) for i in range(len(items))]
    return [flat[s : s + w] for s, w in zip(starts, widths, strict=True)]


class ZeroedScores:
    """Normalised option scores given zeroed vectors, computed once per shape and item."""

    def __init__(self, reader: Reader, items: Sequence[Item]) -> None:
        self.reader, self.items = reader, items
        self.cache: dict[tuple, list[float]] = {}

    @staticmethod
    def _key(vectors: torch.Tensor, index: int) -> tuple:
        return (tuple(vectors.shape), vectors.dtype, index)

    def fill(self, vectors: Sequence[torch.Tensor], indices: Sequence[int]) -> None:
        """Score the options of items ``indices`` with zeros shaped like ``vectors`` (batched)."""
        todo = [
            (v, i)
            for v, i in zip(vectors, indices, strict=True)
            if self._key(v, i) not in self.cache
        ]
        if not todo:
            return
        zeros = [torch.zeros_like(v) for v, _ in todo]
        scores = option_scores(self.reader, zeros, [self.items[i] for _, i in todo], "zeroed")
        for (v, i), row in zip(todo, scores, strict=True):
            self.cache[self._key(v, i)] = row

    def __call__(self, vectors: torch.Tensor, index: int) -> list[float]:
        self.fill([vectors], [index])
        return self.cache[self._key(vectors, index)]


def decoder_scores(reader: Reader, vectors: Sequence[torch.Tensor], items, zeroed, desc: str):
    """Normalised option scores; all-zero vectors come from (and fill) the zeroed cache."""
    zeroed.fill(vectors, range(len(vectors)))
    live = [i for i, v in enumerate(vectors) if v.any()]
    scores = option_scores(reader, [vectors[i] for i in live], [items[i] for i in live], desc)
    by_index = dict(zip(live, scores, strict=True))
    return [by_index[i] if i in by_index else zeroed(v, i) for i, v in enumerate(vectors)]


def decoder_answers(reader: Reader, vectors, items, max_new_tokens: int) -> list[str]:
    ids = reader.generate_ids(list(vectors), [item.question for item in items], max_new_tokens)
    return [reader.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
