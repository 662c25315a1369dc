"""``latentqa eval relations``: read a country's relations from its subject activations.

Items are facts the target knows (see :mod:`latentqa.data.relations`) about held-out
subjects: the relations trained on (``heldout`` split) and one relation never trained on
(``heldout_relation``). Every method sees the target's activations on the subject's tokens
in a neutral sentence ("Tell me about France.") at the same read layer:

- ``lit``: the decoder answers the relation's question; ``lit_zeroed`` / ``lit_shuffled``:
  the same decoder with zeroed activations / another subject's;
- ``patchscope`` (training-free): the base model completes a few-shot prompt of the
  relation ("Q: What is the capital of Japan? A: Tokyo ... Q: What is the capital of x?
  A:") whose ``x`` holds the subject's last-token activation, patched at the read layer;
- ``linear_probe``: logistic regression on the mean subject activation, trained on the
  training subjects, for relations with recurring answers (``closed``); others get ``None``.

Answers are scored by normalised exact match and by fuzzy match (difflib ratio >= 0.8
or the gold answer inside the prediction).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentqa.data.relations import (
    RELATIONS,
    Fact,
    demos_for,
    exact_match,
    few_shot_prompt,
    first_answer,
    fuzzy_match,
    subject_span,
)
from latentqa.decoder import decoder_inputs, unwrap_causal_lm
from latentqa.errors import LatentQAError
from latentqa.evals.blackbox import plain_target
from latentqa.evals.probe import LogisticProbe
from latentqa.evals.report import markdown_table, plot_per_layer
from latentqa.layout import placeholder_token_id
from latentqa.patch import patch_activations
from latentqa.read import left_pad, pad_token_id, read_encoded
from latentqa.reader import Reader

METHODS = ("lit", "lit_zeroed", "lit_shuffled", "patchscope", "linear_probe")
_MARK = "\u2063SUBJECT\u2063"


@dataclass(frozen=True)
class RelationItem:
    """One fact about one subject, read from the subject's tokens in ``sentence``."""

    fact: Fact
    sentence: str
    split: str
    """``train``, ``heldout`` (held-out subject) or ``heldout_relation``."""

    @property
    def question(self) -> str:
        return RELATIONS[self.fact.relation].question


@dataclass
class RelationData:
    """Evaluation items (held-out subjects) and training-subject facts, from ``facts.json``."""

    items: list[RelationItem]
    train: list[RelationItem]
    heldout_relation: str
    filter: dict[str, dict[str, int]] = field(default_factory=dict)


def load_relation_data(data: str | Path, n: int | None = None, seed: int = 0) -> RelationData:
    """Read ``DATA/facts.json``; ``n`` caps the items per relation (a seeded sample)."""
    path = Path(data) / "facts.json"
    if not path.is_file():
        raise LatentQAError(f"{path} is missing: build it with `latentqa data build --task "
                            "relations`")  # fmt: skip
    blob = json.loads(path.read_text(encoding="utf-8"))
    subjects, held_rel = blob["subjects"], blob["heldout_relation"]
    items, train = [], []
    for raw in blob["facts"]:
        fact = Fact(raw["subject"], raw["relation"], raw["answer"], tuple(raw["aliases"]))
        info = subjects[fact.subject]
        split = "heldout_relation" if fact.relation == held_rel else info["split"]
        item = RelationItem(fact, info["sentence"], split)
        (train if info["split"] == "train" else items).append(item)
    if n is not None:
        rng = random.Random(f"{seed}:relations:n")
        by_relation: dict[str, list[RelationItem]] = {}
        for item in items:
            by_relation.setdefault(item.fact.relation, []).append(item)
        items = [i for group in by_relation.values() for i in rng.sample(group, min(n, len(group)))]
    if not items:
        raise LatentQAError(f"{path} has no facts about held-out subjects to evaluate")
    return RelationData(items, train, held_rel, blob.get("filter", {}))


