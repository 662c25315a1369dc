"""``latentqa eval system-prompt``: uncover hidden system prompts from activations.

Items are held-out behaviours (never trained on) of the ``system`` kind: a system
prompt and a user turn. Readers see the activations of the user turn only (the
system prompt's positions are masked). Two measures:

- multiple choice: the gold answer among 5 (gold + 4 answers of other held-out
  behaviours to the SAME question, so question-answer fit alone cannot pick it),
  chosen by length-normalised log-likelihood; chance is 20%;
- open answers: a generated answer wins when its sentence embedding is closer to
  the gold answer than to a random other behaviour's answer; chance is 50%.

Baselines on the same items in the same run: the decoder with zeroed and with
shuffled activations, the untrained base model with the same patching
(training-free, SelfIE / Patchscope style), a ridge probe from pooled activations
to answer embeddings (trained on the training behaviours), and the target itself
as a black box shown the user turn and its own reply.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentqa.data.format import load_latentqa
from latentqa.errors import LatentQAError
from latentqa.evals.blackbox import generate_replies, score_answers
from latentqa.evals.embed import embedder
from latentqa.evals.probe import RidgeProbe
from latentqa.reader import Reader

QUESTION = "What was the assistant instructed to do?"
N_OPTIONS = 5


@dataclass
class Item:
    """One held-out dialog with its multiple-choice options."""

    label: str
    dialog: list[dict[str, str]]
    question: str
    gold: str
    options: list[str]
    """N_OPTIONS answers to the question, the gold one at ``gold_index``."""
    gold_index: int
    distractor: str
    """Another behaviour's answer, the reference for open-answer wins."""


def _answers(folder: Path, question: str) -> tuple[list, dict[str, str]]:
    dataset = load_latentqa(folder, ["system"])
    answer_of = {label: dict(pairs).get(question) for label, pairs in dataset.qa.items()}
    answer_of = {k: v for k, v in answer_of.items() if v}
    return [b for b in dataset.behaviors if b.label in answer_of], answer_of


def build_items(data: str | Path, question: str = QUESTION, n: int | None = None, seed: int = 0):
    """Held-out items and the training behaviours (for the probe) from a built dataset."""
    root = Path(data)
    if not (root / "heldout").is_dir() or not (root / "train").is_dir():
        raise LatentQAError(f"{root} needs train/ and heldout/ splits (from `latentqa data build`)")
    held, held_answers = _answers(root / "heldout", question)
    train, train_answers = _answers(root / "train", question)
    distinct = sorted(set(held_answers.values()))
    if len(distinct) < N_OPTIONS:
        raise LatentQAError(f"need at least {N_OPTIONS} held-out behaviours answering {question!r}")
    rng = random.Random(seed)
    items = []
    for behavior in held:
        gold = held_answers[behavior.label]
        others = [a for a in distinct if a != gold]
        options = rng.sample(others, N_OPTIONS - 1)
        index = rng.randrange(N_OPTIONS)
        options.insert(index, gold)
        items.append(
            Item(
                behavior.label,
                behavior.dialog(),
                question,
                gold,
                options,
                index,
                rng.choice(others),
            )
        )
    rng.shuffle(items)
    train_pairs = [(b.dialog(), train_answers[b.label]) for b in train]
    return items[:n] if n else items, train_pairs


def shuffled(vectors: Sequence[torch.Tensor], items: Sequence[Item], seed: int) -> list:
    """Each item's vectors replaced by those of an item with another label."""
    rng = random.Random(seed + 1)
    out = []
    for i, item in enumerate(items):
        choices = [j for j, other in enumerate(items) if other.label != item.label]
        out.append(vectors[rng.choice(choices)] if choices else vectors[(i + 1) % len(items)])
    return out


def _mc_accuracy(scores: Sequence[Sequence[float]], items: Sequence[Item]) -> float:
    picks = [max(range(len(s)), key=s.__getitem__) for s in scores]
    return sum(p == item.gold_index for p, item in zip(picks, items, strict=True)) / len(items)


def _open_win_rate(answers: Sequence[str], items: Sequence[Item]) -> float:
    model = embedder()
    a = model.embed(list(answers))
    gold = model.embed([item.gold for item in items])
    other = model.embed([item.distractor for item in items])
    wins = ((a * gold).sum(-1) > (a * other).sum(-1)).float()
    return float(wins.mean())


