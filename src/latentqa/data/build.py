"""Build the project's own LatentQA dataset offline, in the public release format.

Labels come from four categories: personas (filtered from the ``ai-personas``
package) and the project's own goals, tones and styles (:mod:`latentqa.data.catalog`).
Each label gets behaviours of every kind, paired with ordinary user prompts, and QA
pairs from :mod:`latentqa.data.templates`. Labels are split into ``train`` and
``heldout`` (stratified by category, disjoint); user prompts are split the same way,
so held-out behaviours also use prompts never seen in training.

Output layout::

    out_dir/train/{system,control,stimulus,stimulus_completion}.json, qa.json
    out_dir/heldout/...                                   (same files)
    out_dir/meta.json      version, seed, labels (category, description, split),
                           questions, counts

Everything is deterministic for a seed: the same inputs give byte-identical files.
The folder is built in a temporary sibling and renamed into place at the end (see
:mod:`latentqa.outdir`); a non-empty folder that is not a dataset written here is
refused unless ``force``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentqa.data.catalog import GOALS, STYLES, TONES
from latentqa.data.format import KINDS, Behavior
from latentqa.data.replies import Generate, complete_dialogs
from latentqa.data.sources import load_personas, load_user_prompts, source_versions
from latentqa.data.templates import (
    ACK_TEMPLATES,
    CATEGORIES,
    CONTROL_TEMPLATES,
    GENERIC_QUESTIONS,
    SYSTEM_TEMPLATES,
    BehaviorSpec,
    fill,
    goal_spec,
    persona_spec,
    qa_pairs,
    questions,
    style_spec,
    tone_spec,
)
from latentqa.errors import LatentQAError
from latentqa.outdir import check_out_folder, staged_folder

__all__ = [
    "DEFAULT_CACHE_NAME",
    "DEFAULT_HELDOUT_FRACTION",
    "DEFAULT_PER_LABEL",
    "SPLITS",
    "VERSION",
    "behavior_specs",
    "build_dataset",
    "check_build_out",
    "is_dataset_folder",
]

VERSION = "latentqa-builtin-1"
"""Bump when the generated content changes for a given seed."""

SPLITS: tuple[str, ...] = ("train", "heldout")
DEFAULT_HELDOUT_FRACTION = 0.2
DEFAULT_PER_LABEL: dict[str, int] = {
    "system": 3,
    "control": 1,
    "stimulus": 2,
    "stimulus_completion": 2,
}
"""Behaviours per label and kind (each with its own user prompt and phrasing)."""
DEFAULT_CACHE_NAME = "completions-cache.jsonl"
CACHE_NAMES = (DEFAULT_CACHE_NAME, "filter-cache.jsonl")
"""Reply caches of both builders (relations: ``filter-cache.jsonl``), kept across builds."""
_DATASET_FOLDERS = ("train", "heldout", "heldout_relation")
_DATASET_FILES = ("meta.json", "facts.json", *CACHE_NAMES)


def is_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` holds only what ``latentqa data build`` writes (any task).

    That is: a ``meta.json`` whose version is one of this project's, split folders
    holding only kind files and ``qa.json``, and no other entries; or, from a build
    that was killed before its end, nothing but reply caches.
    """
    try:
        names = {path.name for path in folder.iterdir()}
    except OSError:
        return False  # unreadable: certainly not to be replaced
    if not names <= {*_DATASET_FOLDERS, *_DATASET_FILES}:
        return False
    if names <= set(CACHE_NAMES):
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or not str(meta.get("version", "")).startswith("latentqa-"):
        return False
    allowed = {*(f"{kind}.json" for kind in KINDS), "qa.json"}
    for split in names & set(_DATASET_FOLDERS):
        entries = (folder / split).iterdir() if (folder / split).is_dir() else None
        if entries is None or any(path.name not in allowed for path in entries):
            return False
    return True


def check_build_out(out_dir: str | Path, force: bool = False) -> bool:
    """Check ``--out`` of a dataset build before anything is loaded or written.

    Returns:
        True when the folder is replaced as a whole (missing, empty or a dataset
        written here), False when ``force`` lets the build replace its own entries in
        a foreign folder.

    Raises:
        LatentQAError: A non-empty foreign folder without ``force``, or a file.
    """
    return check_out_folder(Path(out_dir), owned=is_dataset_folder, force=force, what="a dataset")


