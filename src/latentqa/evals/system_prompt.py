"""``latentqa eval system-prompt``: uncover hidden system prompts from activations.

Items are held-out behaviours (never trained on) of the ``system`` kind: a system
prompt and a user turn. Readers see the activations of the user turn only (the
system prompt's positions are masked). Measures, each on the same items:

- ``mc_accuracy``: the gold answer among 5 (gold + 4 answers of other held-out
  behaviours to the SAME question, so question-answer fit alone cannot pick it),
  chosen by length-normalised log-likelihood; chance is 20%;
- ``mc_accuracy_calibrated``: the same options, chosen by how much the method's
  vectors raise each option's normalised log-likelihood over zeroed vectors of the
  same shape (pointwise mutual information: the question's prior cancels). For
  ``lit_zeroed`` every difference is 0 and a seeded random pick breaks the tie, so
  it scores chance; chance is 20%;
- ``yes_no_accuracy``: two questions per item (:func:`latentqa.questions.yes_no_question`),
  one with the gold answer (right answer :data:`~latentqa.questions.YES`) and one with
  the item's distractor, another behaviour's answer (right answer
  :data:`~latentqa.questions.NO`); the method says yes when it gives ``YES`` a higher
  log-likelihood than ``NO``. The share of the 2n questions answered right; chance 50%;
- ``yes_no_paired``: the same questions, counted per item as right when the margin
  ``log P(yes) - log P(no)`` is larger for the gold answer than for the distractor: a
  decoder that says yes (or no) to everything scores 0.5 on yes/no accuracy whatever it
  reads, while this measure shows whether its answers move with the truth; chance 50%;
- ``open_win_rate``: a generated answer wins when its sentence embedding is closer to
  the gold answer than to the distractor; chance is 50%.

Methods: ``lit`` (the decoder), the same decoder with zeroed (``lit_zeroed``) and with
shuffled (``lit_shuffled``) activations, and reading the same user turn with no
system prompt at all (``no_system_prompt``: what the decoder says when nothing was
hidden); the untrained base model with the same patching (``base_patchscope``,
SelfIE / Patchscope style); a ridge probe from pooled activations to answer
embeddings (``linear_probe``: multiple choice by the nearest option; yes/no says yes
to a candidate when its cosine with the prediction exceeds the mean cosine over the
item's 5 options); and the target itself as a black box shown the user turn and its
own reply (``black_box``: multiple choice and open answers). A measure a method does
not have is ``None``.

Cost: each condition's vectors are read once; each item's rows (options, yes/no) are
scored as one token trie and a row given zeroed vectors once per run
(:mod:`latentqa.evals.system_prompt_scoring`); every method's wall time is in the result
(``seconds``).

Data (:func:`build_items`): a ``latentqa data build`` folder (``train/`` for the probe,
``heldout/`` for the items), a folder in the public release layout (``system.json`` +
``qa.json``; the probe trains on ``train/`` inside it when there is one, else on a
seeded half of its labels), or by default the held-out set shipped in the package
(:data:`SHIPPED_DATA`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentqa.conditions import activation_conditions
from latentqa.errors import LatentQAError
from latentqa.evals.blackbox import generate_replies, score_answer_sets
from latentqa.evals.embed import embedder
from latentqa.evals.probe import RidgeProbe
from latentqa.evals.system_prompt_items import (
    N_OPTIONS,
    QUESTION,
    SHIPPED_DATA,
    Item,
    Log,
    build_items,
    yes_no_questions,
)
from latentqa.evals.system_prompt_scoring import (
    ZeroedScores,
    decoder_answers,
    item_scores,
    yes_no_accuracy,
)
from latentqa.reader import Reader

__all__ = [
    "CHANCE",
    "MEASURES",
    "METHODS",
    "N_OPTIONS",
    "QUESTION",
    "SHIPPED_DATA",
    "Item",
    "build_items",
    "calibrated_picks",
    "evaluate_system_prompt",
    "yes_no_questions",
]

METHODS = (
    "lit",
    "lit_zeroed",
    "lit_shuffled",
    "no_system_prompt",
    "base_patchscope",
    "linear_probe",
    "black_box",
)
"""Every method the evaluation can run, in report order."""
MEASURES = (
    "mc_accuracy",
    "mc_accuracy_calibrated",
    "yes_no_accuracy",
    "yes_no_paired",
    "open_win_rate",
)
CHANCE = {
    "mc_accuracy": 1 / N_OPTIONS,
    "mc_accuracy_calibrated": 1 / N_OPTIONS,
    "yes_no_accuracy": 0.5,
    "yes_no_paired": 0.5,
    "open_win_rate": 0.5,
}
"""Score of a method that knows nothing, per measure."""


def _mc_accuracy(scores: Sequence[Sequence[float]], items: Sequence[Item]) -> float:
    picks = [max(range(len(s)), key=s.__getitem__) for s in scores]
    return sum(p == item.gold_index for p, item in zip(picks, items, strict=True)) / len(items)


def calibrated_picks(
    scores: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]], rng: random.Random
) -> list[int]:
    """Per row, the option maximising ``score - baseline``; ``rng`` picks among exact ties."""
    picks = []
    for row, zero in zip(scores, baseline, strict=True):
        gain = [s - z for s, z in zip(row, zero, strict=True)]
        best = max(gain)
        picks.append(rng.choice([j for j, g in enumerate(gain) if g == best]))
    return picks


def _open_win_rate(answers: Sequence[str], items: Sequence[Item]) -> float:
    model = embedder()
    a = model.embed(list(answers))
    gold = model.embed([item.gold for item in items])
    other = model.embed([item.distractor for item in items])
    wins = ((a * gold).sum(-1) > (a * other).sum(-1)).float()
    return float(wins.mean())


def _decoder_method(
    name: str,
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    zeroed: ZeroedScores,
    seed: int,
    open_answers: bool,
    max_new_tokens: int,
) -> dict[str, float | None]:
    scored = item_scores(reader, vectors, items, zeroed, name)
    rng = random.Random(f"calibrated:{seed}:{name}")
    picks = calibrated_picks(scored.options, scored.baseline, rng)
    calibrated = sum(p == item.gold_index for p, item in zip(picks, items, strict=True))
    yes_no, paired = yes_no_accuracy(scored.yes_no, items)
    result: dict[str, float | None] = {
        "mc_accuracy": _mc_accuracy(scored.options, items),
        "mc_accuracy_calibrated": calibrated / len(items),
        "yes_no_accuracy": yes_no,
        "yes_no_paired": paired,
        "open_win_rate": None,
    }
    if open_answers:
        answers = decoder_answers(reader, vectors, items, max_new_tokens)
        result["open_win_rate"] = _open_win_rate(answers, items)
    return result


def pooled(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over read positions: ``[n_items, d_model]`` features for the probe."""
    return torch.stack([v.float().mean(0).cpu() for v in vectors])