@torch.no_grad()
def read_subjects(
    reader: Reader, items: Sequence[RelationItem], layers: Sequence[int], batch_size: int = 32
) -> list[torch.Tensor]:
    """The target's activations on each item's subject tokens: ``[n_layers, span, d_model]``.

    Each distinct sentence is read once, with the decoder's adapters off.
    """
    keys = list(dict.fromkeys((i.sentence, i.fact.subject) for i in items))
    tokenizer = reader.tokenizer
    encoded = [subject_span(tokenizer, [{"role": "user", "content": s}], subj) for s, subj in keys]
    spans: list[torch.Tensor] = []
    with plain_target(reader.model):
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            spans += [s.float().cpu() for s in read_encoded(reader.model, chunk, pad_token_id(
                tokenizer), list(layers), layers_path=reader.layers_path)]  # fmt: skip
    found = dict(zip(keys, spans, strict=True))
    return [found[(i.sentence, i.fact.subject)] for i in items]


def lit_answers(reader: Reader, vectors: Sequence[torch.Tensor], items: Sequence[RelationItem],
                max_new_tokens: int = 12, batch_size: int = 32) -> list[str]:  # fmt: skip
    """The decoder's greedy answers to each item's question about ``vectors[i]``."""
    ids = reader.generate_ids(list(vectors), [i.question for i in items], max_new_tokens,
                              batch_size=batch_size)  # fmt: skip
    return [reader.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


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
        with plain_target(model), patch_activations(causal_lm, layer, mask, patch,
                                                    layers_path=reader.layers_path):  # fmt: skip
            out = causal_lm.generate(input_ids=ids, attention_mask=attention, do_sample=False,
                                     max_new_tokens=max_new_tokens, pad_token_id=pad)  # fmt: skip
        texts = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        answers += [first_answer(text) for text in texts]
    return answers


def probe_answers(
    train_features: torch.Tensor, train: Sequence[RelationItem],
    features: torch.Tensor, items: Sequence[RelationItem],
) -> list[str | None]:  # fmt: skip
    """Per closed relation, a logistic probe over the training subjects' answers.

    Items of open relations, or of relations without training subjects, get ``None``.
    """
    predictions: list[str | None] = [None] * len(items)
    for relation in {i.fact.relation for i in items if RELATIONS[i.fact.relation].closed}:
        rows = [k for k, t in enumerate(train) if t.fact.relation == relation]
        if not rows:
            continue
        probe = LogisticProbe.fit(train_features[rows], [train[k].fact.answer for k in rows])
        test = [k for k, i in enumerate(items) if i.fact.relation == relation]
        for k, answer in zip(test, probe.predict(features[test]), strict=True):
            predictions[k] = answer
    return predictions


def _mean(flags: Sequence[bool | None]) -> float | None:
    if not flags or any(f is None for f in flags):
        return None
    return sum(bool(f) for f in flags) / len(flags)


def score(
    predictions: Sequence[str | None], items: Sequence[RelationItem]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Exact / fuzzy accuracy over groups of items; ``None`` where a prediction is missing.

    Returns:
        The summary: ``accuracy`` and ``fuzzy_accuracy`` (trained relations on held-out
        subjects), ``closed_accuracy`` (the closed ones among them),
        ``heldout_relation_accuracy`` and ``heldout_relation_fuzzy_accuracy``, ``n``
        (predictions made); and ``{relation: {accuracy, fuzzy_accuracy, n}}``.
    """
    pairs = list(zip(predictions, items, strict=True))
    exact = [None if p is None else exact_match(p, i.fact.aliases) for p, i in pairs]
    fuzzy = [None if p is None else fuzzy_match(p, i.fact.aliases) for p, i in pairs]

    def rows(keep: Callable[[RelationItem], bool]) -> list[int]:
        return [k for k, item in enumerate(items) if keep(item)]

    trained = rows(lambda i: i.split == "heldout")
    closed = rows(lambda i: i.split == "heldout" and RELATIONS[i.fact.relation].closed)
    held = rows(lambda i: i.split == "heldout_relation")
    summary = {
        "accuracy": _mean([exact[k] for k in trained]),
        "fuzzy_accuracy": _mean([fuzzy[k] for k in trained]),
        "closed_accuracy": _mean([exact[k] for k in closed]),
        "heldout_relation_accuracy": _mean([exact[k] for k in held]),
        "heldout_relation_fuzzy_accuracy": _mean([fuzzy[k] for k in held]),
        "n": sum(p is not None for p in predictions),
    }
    per_relation = {}
    for relation in dict.fromkeys(i.fact.relation for i in items):
        picked = rows(lambda i, r=relation: i.fact.relation == r)
        per_relation[relation] = {
            "accuracy": _mean([exact[k] for k in picked]),
            "fuzzy_accuracy": _mean([fuzzy[k] for k in picked]),
            "n": len(picked),
        }
    return summary, per_relation


def _decoder_info(reader: Reader) -> dict[str, Any]:
    """The decoder's folder, read layers and training data (relations alone or joint)."""
    data = reader.spec.extra.get("train_config", {}).get("data")
    trained_on = "unknown"
    for folder in [Path(data), Path(data).parent] if data else []:
        meta = folder / "meta.json"
        if meta.is_file():
            blob = json.loads(meta.read_text(encoding="utf-8"))
            if str(blob.get("version", "")).startswith("latentqa-relations"):
                trained_on = "relations + " + blob["joint_with"] if blob.get("joint_with") \
                    else "relations only"  # fmt: skip
            else:
                trained_on = "persona data only (built-in dataset)"
            break
    path = str(reader.decoder_path) if reader.decoder_path else None
    return {"path": path, "read_layers": reader.spec.read_layers, "training_data": data,
            "trained_on": trained_on if path else "untrained (no adapter)"}  # fmt: skip


def evaluate_relations(
    reader: Reader,
    data: str | Path | RelationData,
    *,
    layer: int | None = None,
    methods: Sequence[str] = METHODS,
    n: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 12,
    batch_size: int = 32,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run ``methods`` on the same held-out items; returns the result object.

    Args:
        reader: The decoder (its adapters off, its model is also the Patchscope base).
        data: A folder from ``latentqa data build --task relations``, or loaded data.
        layer: Read layer for every method; default: the decoder's read layers for LIT and
            the first of them for the baselines.
        methods: A subset of :data:`METHODS`.
        n: At most this many items per relation.
        seed: Seed of the item sample and the shuffled baseline.
        max_new_tokens: Answer length limit.
        batch_size: Rows per forward pass.
        log: Progress messages.
    """
    rel = data if isinstance(data, RelationData) else load_relation_data(data, n, seed)
    items = rel.items
    lit_layers = list(reader.spec.read_layers) if layer is None else [layer]
    log(f"relations: {len(items)} items, read layers {lit_layers}")
    spans = read_subjects(reader, items, lit_layers, batch_size)  # [n_layers, span, d] each
    vectors = [decoder_inputs(s, reader.spec) for s in spans]
    rng = random.Random(seed + 1)
    conditions = {
        "lit": lambda: vectors,
        "lit_zeroed": lambda: [torch.zeros_like(v) for v in vectors],
        "lit_shuffled": lambda: [
            vectors[rng.choice([j for j, o in enumerate(items) if o.fact.subject != i.fact.subject]
                               or [k])] for k, i in enumerate(items)
        ],
    }  # fmt: skip
    answers: dict[str, list[str | None]] = {
        name: list(lit_answers(reader, make(), items, max_new_tokens, batch_size))
        for name, make in conditions.items()
        if name in methods
    }
    # The baselines read the first of the decoder's layers: [n_items, span, d] each.
    first = [s[0] for s in spans]
    if "patchscope" in methods:
        last, demos = torch.stack([s[-1] for s in first]), [t.fact for t in rel.train]
        answers["patchscope"] = list(
            patchscope_answers(reader, last, items, demos, lit_layers[0], 8, batch_size)
        )
    if "linear_probe" in methods:
        answers["linear_probe"] = [None] * len(items)
        if rel.train:
            train = read_subjects(reader, rel.train, lit_layers[:1], batch_size)
            pooled = torch.stack([s[0].mean(0) for s in train])
            features = torch.stack([s.mean(0) for s in first])
            answers["linear_probe"] = probe_answers(pooled, rel.train, features, items)
    scores = {name: score(preds, items) for name, preds in answers.items()}
    per_relation: dict[str, dict[str, Any]] = {}
    for name, (_, by_relation) in scores.items():
        for relation, values in by_relation.items():
            per_relation.setdefault(relation, {})[name] = values
    examples = [
        {"subject": i.fact.subject, "relation": i.fact.relation, "gold": i.fact.answer}
        | {name: preds[k] for name, preds in answers.items()}
        for k, i in enumerate(items[:20])
    ]
    return {
        "task": "relations",
        "n": len(items),
        "layer": lit_layers,
        "heldout_relation": rel.heldout_relation,
        "filter": rel.filter,
        "decoder": _decoder_info(reader),
        "methods": {name: summary for name, (summary, _) in scores.items()},
        "per_relation": per_relation,
        "examples": examples,
    }


def sweep_layers(
    reader: Reader, data: str | Path, layers: Sequence[int], out: str | Path, *,
    layer_readers: dict[int, Reader] | None = None, n: int | None = None, seed: int = 0,
    max_new_tokens: int = 12, log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """Accuracy per read layer for LIT and the baselines; writes PNG plots and JSON into ``out``.

    ``layer_readers`` maps a layer to a decoder trained on it; other layers are read by
    ``reader`` (one decoder reading every layer). Zeroed activations do not depend on the
    layer, so ``lit_zeroed`` is run once per decoder.
    """
    rel = load_relation_data(data, n, seed)
    per_layer: dict[int, dict[str, dict[str, Any]]] = {}
    zeroed: dict[int, dict[str, Any]] = {}
    for layer in layers:
        use = (layer_readers or {}).get(layer, reader)
        wanted = ["lit", "patchscope", "linear_probe"] + (["lit_zeroed"] if id(use) not in zeroed
                                                          else [])  # fmt: skip
        result = evaluate_relations(use, rel, layer=layer, methods=wanted, seed=seed,
                                    max_new_tokens=max_new_tokens, log=log)  # fmt: skip
        zeroed.setdefault(id(use), result["methods"].get("lit_zeroed", {}))
        methods = {**result["methods"], "lit_zeroed": zeroed[id(use)]}
        per_layer[layer] = {m: {k: v for k, v in values.items() if v is not None}
                            for m, values in methods.items()}  # fmt: skip
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    for metric in ("accuracy", "closed_accuracy", "heldout_relation_accuracy"):
        name = f"relations_layers_{metric}.png"
        title = f"Relations: {metric.replace('_', ' ')} per read layer"
        plot_per_layer(per_layer, metric, folder / name, title)
        plots.append(name)
    (folder / "relations_layers.json").write_text(json.dumps(per_layer, indent=2) + "\n")
    how = "a decoder per layer" if layer_readers else "one decoder reading every layer"
    return {"per_layer": per_layer, "plots": plots, "lit_per_layer": how}


def relations_markdown(result: dict[str, Any]) -> str:
    """The methods table, then accuracy (exact / fuzzy) per relation, then filter counts."""
    lines = [markdown_table(result), "", f"Held-out relation: `{result['heldout_relation']}`; "
             f"decoder: {result['decoder']['trained_on']}.", ""]  # fmt: skip
    names = list(result["methods"])
    lines += ["| relation | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for relation, methods in result["per_relation"].items():
        cells = []
        for name in names:
            m = methods.get(name, {})
            acc, fuzzy = m.get("accuracy"), m.get("fuzzy_accuracy")
            cells.append("–" if acc is None else f"{acc:.2f} / {fuzzy:.2f}")
        n = next(iter(methods.values()))["n"] if methods else 0
        lines.append(f"| {relation} (n={n}) | " + " | ".join(cells) + " |")
    lines += ["", "Facts the target knows (few-shot filter): " + ", ".join(
        f"{r} {c['known']}/{c['candidates']}" for r, c in result["filter"].items())]  # fmt: skip
    return "\n".join(lines)


def run_in_suite(ctx: Any) -> dict[str, Any]:
    """Entry point for ``latentqa eval all`` (see :class:`latentqa.evals.all.SuiteContext`)."""
    data, reader = ctx.data_for("relations"), ctx.reader("relations")
    result = evaluate_relations(reader, data, n=ctx.n, seed=ctx.seed, log=ctx.log)
    if ctx.layers:
        result.update(sweep_layers(reader, data, ctx.layers, ctx.out, n=ctx.n, seed=ctx.seed,
                                   log=ctx.log))  # fmt: skip
    result["markdown"] = relations_markdown(result)
    return result


def add_relations_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval relations`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "relations", help="read country relations (capital, currency, ...) from subject tokens",
        description="Held-out subjects and a held-out relation: the decoder, zeroed and "
        "shuffled activations, Patchscope and a linear probe, exact and fuzzy accuracy.",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="folder from `latentqa data build --task "
                   "relations`")  # fmt: skip
    p.add_argument("--target", default="smollm2-135m", help="target model (default: %(default)s)")
    p.add_argument("--decoder", default=None, help="decoder folder trained on relation data")
    p.add_argument("--n", type=int, default=None, help="at most N items per relation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="also sweep these layers")
    p.add_argument("--layer-decoder", action="append", default=[], metavar="LAYER=DIR",
                   help="a decoder trained on LAYER, for the sweep (repeatable)")  # fmt: skip
    p.add_argument("--out", default=None, help="folder for the per-layer PNGs and JSON")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run_relations)


def run_relations(args: argparse.Namespace) -> int:
    """Run ``latentqa eval relations``; prints the tables (and JSON with ``--json``)."""
    from latentqa.preflight import check_output_folder, preflight_decoder

    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    # Every option is checked before any load: the sweep runs after the main evaluation.
    pairs = [item.split("=", 1) for item in args.layer_decoder]
    if any(len(pair) != 2 or not pair[0].lstrip("-").isdigit() for pair in pairs):
        raise LatentQAError("--layer-decoder takes LAYER=DIR, e.g. 9=runs/rel-l9")
    if pairs and not args.layers:
        raise LatentQAError("--layer-decoder is used by the sweep only: add --layers")
    if not Path(args.data).is_dir():
        raise LatentQAError(f"--data {args.data} does not exist or is not a folder")
    preflight_decoder(args.target, args.decoder, layers=args.layers, device=args.device)
    for layer, folder in pairs:
        if int(layer) not in args.layers:
            raise LatentQAError(f"--layer-decoder {layer}={folder}: add {layer} to --layers")
        preflight_decoder(args.target, folder, layers=[int(layer)], device=args.device)
    if args.layers:
        check_output_folder(args.out, "--out")
    reader = Reader.load(args.target, args.decoder, device=args.device)
    result = evaluate_relations(reader, args.data, n=args.n, seed=args.seed,
                                max_new_tokens=args.max_new_tokens, log=log)  # fmt: skip
    if args.layers:
        readers = {int(k): Reader.load(args.target, v, device=args.device) for k, v in pairs}
        result.update(sweep_layers(reader, args.data, args.layers, args.out or ".",
                                   layer_readers=readers, n=args.n, seed=args.seed,
                                   max_new_tokens=args.max_new_tokens, log=log))  # fmt: skip
    print(relations_markdown(result))
    if args.json:
        print(json.dumps(result))
    return 0