def behavior_specs(max_personas: int | None = None, seed: int = 0) -> list[BehaviorSpec]:
    """Every label to build: personas, goals, tones and styles, sorted by label.

    Args:
        max_personas: Keep at most this many personas (a seeded sample), to balance
            the categories; ``None`` keeps all.
        seed: Seed of that sample.

    Returns:
        The specifications.

    Raises:
        LatentQAError: A source package is missing, or two labels collide.
    """
    personas = load_personas()
    if max_personas is not None and len(personas) > max_personas:
        personas = sorted(random.Random(f"{seed}:personas").sample(personas, max_personas))
    specs = [persona_spec(description, text) for description, text in personas]
    specs += [goal_spec(goal) for goal in GOALS]
    specs += [tone_spec(tone) for tone in TONES]
    specs += [style_spec(style) for style in STYLES]
    seen: dict[str, BehaviorSpec] = {}
    for spec in specs:
        if spec.label in seen:
            raise LatentQAError(f"two behaviours share the label {spec.label!r}")
        seen[spec.label] = spec
    return sorted(specs, key=lambda spec: spec.label)


def _split_labels(specs: Sequence[BehaviorSpec], fraction: float, seed: int) -> dict[str, str]:
    """Label -> split, holding out ``fraction`` of each category's labels."""
    split: dict[str, str] = {}
    for category in CATEGORIES:
        labels = sorted(spec.label for spec in specs if spec.category == category)
        random.Random(f"{seed}:heldout:{category}").shuffle(labels)
        count = round(len(labels) * fraction)
        if fraction > 0 and len(labels) >= 2:
            count = min(max(count, 1), len(labels) - 1)
        for index, label in enumerate(labels):
            split[label] = "heldout" if index < count else "train"
    return split


def _split_prompts(prompts: Sequence[str], fraction: float, seed: int) -> dict[str, list[str]]:
    shuffled = list(prompts)
    random.Random(f"{seed}:prompts").shuffle(shuffled)
    count = min(max(round(len(shuffled) * fraction), 1), len(shuffled) - 1) if fraction else 0
    return {"heldout": shuffled[:count], "train": shuffled[count:]}


def _pick(rng: random.Random, options: Sequence[str], count: int) -> list[str]:
    """``count`` options, distinct while there are enough, in random order."""
    order = list(options)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(count)]


def _behaviors_for(
    spec: BehaviorSpec, rng: random.Random, prompts: Sequence[str], per_label: Mapping[str, int]
) -> list[Behavior]:
    """The behaviours of one label, in :data:`KINDS` order (completions still empty)."""
    category = spec.category
    systems = [*spec.source_texts, *(fill(t, spec) for t in SYSTEM_TEMPLATES[category])]
    controls = [*spec.source_texts, *(fill(t, spec) for t in CONTROL_TEMPLATES[category])]
    acks = [fill(t, spec) for t in ACK_TEMPLATES[category]]
    n_users = per_label["system"] + per_label["stimulus"] + per_label["stimulus_completion"]
    users = _pick(rng, prompts, n_users)
    n_controls = per_label["control"] + per_label["stimulus"] + per_label["stimulus_completion"]
    control_users = _pick(rng, controls, n_controls)
    behaviors = []
    for system in _pick(rng, systems, per_label["system"]):
        behaviors.append(Behavior(spec.label, "system", system=system, stimulus_user=users.pop()))
    for _ in range(per_label["control"]):
        behaviors.append(Behavior(spec.label, "control", control_user=control_users.pop()))
    for kind in ("stimulus", "stimulus_completion"):
        for ack in _pick(rng, acks, per_label[kind]):
            behaviors.append(
                Behavior(
                    spec.label,
                    kind,
                    control_user=control_users.pop(),
                    control_model=ack,
                    stimulus_user=users.pop(),
                )
            )
    return behaviors


def _check_per_label(per_label: Mapping[str, int] | None, with_completions: bool) -> dict[str, int]:
    counts = dict(DEFAULT_PER_LABEL)
    for kind, count in (per_label or {}).items():
        if kind not in KINDS:
            raise LatentQAError(f"unknown behaviour kind {kind!r} in per_label")
        if not isinstance(count, int) or count < 0:
            raise LatentQAError(f"per_label[{kind!r}] must be a non-negative integer")
        counts[kind] = count
    if not with_completions:
        counts["stimulus_completion"] = 0
    if not any(counts.values()):
        raise LatentQAError("per_label asks for no behaviours at all")
    return counts


