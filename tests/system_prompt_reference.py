"""The system-prompt evaluation as it scored before token tries, kept as the reference.

:func:`reference_evaluation` is ``evaluate_system_prompt`` of the commit before the
evaluation computed shared prompts once (issue #24): every decoder row through
``Reader.score_rows`` in batches of 32 (a read shared up to its last placeholder),
option rows and yes/no rows in separate calls, zeroed rows per (shape, item), open
answers one row per item, and the black box one forward per item with full logits
(its off-by-one, fixed in ``score_answers`` by the same change, is not kept: the
black box's figure is compared with the corrected scorer).
Tests compare the current evaluation with it: scores equal up to float round-off, and
every figure equal.
"""

from __future__ import annotations

import random

import torch

import latentqa.evals.system_prompt as sp
from latentqa.conditions import activation_conditions
from latentqa.evals.blackbox import generate_replies, score_answers
from latentqa.evals.system_prompt_items import build_items, yes_no_questions
from latentqa.evals.system_prompt_open import open_win_rate
from latentqa.questions import NO, YES, yes_no_question


def score_rows(reader, rows, batch=32):
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        out += reader.score_rows(
            [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], normalize=True
        )
    return out


def option_scores(reader, vectors, items):
    rows = [
        (v, item.question, o) for v, item in zip(vectors, items, strict=True) for o in item.options
    ]
    flat = score_rows(reader, rows)
    starts = [sum(len(item.options) for item in items[:i]) for i in range(len(items))]
    return [flat[s : s + len(item.options)] for s, item in zip(starts, items, strict=True)]


class RunScores:
    def __init__(self, reader, items):
        self.reader, self.items, self.cache = reader, items, {}

    def fill(self, vectors, indices):
        todo = [
            (v, i) for v, i in zip(vectors, indices, strict=True) if (v.shape, i) not in self.cache
        ]
        if todo:
            zeros = [torch.zeros_like(v) for v, _ in todo]
            scores = option_scores(self.reader, zeros, [self.items[i] for _, i in todo])
            for (v, i), row in zip(todo, scores, strict=True):
                self.cache[(v.shape, i)] = row

    def __call__(self, vectors, index):
        self.fill([vectors], [index])
        return self.cache[(vectors.shape, index)]


def decoder_scores(reader, vectors, items, zeroed):
    zeroed.fill(vectors, range(len(vectors)))
    live = [i for i, v in enumerate(vectors) if v.any()]
    scores = dict(
        zip(
            live,
            option_scores(reader, [vectors[i] for i in live], [items[i] for i in live]),
            strict=True,
        )
    )
    return [scores[i] if i in scores else zeroed(v, i) for i, v in enumerate(vectors)]


def yes_no_scores(reader, vectors, items):
    rows = [(vectors[i], q, a) for i, q, _ in yes_no_questions(items) for a in (YES, NO)]
    return score_rows(reader, rows)


def option_margins(reader, vectors, items):
    rows = [
        (v, yes_no_question(item.question, o), a)
        for v, item in zip(vectors, items, strict=True)
        for o in item.options
        for a in (YES, NO)
    ]
    flat = score_rows(reader, rows)
    margins = [flat[k] - flat[k + 1] for k in range(0, len(flat), 2)]
    starts = [sum(len(item.options) for item in items[:i]) for i in range(len(items))]
    return [margins[s : s + len(item.options)] for s, item in zip(starts, items, strict=True)]


def decoder_answers(reader, vectors, items, max_new_tokens):
    ids = reader.generate_ids(list(vectors), [item.question for item in items], max_new_tokens)
    return [reader.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def decoder_method(name, reader, vectors, items, zeroed, seed, open_answers, max_new_tokens):
    """One decoder method's raw scores and figures, the old way."""
    scores = decoder_scores(reader, vectors, items, zeroed)
    baseline = [zeroed(v, i) for i, v in enumerate(vectors)]
    rng = random.Random(f"calibrated:{seed}:{name}")
    picks = sp.calibrated_picks(scores, baseline, rng)
    yes_no = yes_no_scores(reader, vectors, items)
    accuracy, paired = sp.yes_no_accuracy(yes_no, items)
    margins = option_margins(reader, vectors, items)
    figures = {
        "mc_accuracy": sp._mc_accuracy(scores, items),
        "mc_accuracy_calibrated": sum(p == i.gold_index for p, i in zip(picks, items, strict=True))
        / len(items),
        "mc_yes_no_accuracy": sp._mc_accuracy(margins, items),
        "yes_no_accuracy": accuracy,
        "paired_yes_no_accuracy": paired,
        "open_win_rate": None,
    }
    if open_answers:
        answers = decoder_answers(reader, vectors, items, max_new_tokens)
        figures["open_win_rate"] = open_win_rate(answers, items)
    raw = {"options": scores, "baseline": baseline, "yes_no": yes_no, "margins": margins}
    return figures, raw


def black_box_scores(reader, items):
    replies = generate_replies(reader.model, reader.tokenizer, [item.dialog for item in items])
    visible = [
        [item.dialog[-1], {"role": "assistant", "content": reply}]
        for item, reply in zip(items, replies, strict=True)
    ]
    return [
        score_answers(reader.model, reader.tokenizer, v, item.question, item.options)
        for v, item in zip(visible, items, strict=True)
    ]


def reference_evaluation(reader, base, data, *, question, n, seed=0, max_new_tokens=32):
    """Every decoder method's figures and raw scores, and the black box's option scores."""
    items, _ = build_items(data, question, n=n, seed=seed)
    dialogs = [item.dialog for item in items]
    vectors = reader.read_many(dialogs)
    conditions = activation_conditions(vectors, [item.label for item in items], seed)
    runs = {
        "lit": (reader, vectors),
        "lit_zeroed": (reader, conditions["zeroed"]),
        "lit_shuffled": (reader, conditions["shuffled"]),
        "no_system_prompt": (reader, reader.read_many([i.user_dialog for i in items])),
        "base_patchscope": (base, base.read_many(dialogs)),
    }
    zeroed: dict[int, RunScores] = {}
    figures, raw = {}, {}
    for name, (who, vecs) in runs.items():
        cache = zeroed.setdefault(id(who), RunScores(who, items))
        figures[name], raw[name] = decoder_method(
            name, who, vecs, items, cache, seed, True, max_new_tokens
        )
    black_box = black_box_scores(reader, items)
    figures["black_box"] = {"mc_accuracy": sp._mc_accuracy(black_box, items)}
    raw["black_box"] = {"options": black_box}
    return items, figures, raw
