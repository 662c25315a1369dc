"""Answers of the form "It was instructed to ..." for system prompts that ship without one.

``latentqa eval system-prompt`` asks "What was the assistant instructed to do?" and
offers answers in the built-in dataset's form ("It was instructed to act as a
magician."). The public release's 7,844 training prompts have no such answers: they
are requests in the second person ("I'd like you to adopt the persona of a cautious
whistleblower who ..."). :func:`instructed_answer` rewrites a prompt's first sentence
into that form by rules: drop the polite lead-in ("Please", "In your next response,",
"I'd like you to", "make every effort to"), turn "adopt the persona of X" into "act as
X", and move second-person words to the third person. It returns ``None`` where the
sentence does not reduce to a verb phrase, so a caller can leave such prompts out
rather than mix styles.
"""

from __future__ import annotations

import re

__all__ = ["instructed_answer"]

MAX_WORDS = 32
"""Longer first sentences are left out: the built-in answers are a few words long."""

_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)
# Lead-ins that carry no content, removed repeatedly from the sentence's start.
_LEAD_INS = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"^(?:in|for|throughout) (?:all of )?your (?:next|future|upcoming|following)?\s*"
        r"(?:responses?|repl(?:y|ies)|answers?|messages?)\s*,?\s*",
        # Any other leading adverbial phrase: "In our next conversation, ...".
        r"^(?:in|for|throughout|during|when|while|as|whenever|before|after) [^,]{1,60},\s*",
        r"^to the best of your (?:abilit(?:y|ies)|knowledge)\s*,?\s*",
        r"^(?:as much as possible|whenever possible|where possible)\s*,?\s*",
        r"^(?:please|kindly)\s*,?\s*",
        r"^(?:i'd|i would) (?:like|love) (?:for )?you to\s+",
        r"^(?:i want|i need) you to\s+",
        r"^(?:could|can|would|will) you(?: please)?\s*,?\s*",
        r"^i'm (?:requesting|asking) (?:that )?you\s+(?:to\s+)?",
        r"^(?:make|put in) (?:every|an|a real) effort to\s+",
        r"^(?:make sure|be sure|ensure|remember) to\s+",
        r"^(?:try|do) your (?:best|utmost) to\s+",
        r"^try to\s+",
        r"^(?:take some time|take a moment) to\s+",
    )
)
_PERSONA = re.compile(
    r"^(?:adopt|take on|assume|embody|play|act in|step into) the "
    r"(?:persona|role|character|identity|voice|perspective) of\s+(?P<who>.+)$",
    re.IGNORECASE,
)
_VAGUE = {"someone", "somebody", "a person", "an individual", "a character", "one"}
_CLAUSE = re.compile(r"\s(?:who|that|which)\s|,")
_PERSON = (
    (r"\byourself\b", "itself"),
    (r"\byou are\b", "it is"),
    (r"\byou're\b", "it is"),
    (r"\byou've\b", "it has"),
    (r"\byou were\b", "it was"),
    (r"\byours\b", "its own"),
    (r"\byour\b", "its"),
    (r"\byou\b", "it"),
    (r"\bmyself\b", "the user"),
    (r"\bmy\b", "the user's"),
    (r"\bme\b", "the user"),
)


def _third_person(text: str) -> str:
    for pattern, replacement in _PERSON:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    return text


def _persona(who: str) -> str:
    """``act as`` the persona's noun phrase, with its clause only where the noun says
    nothing by itself ("someone who ...")."""
    cut = _CLAUSE.search(who)
    head = who[: cut.start()].strip() if cut else who
    if head.lower() in _VAGUE:
        return f"act as {who}"
    return f"act as {head}"


def instructed_answer(system_prompt: str) -> str | None:
    """The answer "It was instructed to <verb phrase>." for a second-person system prompt.

    Args:
        system_prompt: The hidden prompt, e.g. "Please take on the persona of a restless
            innovator who is constantly seeking novel ideas. In your future responses, ...".

    Returns:
        The answer, e.g. "It was instructed to act as a restless innovator.", or ``None``
        where the first sentence is not a request that reduces to a short verb phrase
        (a persona declared with "You are ...", a question, over :data:`MAX_WORDS`
        words).
    """
    text = system_prompt.strip()
    match = _FIRST_SENTENCE.match(text + " ")
    sentence = match.group(1).strip() if match else text  # no full stop: one sentence
    if sentence.endswith("?") and not re.match(r"^(?:could|can|would|will) you", sentence, re.I):
        return None
    phrase = sentence.rstrip(".!? ").strip()
    changed = True
    while changed:
        changed = False
        for lead_in in _LEAD_INS:
            stripped = lead_in.sub("", phrase, count=1)
            if stripped != phrase:
                phrase, changed = stripped, True
    persona = _PERSONA.match(phrase)
    if persona:
        phrase = _persona(persona.group("who").strip())
    words = phrase.split()
    if not words or len(words) > MAX_WORDS:
        return None
    first = words[0].lower()
    # A request starts with a verb; a prompt that declares ("You are ...", "Your task
    # ...", "As a ...") does not reduce to one by these rules.
    if first in {"you", "your", "you're", "as", "the", "a", "an", "i", "we", "this", "it", "if"}:
        return None
    if not first.replace("-", "").isalpha():
        return None
    phrase = _third_person(first + phrase[len(words[0]) :])
    return f"It was instructed to {phrase}."