def _measures(**values: float | None) -> dict[str, float | None]:
    return {measure: values.get(measure) for measure in MEASURES}


class _Reads:
    """Each condition's vectors, read (or derived) once, when a method first needs them."""

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

    def __call__(self, condition: str) -> list[torch.Tensor]:
        if condition not in self.done:
            self.done[condition] = self._read(condition)
        return self.done[condition]

    def _read(self, condition: str) -> list[torch.Tensor]:
        dialogs = [item.dialog for item in self.items]
        if condition == "real":
            return self.reader.read_many(dialogs, self.layer)
        if condition in ("zeroed", "shuffled"):
            labels = [item.label for item in self.items]
            return activation_conditions(self("real"), labels, self.seed)[condition]
        if condition == "user_only":
            return self.reader.read_many([i.user_dialog for i in self.items], self.layer)
        assert self.base is not None
        return self.base.read_many(dialogs, self.layer)


DECODER_CONDITIONS = {
    "lit": "real",
    "lit_zeroed": "zeroed",
    "lit_shuffled": "shuffled",
    "no_system_prompt": "user_only",
    "base_patchscope": "base",
}
"""The decoder methods and the vectors each reads (see :class:`_Reads`)."""


def evaluate_system_prompt(
    reader: Reader,
    base: Reader | None,
    data: str | Path | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    question: str = QUESTION,
    open_answers: bool = True,
    max_new_tokens: int = 32,
    layer: int | None = None,
    black_box: bool = True,
    log: Log = lambda _: None,
    methods: Sequence[str] | None = None,
) -> dict:
    """Run every method on the same held-out items; returns the result object.

    Each condition's vectors are read once, when the first method needs them (the real
    reads serve ``lit``, ``lit_zeroed``, ``lit_shuffled`` and ``linear_probe``), and a
    row given zeroed vectors is scored once for every method that needs it.

    Args:
        reader: The decoder.
        base: The untrained target reading like the decoder (``base_patchscope``);
            ``None`` leaves that method out.
        data: See :func:`build_items`; ``None``: the shipped held-out set.
        n: Evaluate at most this many items.
        seed: Seed of options, shuffles, the probe and tie-breaking.
        question: The question asked about every item.
        open_answers: Also generate open answers (needs the sentence embedder).
        max_new_tokens: Length limit of open answers.
        layer: Read this target block instead of the decoder's read layers.
        black_box: Include the ``black_box`` method.
        log: Progress messages.
        methods: Run only these of :data:`METHODS` (default: all).

    Returns:
        ``{"task": "system-prompt", "n", "question", "seconds", "methods": {method:
        {measure: value or None, "seconds": wall time}}}`` with the measures of
        :data:`MEASURES` for ``lit``, ``lit_zeroed``, ``lit_shuffled``,
        ``no_system_prompt``, ``base_patchscope``, ``linear_probe`` and ``black_box``.
        A method's ``seconds`` include the reads and zeroed rows it was the first to
        need (``lit`` pays for the real reads, which later methods reuse); the top-level
        ``seconds`` is the whole run's.
    """
    started = time.perf_counter()
    wanted = set(METHODS if methods is None else methods)
    unknown = wanted - set(METHODS)
    if unknown:
        raise LatentQAError(
            f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}"
        )
    items, train_pairs = build_items(data, question, n=n, seed=seed, log=log)
    log(f"{len(items)} held-out items, {len(train_pairs)} training dialogs for the probe")
    reads = _Reads(reader, base, items, layer, seed)
    zeroed: dict[int, ZeroedScores] = {}
    results: dict[str, dict[str, float | None]] = {}
    for name in METHODS:
        if name not in wanted or (name == "base_patchscope" and base is None):
            continue
        if name == "black_box" and not black_box:
            continue
        start = time.perf_counter()
        if name in DECODER_CONDITIONS:
            who = base if name == "base_patchscope" else reader
            assert who is not None
            cache = zeroed.setdefault(id(who), ZeroedScores(who))
            vectors = reads(DECODER_CONDITIONS[name])
            args = (seed, open_answers, max_new_tokens)
            results[name] = _decoder_method(name, who, vectors, items, cache, *args)
        elif name == "linear_probe":
            results[name] = _probe(reader, train_pairs, reads, items, layer, seed, log)
        else:
            results[name] = _black_box(reader, items, open_answers, max_new_tokens)
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    return {
        "task": "system-prompt",
        "n": len(items),
        "question": question,
        "seconds": round(time.perf_counter() - started, 2),
        "methods": results,
    }


