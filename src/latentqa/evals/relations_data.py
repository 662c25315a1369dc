"""Items of the relations evaluation (from ``facts.json``) and their scoring."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.data.relations_facts import RELATIONS, Fact, exact_match, fuzzy_match, normalize
from latentqa.errors import LatentQAError

if TYPE_CHECKING:
    from latentqa.decoder.folder import DecoderSpec


@dataclass(frozen=True)
class RelationItem:
    """One fact about one subject, read from the subject's tokens in ``sentence``."""

    fact: Fact
    sentence: str
    split: str
    """``train``, ``heldout`` (held-out subject) or ``heldout_relation``."""
    seen: bool = False
    """Some training subject has the same answer to this relation (a classifier over
    the training answers could name it)."""

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


FACTS_FILE = "facts.json"


def find_relation_data(
    data: str | Path | None, decoder_folder: str | Path | None, spec: DecoderSpec | None = None
) -> Path:
    """The folder holding ``facts.json``: ``data`` if given, else the decoder's own folder
    (the shipped relations decoder carries the facts it was trained and held out on), else
    the data folder the decoder was trained on (from ``spec``), if it is still there.

    Raises:
        LatentQAError: None of them has ``facts.json``.
    """
    if data is not None:
        return Path(data)
    train_data = spec.train_config.get("data") if spec is not None else None
    candidates = [Path(f) for f in (decoder_folder, train_data) if f]
    for folder in candidates:
        if (folder / FACTS_FILE).is_file():
            return folder
    raise LatentQAError(
        "no held-out facts found beside the decoder"
        + (f" ({', '.join(map(str, candidates))})" if candidates else "")
        + ": pass --data DIR, a folder built with `latentqa data build --task relations` "
        "(the one the decoder was trained on, so its held-out countries stay unseen)"
    )


def load_relation_data(data: str | Path, n: int | None = None, seed: int = 0) -> RelationData:
    """Read ``DATA/facts.json``; ``n`` caps the items per relation (a seeded sample)."""
    path = Path(data) / FACTS_FILE
    if not path.is_file():
        raise LatentQAError(
            f"{path} is missing: build it with `latentqa data build --task relations`"
        )
    blob = json.loads(path.read_text(encoding="utf-8"))
    subjects, held_rel = blob["subjects"], blob["heldout_relation"]
    items, train = [], []
    for raw in blob["facts"]:
        fact = Fact(raw["subject"], raw["relation"], raw["answer"], tuple(raw["aliases"]))
        info = subjects[fact.subject]
        split = "heldout_relation" if fact.relation == held_rel else info["split"]
        item = RelationItem(fact, info["sentence"], split)
        (train if info["split"] == "train" else items).append(item)
    answers: dict[str, set[str]] = {}
    for item in train:
        answers.setdefault(item.fact.relation, set()).update(map(normalize, item.fact.aliases))
    items = [
        replace(
            i,
            seen=not answers.get(i.fact.relation, set()).isdisjoint(map(normalize, i.fact.aliases)),
        )
        for i in items
    ]
    if n is not None:
        rng = random.Random(f"{seed}:relations:n")
        by_relation: dict[str, list[RelationItem]] = {}
        for item in items:
            by_relation.setdefault(item.fact.relation, []).append(item)
        items = [i for group in by_relation.values() for i in rng.sample(group, min(n, len(group)))]
    if not items:
        raise LatentQAError(f"{path} has no facts about held-out subjects to evaluate")
    return RelationData(items, train, held_rel, blob.get("filter", {}))


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
        subjects), ``seen_accuracy`` (those among them whose answer some training subject
        shares: the only ones a classifier over training answers can get right),
        ``heldout_relation_accuracy`` and ``heldout_relation_fuzzy_accuracy``, ``n``
        (predictions made); and ``{relation: {accuracy, fuzzy_accuracy, n}}``.
    """
    pairs = list(zip(predictions, items, strict=True))
    exact = [None if p is None else exact_match(p, i.fact.aliases) for p, i in pairs]
    fuzzy = [None if p is None else fuzzy_match(p, i.fact.aliases) for p, i in pairs]

    def rows(keep: Callable[[RelationItem], bool]) -> list[int]:
        return [k for k, item in enumerate(items) if keep(item)]

    trained = rows(lambda i: i.split == "heldout")
    seen = rows(lambda i: i.split == "heldout" and i.seen)
    held = rows(lambda i: i.split == "heldout_relation")
    summary = {
        "accuracy": _mean([exact[k] for k in trained]),
        "fuzzy_accuracy": _mean([fuzzy[k] for k in trained]),
        "seen_accuracy": _mean([exact[k] for k in seen]),
        "heldout_relation_accuracy": _mean([exact[k] for k in held]),
        "heldout_relation_fuzzy_accuracy": _mean([fuzzy[k] for k in held]),
        "n": sum(p is not None for p in predictions),
    }
    per_relation = {}
    for relation in dict.fromkeys(i.fact.relation for i in items):
        picked = rows(lambda i, r=relation: i.fact.relation == r)
        picked_seen = [k for k in picked if items[k].seen]
        per_relation[relation] = {
            "accuracy": _mean([exact[k] for k in picked]),
            "fuzzy_accuracy": _mean([fuzzy[k] for k in picked]),
            "seen_accuracy": _mean([exact[k] for k in picked_seen]),
            "n": len(picked),
            "n_seen": len(picked_seen),
        }
    return summary, per_relation