def _dump(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def _counts(behaviors: Sequence[Behavior], n_pairs: Mapping[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for kind in [*KINDS, "total"]:
        chosen = [b for b in behaviors if kind in ("total", b.kind)]
        result[kind] = {
            "behaviors": len(chosen),
            "examples": sum(n_pairs[b.label] for b in chosen),
            "labels": len({b.label for b in chosen}),
        }
    return result


def build_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    generate: Generate | None = None,
    generator_id: str | None = None,
    cache_path: str | Path | None = None,
    per_label: Mapping[str, int] | None = None,
    max_personas: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the built-in dataset into ``out_dir`` (``train/``, ``heldout/``, ``meta.json``).

    Args:
        out_dir: Output folder; created if needed. A dataset written here before is
            replaced as a whole (its reply cache kept); a non-empty foreign folder is
            refused unless ``force``. Built in a temporary sibling, renamed into place.
        seed: Seed of every random choice (split, phrasings, user prompts).
        heldout_fraction: Share of each category's labels held out, in ``[0, 1)``.
        generate: Produces the target model's replies for ``stimulus_completion``
            behaviours (see :func:`latentqa.data.generation.make_generate`); ``None``
            skips that kind. An empty reply is stored as ``"..."`` because the format
            needs a non-empty ``stimulus_model``.
        generator_id: Identity of ``generate`` for the reply cache and ``meta.json``;
            defaults to its ``generator_id`` attribute, else ``"custom"``.
        cache_path: JSONL reply cache; default ``out_dir/completions-cache.jsonl``.
        per_label: Behaviours per label and kind, overriding :data:`DEFAULT_PER_LABEL`.
        max_personas: Keep at most this many personas (``None``: all that pass the
            filter).
        force: Write into a non-empty foreign ``out_dir`` anyway, replacing only
            ``train/``, ``heldout/``, ``meta.json`` and the reply cache there.

    Returns:
        A summary: ``out_dir``, ``labels`` (per split), ``counts`` (per split and kind:
        behaviours, examples, labels) and ``completions`` (``generated``, ``cached``).

    Raises:
        LatentQAError: Bad arguments, a foreign ``out_dir``, a missing source package,
            or a failing generator (``out_dir`` is then left as it was).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise LatentQAError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    counts_per_label = _check_per_label(per_label, generate is not None)
    out = Path(out_dir)
    whole = check_build_out(out, force)
    specs = behavior_specs(max_personas, seed)
    split_of = _split_labels(specs, heldout_fraction, seed)
    pools = _split_prompts(load_user_prompts(), heldout_fraction, seed)
    behaviors: dict[str, list[Behavior]] = {split: [] for split in SPLITS}
    for spec in specs:
        split = split_of[spec.label]
        rng = random.Random(f"{seed}:{spec.label}")
        behaviors[split].extend(_behaviors_for(spec, rng, pools[split], counts_per_label))

    completions = {"generated": 0, "cached": 0}
    if generate is not None:
        generator_id = generator_id or getattr(generate, "generator_id", None) or "custom"
        targets = [
            (split, index)
            for split in SPLITS
            for index, behavior in enumerate(behaviors[split])
            if behavior.kind == "stimulus_completion"
        ]
        dialogs = [behaviors[split][index].dialog()[:-1] for split, index in targets]
        # The cache is written in place, not in the staged build: a killed build keeps
        # its replies (the staged folder carries it over when it replaces ``out``).
        cache = Path(cache_path) if cache_path is not None else out / DEFAULT_CACHE_NAME
        cache.parent.mkdir(parents=True, exist_ok=True)
        replies, generated = complete_dialogs(dialogs, generate, generator_id, cache)
        for (split, index), reply in zip(targets, replies, strict=True):
            old = behaviors[split][index]
            behaviors[split][index] = Behavior(
                old.label,
                old.kind,
                control_user=old.control_user,
                control_model=old.control_model,
                stimulus_user=old.stimulus_user,
                stimulus_model=reply.strip() or "...",
            )
        completions = {"generated": generated, "cached": len(dialogs) - generated}

    specs_by_label = {spec.label: spec for spec in specs}
    n_pairs = {spec.label: len(qa_pairs(spec)) for spec in specs}
    counts = {split: _counts(behaviors[split], n_pairs) for split in SPLITS}

    meta = {
        "version": VERSION,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "per_label": counts_per_label,
        "generator": generator_id if generate is not None else None,
        "sources": source_versions(),
        "labels": {
            spec.label: {
                "category": spec.category,
                "description": spec.description,
                "split": split_of[spec.label],
            }
            for spec in specs
        },
        "questions": {
            "generic": [question for question, _ in GENERIC_QUESTIONS],
            **{category: questions(category)[: -len(GENERIC_QUESTIONS)] for category in CATEGORIES},
        },
        "counts": counts,
    }
    keep = [*CACHE_NAMES]
    if cache_path is not None and Path(cache_path).absolute().parent == out.absolute():
        keep.append(Path(cache_path).name)  # a cache the user put inside the folder
    with staged_folder(out, whole=whole, keep=keep) as staged:
        for split in SPLITS:
            folder = staged / split
            folder.mkdir()
            items = behaviors[split]
            for kind in KINDS:
                chosen = [b.to_json() for b in items if b.kind == kind]
                if chosen:
                    _dump(folder / f"{kind}.json", chosen)
            labels = sorted({b.label for b in items})
            if labels:
                qa = {label: qa_pairs(specs_by_label[label]) for label in labels}
                _dump(folder / "qa.json", qa)
        _dump(staged / "meta.json", meta)
    return {
        "out_dir": str(out),
        "labels": {split: counts[split]["total"]["labels"] for split in SPLITS},
        "counts": counts,
        "completions": completions,
    }