def _probe(reader, train_pairs, reads, items, layer, seed, log) -> dict[str, float | None]:
    """Ridge from pooled activations to answer embeddings.

    Multiple choice: the option nearest (cosine) to the prediction. Yes/no: yes to a
    candidate when its cosine with the prediction exceeds the mean cosine over the
    item's options.
    """
    if len(train_pairs) < 2:
        log("linear_probe: fewer than 2 training dialogs answer the question; not fitted")
        return _measures()
    train_vectors = reader.read_many([dialog for dialog, _ in train_pairs], layer)
    model = embedder()
    probe = RidgeProbe.fit(pooled(train_vectors), model.embed([a for _, a in train_pairs]), seed)
    predicted = torch.nn.functional.normalize(probe.predict(pooled(reads("real"))), dim=-1)
    scores, right = [], 0
    for p, item in zip(predicted, items, strict=True):
        option_cos = model.embed(item.options) @ p
        scores.append(option_cos.tolist())
        gold_cos = float(option_cos[item.gold_index])
        distractor_cos = float(model.embed([item.distractor])[0] @ p)
        mean = float(option_cos.mean())
        right += (gold_cos > mean) + (distractor_cos <= mean)
    return _measures(
        mc_accuracy=_mc_accuracy(scores, items), yes_no_accuracy=right / (2 * len(items))
    )


def _black_box(reader: Reader, items, open_answers: bool, max_new_tokens: int) -> dict:
    """The target sees the user turn and its own reply (made under the hidden prompt)."""
    replies = generate_replies(reader.model, reader.tokenizer, [item.dialog for item in items])
    visible = [
        [item.dialog[-1], {"role": "assistant", "content": reply}]
        for item, reply in zip(items, replies, strict=True)
    ]
    questions = [item.question for item in items]
    options = [item.options for item in items]
    bar = lambda chunks: tqdm(list(chunks), desc="black box", leave=False)  # noqa: E731
    scores = score_answer_sets(
        reader.model, reader.tokenizer, visible, questions, options, progress=bar
    )
    result = _measures(mc_accuracy=_mc_accuracy(scores, items))
    if open_answers:
        asked = [
            [*v, {"role": "user", "content": item.question}]
            for v, item in zip(visible, items, strict=True)
        ]
        answers = generate_replies(reader.model, reader.tokenizer, asked, max_new_tokens)
        result["open_win_rate"] = _open_win_rate(answers, items)
    return result
