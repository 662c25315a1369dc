"""``latentqa eval control-reading``: does the steering decoder read what it steers?

Steering follows the decoder's loss, so before any steering figure this evaluation
asks whether the decoder reads the behaviours of the control evaluations from a
reply's activations, on held-out items of :mod:`latentqa.data.control` (mood prompts
and StereoSet groups never trained on). Three closed questions, each scored by the
decoder's log-likelihood of every option:

- ``valence``: "positive or negative in tone?" about a reply in a valenced mood (2 options);
- ``tone``: the reply's mood among the nine tone answers (9 options);
- ``stereotype``: whether a StereoSet sentence relies on a stereotype about its group,
  stereotypical and anti-stereotypical sentences of the same rows, 50/50 (2 options).

Methods: ``lit`` (the decoder on the reply's activations), ``lit_zeroed`` and
``lit_shuffled`` (the same decoder with the activations zeroed, or taken from another
item of the same question: what it answers without reading), and ``linear_probe``
(logistic regression on the mean reply activation at the read layer, fit on training
items).
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from latentqa.data.control import (
    MOODS,
    STEREO_QUESTION,
    TONE_QUESTION,
    VALENCE_QUESTION,
    build_control_dataset,
)
from latentqa.data.format import Behavior, load_latentqa
from latentqa.decoder.contrast import check_plain_reads
from latentqa.errors import LatentQAError
from latentqa.evals.probe import LogisticProbe
from latentqa.evals.registry import Evaluation, Log
from latentqa.models import EMBEDDED_MODEL
from latentqa.reader import Reader
from latentqa.steer.encoding import encode_reply

if TYPE_CHECKING:
    from latentqa.evals.registry import SuiteContext

METHODS = ("lit", "lit_zeroed", "lit_shuffled", "linear_probe")
CHANCE = {"valence": 0.5, "tone": 1 / len(MOODS), "stereotype": 0.5}


@dataclass(frozen=True)
class ReadingItem:
    """One closed question about one reply: the options and the gold one's index."""

    behavior: Behavior
    question: str
    options: tuple[str, ...]
    gold: int


def _options(question: str, pairs: Sequence[Sequence[str]]) -> str | None:
    return next((a for q, a in pairs if q == question), None)


