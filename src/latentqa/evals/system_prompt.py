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

Data (:func:`build_items`): a ``latentqa data build`` folder (``train/`` for the probe,
``heldout/`` for the items), a folder in the public release layout (``system.json`` +
``qa.json``; the probe trains on ``train/`` inside it when there is one, else on a
seeded half of its labels), or by default the held-out set shipped in the package
(:data:`SHIPPED_DATA`).
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
from latentqa.questions import NO, YES, yes_no_question
from latentqa.reader import Reader

METHODS = (
    "lit", "lit_zeroed", "lit_shuffled", "no_system_prompt", "base_patchscope",
    "linear_probe", "black_box",
)  # fmt: skip
"""Every method the evaluation can run, in report order."""
QUESTION = "What was the assistant instructed to do?"
N_OPTIONS = 5
SHIPPED_DATA = Path(__file__).resolve().parents[1] / "resources" / "heldout" / "system-prompt"
"""The built-in builder's held-out ``system`` behaviours (release layout) and, in
``train/``, its training ``system`` behaviours for the probe; see its README.md."""
MEASURES = (
    "mc_accuracy", "mc_accuracy_calibrated", "yes_no_accuracy", "yes_no_paired",
    "open_win_rate",
)  # fmt: skip
CHANCE = {
    "mc_accuracy": 1 / N_OPTIONS,
    "mc_accuracy_calibrated": 1 / N_OPTIONS,
    "yes_no_accuracy": 0.5,
    "yes_no_paired": 0.5,
    "open_win_rate": 0.5,
}
"""Score of a method that knows nothing, per measure."""

Log = Callable[[str], None]
Dialog = list[dict[str, str]]


@dataclass
class Item:
    """One held-out dialog with its multiple-choice options."""

    label: str
    dialog: Dialog
    question: str
    gold: str
    options: list[str]
    """N_OPTIONS answers to the question, the gold one at ``gold_index``."""
    gold_index: int
    distractor: str
    """Another behaviour's answer: the reference for open-answer wins and the "No." yes/no
    question."""

    @property
    def user_dialog(self) -> Dialog:
        """The dialog without its leading system message (the ``no_system_prompt`` input)."""
        if self.dialog and self.dialog[0]["role"] == "system":
            return self.dialog[1:]
        return list(self.dialog)


def _answers(folder: Path, question: str) -> tuple[list, dict[str, str]]:
    dataset = load_latentqa(folder, ["system"])
    answer_of = {label: dict(pairs).get(question) for label, pairs in dataset.qa.items()}
    answer_of = {k: v for k, v in answer_of.items() if v}
    return [b for b in dataset.behaviors if b.label in answer_of], answer_of


def _is_release_folder(folder: Path) -> bool:
    return (folder / "system.json").is_file() and (folder / "qa.json").is_file()


def build_items(
    data: str | Path | None = None,
    question: str = QUESTION,
    n: int | None = None,
    seed: int = 0,
    log: Log = lambda _: None,
) -> tuple[list[Item], list[tuple[Dialog, str]]]:
    """Held-out items and the probe's training pairs ``(dialog, answer)``.

    Args:
        data: One of
            (a) a folder with ``train/`` and ``heldout/`` (from ``latentqa data build``):
            items from ``heldout/``, probe pairs from ``train/``;
            (b) a folder in the public release layout (``system.json`` + ``qa.json``):
            items from it; probe pairs from its ``train/`` subfolder when that holds
            ``system.json`` + ``qa.json``, else its labels are split 50/50 by a seeded
            shuffle into probe-training and evaluation labels (said in a log line);
            (c) ``None``: the shipped held-out set, :data:`SHIPPED_DATA` (layout b with
            ``train/``).
        question: The question asked about every item; behaviours without an answer to
            it are left out.
        n: Keep at most this many items (after a seeded shuffle).
        seed: Seed of options, distractors, shuffles and the 50/50 split.
        log: Progress messages.

    Raises:
        LatentQAError: An unknown folder layout, or fewer than ``N_OPTIONS`` distinct
            held-out answers to ``question``.
    """
    if data is None:
        root = SHIPPED_DATA
        log(f"data: the held-out set shipped in the package ({root})")
    else:
        root = Path(data)
    if (root / "heldout").is_dir() and (root / "train").is_dir():
        held, held_answers = _answers(root / "heldout", question)
        train, train_answers = _answers(root / "train", question)
    elif _is_release_folder(root):
        held, held_answers = _answers(root, question)
        if _is_release_folder(root / "train"):
            train, train_answers = _answers(root / "train", question)
        else:
            labels = sorted({b.label for b in held})
            random.Random(f"probe-split:{seed}").shuffle(labels)
            probe_labels = set(labels[: len(labels) // 2])
            train = [b for b in held if b.label in probe_labels]
            held = [b for b in held if b.label not in probe_labels]
            train_answers = held_answers
            held_answers = {k: v for k, v in held_answers.items() if k not in probe_labels}
            log(
                f"{root} has no training split: its labels are split 50/50 (seed {seed}) into "
                f"{len(probe_labels)} for the probe and {len(held_answers)} to evaluate"
            )
    else:
        raise LatentQAError(
            f"{root} needs train/ and heldout/ splits (from `latentqa data build`) or "
            "system.json + qa.json (the LatentQA release layout)"
        )
    overlap = {b.label for b in train} & set(held_answers)
    if overlap:
        log(f"leaving {len(overlap)} label(s) that are also evaluated out of the probe's training")
        train = [b for b in train if b.label not in overlap]
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


def yes_no_questions(items: Sequence[Item]) -> list[tuple[int, str, bool]]:
    """``(item index, question, right answer is yes)``: gold then distractor, per item."""
    return [
        (i, yes_no_question(item.question, candidate), is_gold)
        for i, item in enumerate(items)
        for candidate, is_gold in ((item.gold, True), (item.distractor, False))
    ]


def _yes_no_accuracy(
    reader: Reader, vectors: Sequence[torch.Tensor], items, desc: str
) -> tuple[float, float]:
    """Yes/no accuracy, and the paired version that a constant bias cannot move.

    Paired: per item, the margin ``log P(yes) - log P(no)`` is larger for the gold
    candidate than for the distractor (ties count half).
    """
    asked = yes_no_questions(items)
    rows = [(vectors[i], q, answer) for i, q, _ in asked for answer in (YES, NO)]
    scores = _score_rows(reader, rows, f"{desc} yes/no")
    margins = [scores[2 * k] - scores[2 * k + 1] for k in range(len(asked))]
    right = sum((m > 0) == is_gold for m, (_, _, is_gold) in zip(margins, asked, strict=True))
    # yes_no_questions lists each item's gold question, then its distractor question.
    pairs = [(margins[k], margins[k + 1]) for k in range(0, len(margins), 2)]
    paired = sum(1.0 if g > d else 0.5 if g == d else 0.0 for g, d in pairs)
    return right / len(asked), paired / len(pairs)


def _score_rows(reader: Reader, rows: Sequence[tuple], desc: str, batch: int = 32) -> list[float]:
    """Normalised log-likelihoods of (vectors, question, answer) rows, with a progress bar."""
    out: list[float] = []
    for start in tqdm(range(0, len(rows), batch), desc=desc, leave=False):
        chunk = rows[start : start + batch]
        out += reader.score_rows(
            [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], normalize=True
        )
    return out


def _option_scores(reader: Reader, vectors: Sequence[torch.Tensor], items, desc: str):
    """Per item, the normalised log-likelihood of each of its options."""
    rows = [(v, item.question, o) for v, item in zip(vectors, items, strict=True)
            for o in item.options]  # fmt: skip
    flat = _score_rows(reader, rows, desc)
    widths = [len(item.options) for item in items]
    starts = [sum(widths[:i]) for i in range(len(items))]
    return [flat[s : s + w] for s, w in zip(starts, widths, strict=True)]


class _ZeroedScores:
    """Normalised option scores given zeroed vectors, computed once per shape and item."""

    def __init__(self, reader: Reader, items: Sequence[Item]) -> None:
        self.reader, self.items = reader, items
        self.cache: dict[tuple, list[float]] = {}

    @staticmethod
    def _key(vectors: torch.Tensor, index: int) -> tuple:
        return (tuple(vectors.shape), vectors.dtype, index)

    def fill(self, vectors: Sequence[torch.Tensor], indices: Sequence[int]) -> None:
        """Score the options of items ``indices`` with zeros shaped like ``vectors`` (batched)."""
        todo = [(v, i) for v, i in zip(vectors, indices, strict=True)
                if self._key(v, i) not in self.cache]  # fmt: skip
        if not todo:
            return
        zeros = [torch.zeros_like(v) for v, _ in todo]
        scores = _option_scores(self.reader, zeros, [self.items[i] for _, i in todo], "zeroed")
        for (v, i), row in zip(todo, scores, strict=True):
            self.cache[self._key(v, i)] = row

    def __call__(self, vectors: torch.Tensor, index: int) -> list[float]:
        self.fill([vectors], [index])
        return self.cache[self._key(vectors, index)]


def _decoder_scores(reader: Reader, vectors: Sequence[torch.Tensor], items, zeroed, desc: str):
    """Normalised option scores; all-zero vectors come from (and fill) the zeroed cache."""
    zeroed.fill(vectors, range(len(vectors)))
    live = [i for i, v in enumerate(vectors) if v.any()]
    scores = _option_scores(reader, [vectors[i] for i in live], [items[i] for i in live], desc)
    by_index = dict(zip(live, scores, strict=True))
    return [by_index[i] if i in by_index else zeroed(v, i) for i, v in enumerate(vectors)]


def _decoder_answers(reader: Reader, vectors, items, max_new_tokens: int) -> list[str]:
    ids = reader.generate_ids(list(vectors), [item.question for item in items], max_new_tokens)
    return [reader.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def _decoder_method(
    name: str,
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    zeroed: _ZeroedScores,
    seed: int,
    open_answers: bool,
    max_new_tokens: int,
) -> dict[str, float | None]:
    scores = _decoder_scores(reader, vectors, items, zeroed, name)
    baseline = [zeroed(v, i) for i, v in enumerate(vectors)]
    picks = calibrated_picks(scores, baseline, random.Random(f"calibrated:{seed}:{name}"))
    calibrated = sum(p == item.gold_index for p, item in zip(picks, items, strict=True))
    yes_no, paired = _yes_no_accuracy(reader, vectors, items, name)
    result: dict[str, float | None] = {
        "mc_accuracy": _mc_accuracy(scores, items),
        "mc_accuracy_calibrated": calibrated / len(items),
        "yes_no_accuracy": yes_no,
        "yes_no_paired": paired,
        "open_win_rate": None,
    }
    if open_answers:
        answers = _decoder_answers(reader, vectors, items, max_new_tokens)
        result["open_win_rate"] = _open_win_rate(answers, items)
    return result


def pooled(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over read positions: ``[n_items, d_model]`` features for the probe."""
    return torch.stack([v.float().mean(0).cpu() for v in vectors])


def _measures(**values: float | None) -> dict[str, float | None]:
    return {measure: values.get(measure) for measure in MEASURES}


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
        ``{"task": "system-prompt", "n", "question", "methods": {method: {measure:
        value or None}}}`` with the measures of :data:`MEASURES` for ``lit``,
        ``lit_zeroed``, ``lit_shuffled``, ``no_system_prompt``, ``base_patchscope``,
        ``linear_probe`` and ``black_box``.
    """
    wanted = set(METHODS if methods is None else methods)
    unknown = wanted - set(METHODS)
    if unknown:
        raise LatentQAError(
            f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}"
        )
    items, train_pairs = build_items(data, question, n=n, seed=seed, log=log)
    dialogs = [item.dialog for item in items]
    log(f"{len(items)} held-out items, {len(train_pairs)} training dialogs for the probe")
    vectors = reader.read_many(dialogs, layer)
    conditions: dict[str, tuple[Reader, list[torch.Tensor]]] = {
        "lit": (reader, vectors),
        "lit_zeroed": (reader, [torch.zeros_like(v) for v in vectors]),
        "lit_shuffled": (reader, shuffled(vectors, items, seed)),
    }
    if "no_system_prompt" in wanted:
        user_only = reader.read_many([i.user_dialog for i in items], layer)
        conditions["no_system_prompt"] = (reader, user_only)
    if base is not None and "base_patchscope" in wanted:
        conditions["base_patchscope"] = (base, base.read_many(dialogs, layer))
    zeroed: dict[int, _ZeroedScores] = {}
    methods: dict[str, dict[str, float | None]] = {}
    for name, (who, vecs) in conditions.items():
        if name not in wanted:
            continue
        cache = zeroed.setdefault(id(who), _ZeroedScores(who, items))
        methods[name] = _decoder_method(
            name, who, vecs, items, cache, seed, open_answers, max_new_tokens
        )
    if "linear_probe" in wanted:
        methods["linear_probe"] = _probe(reader, train_pairs, vectors, items, layer, seed, log)
    if black_box and "black_box" in wanted:
        methods["black_box"] = _black_box(reader, items, open_answers, max_new_tokens)
    return {"task": "system-prompt", "n": len(items), "question": question, "methods": methods}


def _probe(reader, train_pairs, vectors, items, layer, seed, log) -> dict[str, float | None]:
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
    predicted = torch.nn.functional.normalize(probe.predict(pooled(vectors)), dim=-1)
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
    scores = [
        score_answers(reader.model, reader.tokenizer, v, item.question, item.options)
        for v, item in tqdm(list(zip(visible, items, strict=True)), desc="black box", leave=False)
    ]
    result = _measures(mc_accuracy=_mc_accuracy(scores, items))
    if open_answers:
        asked = [
            [*v, {"role": "user", "content": item.question}]
            for v, item in zip(visible, items, strict=True)
        ]
        answers = generate_replies(reader.model, reader.tokenizer, asked, max_new_tokens)
        result["open_win_rate"] = _open_win_rate(answers, items)
    return result