def _decoder_scores(reader: Reader, vectors: Sequence[torch.Tensor], items, desc: str):
    return [
        reader.score_vectors(v, item.question, item.options, normalize=True)
        for v, item in tqdm(list(zip(vectors, items, strict=True)), desc=desc, leave=False)
    ]


def _decoder_answers(reader: Reader, vectors, items, max_new_tokens: int) -> list[str]:
    ids = reader.generate_ids(list(vectors), [item.question for item in items], max_new_tokens)
    return [reader.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def pooled(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over read positions: ``[n_items, d_model]`` features for the probe."""
    return torch.stack([v.float().mean(0).cpu() for v in vectors])


def evaluate_system_prompt(
    reader: Reader,
    base: Reader | None,
    data: str | Path,
    *,
    n: int | None = None,
    seed: int = 0,
    question: str = QUESTION,
    open_answers: bool = True,
    max_new_tokens: int = 32,
    layer: int | None = None,
    black_box: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """Run every method on the same held-out items; returns the result object."""
    items, train_pairs = build_items(data, question, n=n, seed=seed)
    dialogs = [item.dialog for item in items]
    log(f"{len(items)} held-out items, {len(train_pairs)} training dialogs for the probe")
    vectors = reader.read_many(dialogs, layer)
    conditions = {
        "lit": vectors,
        "lit_zeroed": [torch.zeros_like(v) for v in vectors],
        "lit_shuffled": shuffled(vectors, items, seed),
    }
    methods: dict[str, dict[str, float | None]] = {}
    for name, vecs in conditions.items():
        methods[name] = {
            "mc_accuracy": _mc_accuracy(_decoder_scores(reader, vecs, items, name), items)
        }
        if open_answers:
            methods[name]["open_win_rate"] = _open_win_rate(
                _decoder_answers(reader, vecs, items, max_new_tokens), items
            )
    if base is not None:
        base_vectors = base.read_many(dialogs, layer)
        scores = _decoder_scores(base, base_vectors, items, "base")
        methods["base_patchscope"] = {"mc_accuracy": _mc_accuracy(scores, items)}
        if open_answers:
            answers = _decoder_answers(base, base_vectors, items, max_new_tokens)
            methods["base_patchscope"]["open_win_rate"] = _open_win_rate(answers, items)
    methods["linear_probe"] = _probe(reader, train_pairs, vectors, items, layer, seed)
    if black_box:
        methods["black_box"] = _black_box(reader, items, open_answers, max_new_tokens)
    return {"task": "system-prompt", "n": len(items), "question": question, "methods": methods}


def _probe(reader, train_pairs, vectors, items, layer, seed) -> dict[str, float | None]:
    """Ridge from pooled activations to answer embeddings; nearest option wins."""
    train_vectors = reader.read_many([dialog for dialog, _ in train_pairs], layer)
    model = embedder()
    probe = RidgeProbe.fit(pooled(train_vectors), model.embed([a for _, a in train_pairs]), seed)
    predicted = torch.nn.functional.normalize(probe.predict(pooled(vectors)), dim=-1)
    scores = [
        (model.embed(item.options) @ p).tolist() for p, item in zip(predicted, items, strict=True)
    ]
    return {"mc_accuracy": _mc_accuracy(scores, items), "open_win_rate": None}


def _black_box(reader: Reader, items, open_answers: bool, max_new_tokens: int) -> dict:
    """The target sees the user turn and its own reply (made under the hidden prompt)."""
    replies = generate_replies(reader.model, reader.tokenizer, [item.dialog for item in items])
    visible = [
        [item.dialog[-1], {"role": "assistant", "content": reply}]
        for item, reply in zip(items, replies, strict=True)
    ]
    scores = [
        score_answers(reader.model, reader.tokenizer, v, item.question, item.options)
        for v, item in tqdm(list(zip(visible, items, strict=True)), desc="black box", leave=False)
    ]
    result: dict[str, float | None] = {"mc_accuracy": _mc_accuracy(scores, items)}
    if open_answers:
        asked = [
            [*v, {"role": "user", "content": item.question}]
            for v, item in zip(visible, items, strict=True)
        ]
        answers = generate_replies(reader.model, reader.tokenizer, asked, max_new_tokens)
        result["open_win_rate"] = _open_win_rate(answers, items)
    return result