def reading_items(folder: Path, n: int, seed: int) -> dict[str, list[ReadingItem]]:
    """Up to ``n`` items per question from the dataset ``folder`` (balanced where binary)."""
    data = load_latentqa(folder)
    rng = random.Random(f"{seed}:control-reading")
    tones = [f"Its replies are {word}." for word, _ in MOODS.values()]
    by_question: dict[str, list[ReadingItem]] = {"valence": [], "tone": [], "stereotype": []}
    stereo_pairs: dict[str, list[ReadingItem]] = {}
    for behavior in data.behaviors:
        pairs = data.qa.get(behavior.label, ())
        if behavior.label.startswith("mood:"):
            tone = _options(TONE_QUESTION, pairs)
            by_question["tone"].append(
                ReadingItem(behavior, TONE_QUESTION, tuple(tones), tones.index(tone))
            )
            valence = _options(VALENCE_QUESTION, pairs)
            if valence is not None:
                options = ("Positive.", "Negative.")
                item = ReadingItem(behavior, VALENCE_QUESTION, options, options.index(valence))
                by_question["valence"].append(item)
        else:
            kind, row = behavior.label.split(":")
            answer = _options(STEREO_QUESTION, pairs)
            stereo_pairs.setdefault(row, []).append((kind, behavior, answer))
    for row in stereo_pairs.values():
        answers = {kind: answer for kind, _, answer in row}
        if set(answers) != {"stereo", "anti"}:
            continue
        options = (answers["stereo"], answers["anti"])
        for kind, behavior, _ in row:
            gold = 0 if kind == "stereo" else 1
            by_question["stereotype"].append(ReadingItem(behavior, STEREO_QUESTION, options, gold))
    for name, items in by_question.items():
        if name == "stereotype":  # whole rows, so both sentences of a row come together
            rows = [items[i : i + 2] for i in range(0, len(items), 2)]
            rng.shuffle(rows)
            by_question[name] = [item for row in rows[: n // 2] for item in row]
        else:
            rng.shuffle(items)
            del items[n:]
    return by_question


def _spans(reader: Reader, items: Sequence[ReadingItem]) -> list[torch.Tensor]:
    check_plain_reads(reader.spec.read_contrast, "control reading")
    encoded = [
        encode_reply(reader.tokenizer, i.behavior.stimulus_user, i.behavior.stimulus_model)
        for i in items
    ]
    return reader.read_encoded(encoded, reader.spec.read_layers)  # [n_layers, span, d]


def _derangement(n: int, seed: int) -> list[int]:
    order = list(range(n))
    if n < 2:
        return order
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


def _accuracy(reader: Reader, items: Sequence[ReadingItem], vectors: list[torch.Tensor]) -> float:
    rows = [(v, i.question, o) for v, i in zip(vectors, items, strict=True) for o in i.options]
    # As token tries: an item's read, question and template run once for all its options
    # (and for every item given the same vectors object).
    scores = reader.score_rows_shared(*map(list, zip(*rows, strict=True)))
    hits, cursor = 0, 0
    for item in items:
        option_scores = scores[cursor : cursor + len(item.options)]
        cursor += len(item.options)
        hits += int(max(range(len(option_scores)), key=option_scores.__getitem__) == item.gold)
    return hits / len(items)


def evaluate_control_reading(
    reader: Reader,
    data: str | Path | None = None,
    *,
    n: int = 120,
    n_probe: int = 400,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Accuracy per question and method (see the module docstring).

    Args:
        reader: The decoder (``shipped:control`` or one trained on control data).
        data: A folder from ``latentqa data build --task control`` (its ``heldout/`` is
            measured, its ``train/`` fits the probe); default: built afresh with seed 0,
            the split the shipped decoder was trained on.
        n: Items per question.
        n_probe: Training items per question for the probe.
        seed: Seed of the item sample and the shuffling.
        log: Progress messages.

    Returns:
        ``{"task", "n", "methods": {method: {question: accuracy}}, "chance", "config"}``.
    """
    if n < 2 or n_probe < 2:
        raise LatentQAError(f"need --n and --n-probe of at least 2, got {n} and {n_probe}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data) if data is not None else Path(tmp)
        if data is None:
            build_control_dataset(root, seed=0)
        for split in ("train", "heldout"):
            if not (root / split).is_dir():
                raise LatentQAError(
                    f"{root} has no {split}/: pass a folder from "
                    "`latentqa data build --task control`"
                )
        held = reading_items(root / "heldout", n, seed)
        train = reading_items(root / "train", n_probe, seed)
    methods: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    bar = tqdm(total=len(held), desc="control-reading")
    for name, items in held.items():
        bar.set_postfix_str(name)
        spans = _spans(reader, items)
        vectors = [reader.decoder.inputs(span) for span in spans]
        shuffled = [vectors[j] for j in _derangement(len(vectors), seed)]
        methods["lit"][name] = _accuracy(reader, items, vectors)
        zeros: dict[tuple, torch.Tensor] = {}  # one object per shape: one trie for all
        zeroed = [zeros.setdefault((*v.shape, v.dtype), torch.zeros_like(v)) for v in vectors]
        methods["lit_zeroed"][name] = _accuracy(reader, items, zeroed)
        methods["lit_shuffled"][name] = _accuracy(reader, items, shuffled)
        fit_spans = _spans(reader, train[name])
        pooled = lambda ss: torch.stack([s[-1].float().mean(0) for s in ss])  # noqa: E731
        probe = LogisticProbe.fit(pooled(fit_spans), [str(i.gold) for i in train[name]])
        guesses = probe.predict(pooled(spans))
        methods["linear_probe"][name] = sum(
            g == str(i.gold) for g, i in zip(guesses, items, strict=True)
        ) / len(items)
        if log:
            figures = ", ".join(f"{m} {methods[m][name]:.3f}" for m in METHODS)
            log(f"control-reading {name}: {figures}")
        bar.update(1)
    bar.close()
    return {
        "task": "control-reading",
        "n": sum(len(items) for items in held.values()),
        "n_per_question": {name: len(items) for name, items in held.items()},
        "methods": methods,
        "chance": CHANCE,
        "config": {"data": str(data) if data else None, "n": n, "n_probe": n_probe, "seed": seed},
    }


def plot_control_reading(result: dict[str, Any], out: str | Path) -> str:
    """Write ``control_reading.png`` (accuracy per question and method) into ``out``."""
    from latentqa.evals.report import plot_grouped_bars

    name = "control_reading.png"
    methods = result["methods"]
    groups = {q: {m: methods[m].get(q) for m in methods} for q in result["n_per_question"]}
    Path(out).mkdir(parents=True, exist_ok=True)
    plot_grouped_bars(groups, Path(out) / name, "accuracy", "Reading held-out replies")
    return name


@dataclass
class EvalControlReadingConfig:
    """Options of ``latentqa eval control-reading``."""

    data: str | None = None
    """folder from `latentqa data build --task control` (default: built afresh with seed 0,
    the split shipped:control was trained on)"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str = "shipped:control"
    """decoder folder trained on control data, or shipped:control"""
    n: int = 120
    """held-out items per question"""
    n_probe: int = 400
    """training items per question for the linear probe"""
    seed: int = 0
    """random seed"""
    out: str | None = None
    """folder for control_reading.png and control_reading.json"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def run(config: EvalControlReadingConfig, log: Log) -> dict[str, Any]:
    """Run ``latentqa eval control-reading``; the decoder and ``--out`` are checked before
    any model loads."""
    from latentqa.decoder.folder import preflight_decoder
    from latentqa.outdir import check_output_folder

    preflight_decoder(config.target, config.decoder, device=config.device)
    check_output_folder(config.out, "--out")
    reader = Reader.load(config.target, config.decoder, device=config.device)
    return evaluate_control_reading(
        reader, config.data, n=config.n, n_probe=config.n_probe, seed=config.seed, log=log
    )


def report(result: dict[str, Any], config: EvalControlReadingConfig, _log: Log) -> str:
    """Write the PNG and the JSON into ``--out`` (if given); return the table."""
    from latentqa.evals.report import markdown_table

    if config.out:
        plot_control_reading(result, config.out)
        (Path(config.out) / "control_reading.json").write_text(json.dumps(result, indent=1))
    return markdown_table(result, chance=CHANCE)


def run_in_suite(ctx: SuiteContext) -> dict[str, Any]:
    """``latentqa eval all``'s entry point: the evaluation and its plot."""
    reader = ctx.reader("control-reading")
    sizes = {} if ctx.n is None else {"n": ctx.n}
    result = evaluate_control_reading(
        reader, ctx.data.get("control-reading"), seed=ctx.seed, log=ctx.log, **sizes
    )
    result["plots"] = [plot_control_reading(result, ctx.out)]
    return result


EVALUATION = Evaluation(
    name="control-reading",
    help="does the steering decoder read tone and stereotypes from a reply?",
    description="Held-out replies (mood prompts and StereoSet groups never trained "
    "on): valence (2 options), tone (9 options) and stereotype (2 options), chosen by "
    "the decoder's likelihood, beside the same decoder with zeroed and shuffled "
    "activations and a linear probe. With no option: shipped:control.",
    config=EvalControlReadingConfig,
    run=run,
    report=report,
    suite=run_in_suite,
    default_decoder="shipped:control",
    headline="tone",
)
