"""Read the installed packages that supply personas and ordinary user prompts.

Only the packages' data files are read (located with ``importlib.util.find_spec``,
which does not import them):

- ``ai-personas`` (CC0 data): ``ai_personas/ai-personas.json``, 1,562 persona prompts
  of very uneven quality. :func:`load_personas` keeps the short, clear ones (see
  :func:`persona_from_prompt` for the filter).
- ``moodswapper`` (MIT): ``moodswapper/data/prompts.json``, 763 ordinary user
  prompts (advice, how-to, facts, writing, small code and maths tasks). They are
  combined with the project's own prompts in :mod:`latentqa.data.prompts`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

from latentqa.data.catalog import with_article
from latentqa.data.prompts import USER_PROMPTS
from latentqa.errors import LatentQAError
from latentqa.json_files import read_json
from latentqa.package_data import package_file

__all__ = [
    "load_personas",
    "load_user_prompts",
    "package_file",
    "persona_from_prompt",
    "source_versions",
]

# A persona prompt must open with one of these and a role noun phrase with its article.
_ROLE_OPENING = re.compile(
    r"^(?:I want you to act as|I want you to act like|I want you to be|Act as|Please act as|"
    r"You are|Pretend to be|Pretend you are|Imagine you are)\s+(?:an?)\s+"
    r"([A-Za-z][A-Za-z'\- ]{1,48}?)\s*[.,;:]",
    re.IGNORECASE,
)
# Markup or fill-in placeholders: such prompts are templates or tool specs, not personas.
_MARKUP = re.compile(r"\$\{|\{\{|\[[A-Za-z][A-Za-z _/-]*\]|#|\*\*|https?:|`|<[a-z/]")
# Sentences that start the user's side of the exchange ("My first request is ...").
_FIRST_REQUEST = re.compile(
    r"^my first|\bfirst (?:request|question|command|sentence|suggestion|statement|word|"
    r"topic|task|prompt)\b",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Sentences that open a list ("Your task is to: - ..."), or sloppy text ("expert.create").
_LIST_OR_SLOPPY = re.compile(
    r":\s*(?:-|\*|\d+[.)])\s|\s[-*]\s|[a-z]\.[a-z]|\b[A-Z]{3,} [A-Z]{3,}\b|^\W*\d+[.)]\W*$"
)
# Roles that are programs, tools or objects rather than someone to role-play.
_NOT_A_PERSON = {
    "agent",
    "ai",
    "app",
    "book",
    "checker",
    "cleaner",
    "console",
    "engine",
    "enhancer",
    "excel",
    "game",
    "generator",
    "interpreter",
    "machine",
    "model",
    "page",
    "planner",
    "provider",
    "recommender",
    "simulator",
    "system",
    "terminal",
    "tool",
    "vessel",
    "bot",
    "assistant",
    "summarizer",
    "finder",
    "emulator",
    "post",
}
_FUNCTION_WORDS = {"who", "that", "which", "with", "whose", "where", "and", "or"}
# Roles that are demeaning, manipulative or misspelled in the source.
_BLOCKED_ROLES = {
    "gaslighter",
    "lunatic",
    "socrat",
    "next",
    "gnomist",
    "commentariat",
    "omniscient debate god",
}
# Words kept capitalized when a title-cased role is lower-cased.
_PROPER_WORDS = {
    "English",
    "French",
    "Spanish",
    "German",
    "Japanese",
    "Chinese",
    "Italian",
    "Python",
    "JavaScript",
    "Rust",
    "Linux",
    "Windows",
    "Shakespeare",
    "Bible",
    "Etsy",
    "Amazon",
    "TikTok",
    "YouTube",
    "GitHub",
    "Django",
    "Chilean",
    "Socratic",
    "Victorian",
    "Google",
    "Telegram",
    "Turkish",
}

MAX_PROMPT_CHARS = 1000
"""Longer persona prompts are dropped: they are task specifications, not personas."""
MAX_SYSTEM_CHARS = 400
"""The persona text used as a system prompt keeps whole sentences up to this length."""
MAX_SYSTEM_SENTENCES = 3
MAX_ROLE_WORDS = 4
MAX_USER_PROMPT_CHARS = 200


def _normalize_role(role: str) -> str:
    """Lower-case capitalized plain words ("Creative Writing Guide", "Co-Founder").

    Acronyms and words with inner capitals (AI, SEO, GitHub) and the proper words of
    :data:`_PROPER_WORDS` keep their case.
    """

    def lower(part: str) -> str:
        plain = part[:1].isupper() and (len(part) == 1 or part[1:].islower())
        return part.lower() if plain and part not in _PROPER_WORDS else part

    return " ".join("-".join(lower(p) for p in word.split("-")) for word in role.split())


def persona_from_prompt(prompt: str) -> tuple[str, str] | None:
    """Turn one ai-personas prompt into (description, system text), or reject it.

    The filter keeps a prompt when it is plain English (ASCII) of at most
    :data:`MAX_PROMPT_CHARS` characters with no markup or fill-in placeholders, opens
    by naming a role ("I want you to act as a journalist.", "Act as a debate coach."),
    and that role is a person of at most :data:`MAX_ROLE_WORDS` words (not a terminal,
    generator, game...).

    Args:
        prompt: The persona prompt.

    Returns:
        ``None`` when rejected, else the description (the role with its article, e.g.
        ``"an etymologist"``) and the prompt cut to its first sentences: at most
        :data:`MAX_SYSTEM_SENTENCES`, :data:`MAX_SYSTEM_CHARS` characters, stopping
        before any "My first request is ..." sentence.
    """
    text = " ".join(prompt.split())
    if not text.isascii() or len(text) > MAX_PROMPT_CHARS or _MARKUP.search(text):
        return None
    match = _ROLE_OPENING.match(text)
    if not match:
        return None
    role = _normalize_role(match.group(1).strip())
    words = role.lower().split()
    if (
        not words
        or len(words) > MAX_ROLE_WORDS
        or words[-1] in _NOT_A_PERSON
        or _FUNCTION_WORDS.intersection(words)
        or role.lower() in _BLOCKED_ROLES
    ):
        return None
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(kept) >= MAX_SYSTEM_SENTENCES or _FIRST_REQUEST.search(sentence):
            break
        if _LIST_OR_SLOPPY.search(sentence):
            break
        if kept and len(" ".join([*kept, sentence])) > MAX_SYSTEM_CHARS:
            break
        kept.append(sentence)
    system = " ".join(kept)
    if not kept or len(system) > MAX_SYSTEM_CHARS:
        return None
    return with_article(role), system


def load_personas() -> list[tuple[str, str]]:
    """The filtered personas of the ``ai-personas`` package.

    Returns:
        ``(description, system text)`` pairs, sorted by description, one per distinct
        description (the first by persona name wins).

    Raises:
        LatentQAError: The package is not installed or its file is unreadable.
    """
    path = package_file("ai_personas", "ai-personas.json", "ai-personas")
    data = read_json(path)
    if not isinstance(data, dict):
        raise LatentQAError(f"{path}: expected an object of personas")
    found: dict[str, str] = {}
    for name in sorted(data):
        entry = data[name]
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        if not isinstance(prompt, str):
            continue
        persona = persona_from_prompt(prompt)
        if persona and persona[0].lower() not in {d.lower() for d in found}:
            found[persona[0]] = persona[1]
    return sorted(found.items())


def load_user_prompts() -> list[str]:
    """Ordinary user prompts: the project's own, then moodswapper's, deduplicated.

    Returns:
        Prompts of at most :data:`MAX_USER_PROMPT_CHARS` characters, in a fixed order.

    Raises:
        LatentQAError: The ``moodswapper`` package is not installed.
    """
    path = package_file("moodswapper", "data/prompts.json", "moodswapper")
    data = read_json(path)
    items = data.get("generation") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise LatentQAError(f"{path}: expected a 'generation' list of prompts")
    external = [item["prompt"] for item in items if isinstance(item, dict) and "prompt" in item]
    prompts = [" ".join(str(p).split()) for p in (*USER_PROMPTS, *external)]
    return [p for p in dict.fromkeys(prompts) if p and len(p) <= MAX_USER_PROMPT_CHARS]


def source_versions() -> dict[str, str]:
    """Installed versions of the source packages, recorded in ``meta.json``."""
    versions = {}
    for name in ("ai-personas", "moodswapper"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions
