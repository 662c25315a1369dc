"""``latentqa eval relations``: read a country's relations from its subject activations.

Items are facts the target knows (see :mod:`latentqa.data.relations`) about held-out
subjects: the relations trained on (``heldout`` split) and one relation never trained on
(``heldout_relation``). Every method sees the target's activations on the subject's tokens
in a neutral sentence ("Tell me about France.") at the same read layer:

- ``lit``: the decoder answers the relation's question; the answer inside its reply is
  scored (``Relation.answer_in``: "Tokyo" in "The capital of this country is Tokyo.");
  ``lit_zeroed`` / ``lit_shuffled``: the same decoder with zeroed activations / another
  subject's;
- ``patchscope`` (training-free): the base model completes a few-shot prompt of
  statements ("The capital of Japan is Tokyo." ... "The capital of x is") whose ``x``
  holds the subject's last-token activation, patched at the read layer;
- ``linear_probe``: per relation, logistic regression on the mean subject activation
  over the training subjects' answers. It is scored on the same items as the others: it
  can only name an answer some training subject has, so on open relations (capital,
  demonym) it is wrong by construction, as in the LatentQA paper's probe baseline;
  ``seen_accuracy`` scores every method on the items whose answer it could name.

Answers are scored by normalised exact match and by fuzzy match (difflib ratio >= 0.8
or the gold answer inside the prediction).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from latentqa.answering import generate_ids_once
from latentqa.capture import left_pad, pad_token_id
from latentqa.conditions import activation_conditions
from latentqa.data.relations_facts import (
    RELATIONS,
    Fact,
    demos_for,
    few_shot_prompt,
    first_answer,
)
from latentqa.decoder.header_cache import share_header
from latentqa.decoder.prompt import placeholder_token_id
from latentqa.evals.probe import LogisticProbe
from latentqa.evals.relations_data import (
    RelationData,
    RelationItem,
    find_relation_data,
    load_relation_data,
    score,
)
from latentqa.evals.report import plot_per_layer
from latentqa.generation import generate_batch
from latentqa.models import unwrap_causal_lm
from latentqa.patch import patch_activations
from latentqa.reader import Reader

METHODS = ("lit", "lit_zeroed", "lit_shuffled", "patchscope", "linear_probe")
_LIT_METHODS = {"real": "lit", "zeroed": "lit_zeroed", "shuffled": "lit_shuffled"}
_MARK = "\u2063SUBJECT\u2063"


@torch.no_grad()
def read_subjects(
    reader: Reader, items: Sequence[RelationItem], layers: Sequence[int], batch_size: int = 32
) -> list[torch.Tensor]:
    """The target's activations on each item's subject tokens: ``[n_layers, span, d_model]``.

    Each distinct sentence is read once, with the decoder's adapters off.
    """
    keys = list(dict.fromkeys((i.sentence, i.fact.subject) for i in items))
    dialogs = [[{"role": "user", "content": sentence}] for sentence, _ in keys]
    spans = reader.read_spans(dialogs, layers, batch_size, subject=[s for _, s in keys])
    spans = [span.float().cpu() for span in spans]
    found = dict(zip(keys, spans, strict=True))
    return [found[(i.sentence, i.fact.subject)] for i in items]


def lit_answers(
    reader: Reader,
    vectors: Sequence[torch.Tensor],
    items: Sequence[RelationItem],
    max_new_tokens: int = 24,
    batch_size: int = 32,
) -> list[str]:
    """The decoder's greedy answers to each item's question about ``vectors[i]``: the
    answer inside each reply (a decoder trained on statements says "The capital of this
    country is Tokyo.", one trained on bare answers "Tokyo"; both score as "Tokyo")."""
    questions = [i.question for i in items]
    # lit_zeroed's rows of one shape and question are one prompt: generated once.
    ids = generate_ids_once(
        reader.generate_ids, list(vectors), questions, max_new_tokens, batch_size=batch_size
    )
    replies = [reader.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
    return [
        RELATIONS[i.fact.relation].answer_in(reply) for i, reply in zip(items, replies, strict=True)
    ]


@torch.no_grad()
def patchscope_answers(
    reader: Reader,
    vectors: torch.Tensor,
    items: Sequence[RelationItem],
    demos: Sequence[Fact],
    layer: int,
    max_new_tokens: int = 8,
    batch_size: int = 32,
) -> list[str]:
    """Few-shot completions by the base model with ``vectors[i]`` (``[n, d_model]``) patched.

    The subject's name in :func:`~latentqa.data.relations.few_shot_prompt` is replaced by
    one placeholder token whose output of block ``layer`` is overwritten by the vector.
    """
    tokenizer, model = reader.tokenizer, reader.model
    spaced = tokenizer(" x", add_special_tokens=False)["input_ids"]
    slot = spaced[0] if len(spaced) == 1 else placeholder_token_id(tokenizer)
    rows, where = [], []
    for item in items:
        shots = demos_for(demos, item.fact.relation, item.fact.subject)
        prefix, suffix = few_shot_prompt(item.fact.relation, shots, _MARK).split(" " + _MARK)
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        rows.append([*head, slot, *tokenizer(suffix, add_special_tokens=False)["input_ids"]])
        where.append(len(head))
    causal_lm, pad, answers = unwrap_causal_lm(model), pad_token_id(tokenizer), []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, attention = left_pad(chunk, pad, reader.device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, (tokens, at) in enumerate(zip(chunk, where[start:], strict=False)):
            mask[row, ids.shape[1] - len(tokens) + at] = True
        patch = vectors[start : start + len(chunk)].to(reader.device)
        with reader.handle.target():
            # The few-shot demonstrations every row of the batch shares run once.
            split = share_header(causal_lm, ids, attention, mask, "start", pad)
            with patch_activations(
                causal_lm, layer, split.placeholder_mask, patch, blocks=reader.handle.blocks
            ):
                new = generate_batch(
                    causal_lm,
                    split.input_ids,
                    split.attention_mask,
                    max_new_tokens=max_new_tokens,
                    pad_id=pad,
                    past_key_values=split.cache,
                )
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        answers += [first_answer(text) for text in texts]
    return answers


def probe_answers(
    train_features: torch.Tensor,
    train: Sequence[RelationItem],
    features: torch.Tensor,
    items: Sequence[RelationItem],
) -> list[str | None]:
    """Per relation, a logistic probe over the training subjects' answers.

    Items of relations without training subjects get ``None``.
    """
    predictions: list[str | None] = [None] * len(items)
    for relation in {i.fact.relation for i in items}:
        rows = [k for k, t in enumerate(train) if t.fact.relation == relation]
        if not rows:
            continue
        test = [k for k, i in enumerate(items) if i.fact.relation == relation]
        probe = LogisticProbe.fit(train_features[rows], [train[k].fact.answer for k in rows])
        for k, answer in zip(test, probe.predict(features[test]), strict=True):
            predictions[k] = answer
    return predictions


def _decoder_info(reader: Reader) -> dict[str, Any]:
    """The decoder's folder, read layers and training data (relations alone or joint).

    The training data is described by its ``meta.json`` (or, for the shipped relations
    decoder, the ``facts.json`` it carries); "unknown" when neither is found.
    """
    data = reader.spec.train_config.get("data")
    folders = [Path(data), Path(data).parent] if data else []
    folders += [Path(reader.decoder_path)] if reader.decoder_path else []
    trained_on = "unknown"
    for folder in folders:
        found = [folder / name for name in ("meta.json", "facts.json") if (folder / name).is_file()]
        if not found:
            continue
        blob = json.loads(found[0].read_text(encoding="utf-8"))
        if not str(blob.get("version", "")).startswith("latentqa-relations"):
            trained_on = "persona data only (built-in dataset)"
        elif blob.get("joint_with"):
            trained_on = "relations + " + blob["joint_with"]
        else:
            trained_on = "relations only"
        break
    path = str(reader.decoder_path) if reader.decoder_path else None
    return {
        "path": path,
        "read_layers": reader.spec.read_layers,
        "training_data": data,
        "trained_on": trained_on if path else "untrained (no adapter)",
    }


def relation_data_of(reader: Reader, data: str | Path | None = None) -> Path:
    """``data``, or the held-out facts that belong to ``reader``'s decoder (see
    :func:`~latentqa.evals.relations_data.find_relation_data`)."""
    return find_relation_data(data, reader.decoder_path, reader.spec)


def evaluate_relations(
    reader: Reader,
    data: str | Path | RelationData | None = None,
    *,
    layer: int | None = None,
    methods: Sequence[str] = METHODS,
    n: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 24,
    batch_size: int = 128,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run ``methods`` on the same held-out items; returns the result object.

    Args:
        reader: The decoder (its adapters off, its model is also the Patchscope base).
        data: A folder from ``latentqa data build --task relations``, or loaded data;
            ``None``: the facts that belong to the decoder (:func:`relation_data_of`).
        layer: Read layer for every method; default: the decoder's read layers for LIT and
            the first of them for the baselines.
        methods: A subset of :data:`METHODS`.
        n: At most this many items per relation.
        seed: Seed of the item sample and the shuffled baseline.
        max_new_tokens: Answer length limit.
        batch_size: Rows per forward pass and per generation batch (128: a held-out set
            of ~140 short prompts in one or two batches, whose shared chat header runs
            once; measured 47.6 s against 57.4 s at 32 in docs/performance.md, same answers).
        log: Progress messages.
    """
    if isinstance(data, RelationData):
        rel = data
    else:
        rel = load_relation_data(relation_data_of(reader, data), n, seed)
    items = rel.items
    lit_layers = list(reader.spec.read_layers) if layer is None else [layer]
    log(f"relations: {len(items)} items, read layers {lit_layers}")
    started = clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:  # a method's seconds: since the previous lap
        nonlocal clock
        now = time.perf_counter()
        seconds[name], clock = round(now - clock, 2), now

    spans = read_subjects(reader, items, lit_layers, batch_size)  # [n_layers, span, d] each
    vectors = [reader.decoder.inputs(s, lit_layers) for s in spans]
    # Shuffled: another subject's vectors (seeded draw, see latentqa.conditions).
    conditions = activation_conditions(vectors, [i.fact.subject for i in items], seed)
    lap("reads")
    answers: dict[str, list[str | None]] = {}
    for name, method in _LIT_METHODS.items():
        if method in methods:
            answers[method] = lit_answers(
                reader, conditions[name], items, max_new_tokens, batch_size
            )
            lap(method)
    # The baselines read the first of the decoder's layers: [n_items, span, d] each.
    first = [s[0] for s in spans]
    if "patchscope" in methods:
        last, demos = torch.stack([s[-1] for s in first]), [t.fact for t in rel.train]
        answers["patchscope"] = list(
            patchscope_answers(reader, last, items, demos, lit_layers[0], 8, batch_size)
        )
        lap("patchscope")
    if "linear_probe" in methods:
        answers["linear_probe"] = [None] * len(items)
        if rel.train:
            train = read_subjects(reader, rel.train, lit_layers[:1], batch_size)
            pooled = torch.stack([s[0].mean(0) for s in train])
            features = torch.stack([s.mean(0) for s in first])
            answers["linear_probe"] = probe_answers(pooled, rel.train, features, items)
        lap("linear_probe")
    scores = {name: score(preds, items) for name, preds in answers.items()}
    per_relation: dict[str, dict[str, Any]] = {}
    for name, (_, by_relation) in scores.items():
        for relation, values in by_relation.items():
            per_relation.setdefault(relation, {})[name] = values
    # every item's answers, so a reader can check any figure item by item
    examples = [
        {"subject": i.fact.subject, "relation": i.fact.relation, "gold": i.fact.answer}
        | {name: preds[k] for name, preds in answers.items()}
        for k, i in enumerate(items)
    ]
    return {
        "task": "relations",
        "n": len(items),
        "layer": lit_layers,
        "heldout_relation": rel.heldout_relation,
        "filter": rel.filter,
        "decoder": _decoder_info(reader),
        "seconds": round(time.perf_counter() - started, 2),
        "read_seconds": seconds["reads"],
        "methods": {
            name: {**summary, "seconds": seconds[name]} for name, (summary, _) in scores.items()
        },
        "per_relation": per_relation,
        "examples": examples,
    }


def sweep_layers(
    reader: Reader,
    data: str | Path | None,
    layers: Sequence[int],
    out: str | Path,
    *,
    layer_readers: dict[int, Reader] | None = None,
    n: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 24,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Accuracy per read layer for LIT and the baselines; writes PNG plots and JSON into ``out``.

    ``layer_readers`` maps a layer to a decoder trained on it; other layers are read by
    ``reader`` (one decoder reading every layer). Zeroed activations do not depend on the
    layer, so ``lit_zeroed`` is run once per decoder.
    """
    rel = load_relation_data(relation_data_of(reader, data), n, seed)
    per_layer: dict[int, dict[str, dict[str, Any]]] = {}
    zeroed: dict[int, dict[str, Any]] = {}
    for layer in layers:
        use = (layer_readers or {}).get(layer, reader)
        wanted = ["lit", "patchscope", "linear_probe"] + (
            ["lit_zeroed"] if id(use) not in zeroed else []
        )
        result = evaluate_relations(
            use, rel, layer=layer, methods=wanted, seed=seed, max_new_tokens=max_new_tokens, log=log
        )
        zeroed.setdefault(id(use), result["methods"].get("lit_zeroed", {}))
        methods = {**result["methods"], "lit_zeroed": zeroed[id(use)]}
        per_layer[layer] = {
            m: {k: v for k, v in values.items() if v is not None} for m, values in methods.items()
        }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for metric in ("accuracy", "seen_accuracy", "heldout_relation_accuracy"):
        name = f"relations_layers_{metric}.png"
        title = f"Relations: {metric.replace('_', ' ')} per read layer"
        plot_per_layer(per_layer, metric, folder / name, title)
        plots.append(name)
    (folder / "relations_layers.json").write_text(json.dumps(per_layer, indent=2) + "\n")
    how = "a decoder per layer" if layer_readers else "one decoder reading every layer"
    return {"per_layer": per_layer, "plots": plots, "lit_per_layer": how}
