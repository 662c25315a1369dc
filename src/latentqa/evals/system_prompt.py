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
- ``mc_yes_no_accuracy``: the same options, each asked as a yes/no question
  (:func:`latentqa.questions.yes_no_question`); the pick is the option with the largest
  margin ``log P(yes) - log P(no)`` (how a decoder trained on yes/no answers chooses;
  the answer's likelihood is how one trained on open answers does); chance is 20%;
- ``paired_yes_no_accuracy``: the same questions, counted per item as right when the margin
  ``log P(yes) - log P(no)`` is larger for the gold answer than for the distractor: a
  decoder that says yes (or no) to everything scores 0.5 on yes/no accuracy whatever it
  reads, while this measure shows whether its answers move with the truth; chance 50%;
- ``read_mark_precision`` (``lit`` only): of the items whose pick the decoder marks
  "read" (evidence against 16 reference dialogs' reads above a threshold tuned on the
  other half of the labels), the share whose pick is gold; with ``read_mark_coverage``
  (the share marked) and ``read_mark_threshold`` (see
  :mod:`latentqa.evals.system_prompt_marks`);
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
not have is ``None``. Asked for by name only (:data:`OPT_IN_METHODS`): ``lit_text_oracle``,
the decoder given, in every soft-token slot, its own mean input embedding of the hidden
system prompt (what a fitted projector aims at; :func:`~latentqa.decoder.projector.
text_soft_tokens`) instead of a read: the ceiling of a decoder that reads through its
projector, which tells a decoder that cannot put such a vector into words from a
projector that does not reach it. ``linear_probe_contrast``: the probe on each read minus
the same dialog's read without its system prompt
(:mod:`latentqa.evals.system_prompt_probe`).

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

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentqa.errors import LatentQAError
from latentqa.evals.blackbox import generate_replies, score_answer_sets
from latentqa.evals.system_prompt_items import (
    N_OPTIONS,
    QUESTION,
    SETS,
    SHIPPED_DATA,
    SHIPPED_REPLIES,
    Item,
    Log,
    build_items,
    reply_key,
    with_replies,
    yes_no_questions,
)
from latentqa.evals.system_prompt_marks import margin_gaps, pick_evidence, read_marks
from latentqa.evals.system_prompt_open import open_marks, open_win_rate
from latentqa.evals.system_prompt_pooled import POOLED, pooled_measures
from latentqa.evals.system_prompt_probe import DEFAULT_MAX_EXTRA, probe_method
from latentqa.evals.system_prompt_scoring import (
    DECODER_CONDITIONS,
    ConditionReads,
    RunScores,
    check_text_oracle,
    decoder_answers,
    item_scores,
    reference_means,
    yes_no_accuracy,
)
from latentqa.questions import RECONSTRUCT_QUESTION
from latentqa.reader import Reader

__all__ = [
    "CHANCE",
    "MEASURES",
    "METHODS",
    "N_OPTIONS",
    "OPT_IN_METHODS",
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
    "lit_text_oracle",
    "no_system_prompt",
    "base_patchscope",
    "linear_probe",
    "linear_probe_contrast",
    "black_box",
)
"""Every method the evaluation can run, in report order."""
OPT_IN_METHODS = ("lit_text_oracle", "linear_probe_contrast")
"""Methods run only when named: diagnostics, not part of the default run."""
PROBES = {"linear_probe": {}, "linear_probe_contrast": {"contrast": True}}
"""The ridge probes (:mod:`latentqa.evals.system_prompt_probe`) and their options."""
MEASURES = (
    "mc_accuracy",
    "mc_accuracy_calibrated",
    "mc_yes_no_accuracy",
    "yes_no_accuracy",
    "paired_yes_no_accuracy",
    "open_win_rate",
    "read_mark_precision",
    "read_mark_coverage",
    "read_mark_threshold",
)
CHANCE = {
    "mc_accuracy": 1 / N_OPTIONS,
    "mc_accuracy_calibrated": 1 / N_OPTIONS,
    "mc_yes_no_accuracy": 1 / N_OPTIONS,
    "yes_no_accuracy": 0.5,
    "paired_yes_no_accuracy": 0.5,
    "open_win_rate": 0.5,
    POOLED: 1 / N_OPTIONS,
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


def _decoder_method(
    name: str,
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[Item],
    zeroed: RunScores,
    seed: int,
    open_answers: bool,
    max_new_tokens: int,
    likelihood: bool = True,
    marks: bool = False,
) -> dict[str, float | None]:
    scored = item_scores(reader, vectors, items, zeroed, name, likelihood=likelihood)
    yes_no, paired = yes_no_accuracy(scored.yes_no, items)
    result = _measures(
        mc_yes_no_accuracy=_mc_accuracy(scored.option_margins, items),
        yes_no_accuracy=yes_no,
        paired_yes_no_accuracy=paired,
    )
    if scored.options is not None and scored.baseline is not None:  # not --no-likelihood
        rng = random.Random(f"calibrated:{seed}:{name}")
        picks = calibrated_picks(scored.options, scored.baseline, rng)
        calibrated = sum(p == item.gold_index for p, item in zip(picks, items, strict=True))
        result["mc_accuracy"] = _mc_accuracy(scored.options, items)
        result["mc_accuracy_calibrated"] = calibrated / len(items)
    if name == "lit" and reader.spec.picks_by_yes_no:  # marks on the pick it makes
        result.update(read_marks(*margin_gaps(scored.option_margins), items, seed))
    elif name == "lit" and scored.options is not None:
        found = pick_evidence(reference_means(reader, "read marks"), scored.options, items)
        result.update(read_marks(*found, items, seed))
    if open_answers:
        answers = decoder_answers(reader, vectors, items, max_new_tokens, zeroed.answers)
        result["open_win_rate"] = open_win_rate(answers, items)
        if marks and name == "lit":
            result.update(open_marks(reader, vectors, items, answers, seed))
    return result


def _measures(**values: float | None) -> dict[str, float | None]:
    return {measure: values.get(measure) for measure in MEASURES}


def evaluate_system_prompt(
    reader: Reader,
    base: Reader | None,
    data: str | Path | None = None,
    *,
    n: int | None = None,
    seed: int = 0,
    question: str | None = None,
    open_answers: bool = True,
    max_new_tokens: int = 32,
    layer: int | None = None,
    black_box: bool = True,
    log: Log = lambda _: None,
    methods: Sequence[str] | None = None,
    probe_data: Sequence[str] | None = None,
    probe_max_extra: int = DEFAULT_MAX_EXTRA,
    item_set: str = "user",
    answers: str = "instructions",
    likelihood: bool = True,
    pooled: bool = False,
    open_marks: bool = False,
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
        question: The question asked about every item; default: the ``answers`` mode's
            (:data:`QUESTION` for ``instructions``, the reconstruction question
            "What exactly did the hidden instructions say?" for ``prompts``).
        open_answers: Also generate open answers (needs the sentence embedder).
        max_new_tokens: Length limit of open answers.
        layer: Read this target block instead of the decoder's read layers.
        black_box: Include the ``black_box`` method.
        log: Progress messages.
        methods: Run only these of :data:`METHODS` (default: all but
            :data:`OPT_IN_METHODS`).
        probe_data: Extra ``system`` datasets (release layout) whose system prompts the
            probe also trains on; default: the decoder's own extra training data where
            it exists here (:func:`~latentqa.evals.system_prompt_probe.extra_folders`).
        probe_max_extra: Read at most this many extra dialogs for the probe.
        item_set: ``user`` (set A: the user turn is read) or ``replies`` (set B: the user
            turn and the target's own greedy reply under the hidden prompt; shipped for
            the default data, generated by the target for other data).
        answers: The options: ``instructions`` (each held-out behaviour's answer to the
            question) or ``prompts`` (each dialog's hidden system prompt, verbatim, among
            other labels' prompts); see :func:`build_items`.
        likelihood: Score each option's likelihood as the decoder's answer; ``False``
            leaves those rows out of the decoder methods, with ``mc_accuracy``,
            ``mc_accuracy_calibrated`` and the read marks (for decoders trained on yes/no
            questions alone, whose answer likelihoods mean nothing).
        pooled: Also pick per hidden prompt, pooling its dialogs' yes/no margins
            (:mod:`~latentqa.evals.system_prompt_pooled`) for each decoder method.
        open_marks: Also calibrate the read mark of ``lit``'s open answers
            (:mod:`~latentqa.evals.system_prompt_open`; needs ``open_answers``).

    Returns:
        ``{"task": "system-prompt", "set", "n", "question", "answers", "seconds",
        "methods": {method: {measure: value or None, "seconds": wall time}}}`` with the
        measures of :data:`MEASURES` for ``lit``, ``lit_zeroed``, ``lit_shuffled``,
        ``no_system_prompt``, ``base_patchscope``, ``linear_probe`` and ``black_box``.
        A method's ``seconds`` include the reads and zeroed rows it was the first to
        need (``lit`` pays for the real reads, which later methods reuse); the top-level
        ``seconds`` is the whole run's.
    """
    started = time.perf_counter()
    default = [m for m in METHODS if m not in OPT_IN_METHODS]
    wanted = set(default if methods is None else methods)
    unknown = wanted - set(METHODS)
    if unknown:
        raise LatentQAError(
            f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}"
        )
    if "lit_text_oracle" in wanted:
        check_text_oracle(reader)
    if item_set not in SETS:
        raise LatentQAError(f"unknown set {item_set!r}; choose from {', '.join(SETS)}")
    if question is None:
        question = RECONSTRUCT_QUESTION if answers == "prompts" else QUESTION
    items, train_pairs = build_items(data, question, n=n, seed=seed, log=log, answers=answers)
    if item_set == "replies":
        items = items_with_replies(reader, items, data, log)
    log(f"{len(items)} held-out items, {len(train_pairs)} training dialogs for the probe")
    reads = ConditionReads(reader, base, items, layer, seed)
    zeroed: dict[int, RunScores] = {}
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
            cache = zeroed.setdefault(id(who), RunScores(who))
            vectors = reads(DECODER_CONDITIONS[name])
            args = (seed, open_answers, max_new_tokens, likelihood, open_marks)
            results[name] = _decoder_method(name, who, vectors, items, cache, *args)
            if pooled:
                results[name].update(pooled_measures(who, vectors, items, cache, name))
        elif name in PROBES:
            probe = dict(probe_data=probe_data, max_extra=probe_max_extra, **PROBES[name])
            found = probe_method(reader, reads, items, train_pairs, seed, log, **probe)
            results[name] = _measures(**found)
        else:
            # The black box sees the target's reply under the hidden prompt: set B's items
            # carry it; set A's get set B's replies (shipped, or generated as set B's are).
            seen = items if item_set == "replies" else items_with_replies(reader, items, data, log)
            results[name] = _black_box(reader, seen, open_answers, max_new_tokens)
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    return {
        "task": "system-prompt",
        "set": item_set,
        "n": len(items),
        "question": question,
        "answers": answers,
        # The decoder's own multiple-choice pick: by yes/no margin if trained on yes/no.
        "headline": "mc_yes_no_accuracy" if reader.spec.picks_by_yes_no else "mc_accuracy",
        "seconds": round(time.perf_counter() - started, 2),
        "methods": results,
    }


def items_with_replies(reader: Reader, items, data, log: Log) -> list[Item]:
    """Set B's items: each dialog with the target's reply under the hidden prompt, shipped
    for the shipped data, else generated by the target now."""
    if data is None:
        return with_replies(items, json.loads(SHIPPED_REPLIES.read_text()))
    log(f"set replies: generating the target's reply to {len(items)} held-out dialogs")
    dialogs = [item.dialog for item in items]
    texts = generate_replies(reader.model, reader.tokenizer, dialogs)
    return with_replies(items, {reply_key(d): t for d, t in zip(dialogs, texts, strict=True)})


def _black_box(reader: Reader, items, open_answers: bool, max_new_tokens: int) -> dict:
    """The target sees the user turn and its own reply (``items`` with replies, as from
    :func:`items_with_replies`)."""
    visible = [item.dialog[-2:] for item in items]  # the user turn, the reply
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
        # 64 rows a batch (the default 16 is what made the shipped replies): the same
        # greedy answers in fewer decoding steps (docs/performance.md).
        answers = generate_replies(
            reader.model, reader.tokenizer, asked, max_new_tokens, batch_size=64
        )
        result["open_win_rate"] = open_win_rate(answers, items)
    return result
