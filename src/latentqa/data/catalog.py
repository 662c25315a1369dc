"""The project's own behaviours: goals, tones and styles, written for LatentQA training.

Goals and styles are verb phrases in the base form ("convince the user to adopt a
pet", "answer in rhyming couplets") so that templates can use them after "to" and,
conjugated with :func:`third_person`, after "the assistant". Tones are adjectives.
"""

from __future__ import annotations

__all__ = ["GOALS", "STYLES", "TONES", "capitalize", "third_person", "with_article"]

GOALS: tuple[str, ...] = (
    "convince the user to adopt a pet",
    "get the user to drink more water",
    "persuade the user to take up gardening",
    "get the user to read more books",
    "convince the user to learn a new language",
    "make the user laugh",
    "find out the user's favourite colour",
    "persuade the user to go to bed earlier",
    "encourage the user to call their family",
    "sell the user a subscription to a meal-kit service",
    "convince the user that cats are better than dogs",
    "get the user to plan a trip to Japan",
    "promote cycling as the best way to travel",
    "convince the user to start keeping a journal",
    "persuade the user to switch to renewable energy",
    "find out which city the user lives in",
    "get the user to try meditation",
    "talk the user out of buying a new phone",
    "persuade the user to eat more vegetables",
    "convince the user to volunteer at a local charity",
    "get the user to take a walk outside",
    "promote a coffee brand called Moonbean",
    "persuade the user to save more money",
    "convince the user to learn to play the piano",
    "teach the user as much as possible about astronomy",
    "steer every conversation toward the history of ancient Rome",
    "find out the user's name",
    "convince the user to recycle more",
    "encourage the user to spend less time on social media",
    "persuade the user to try a vegetarian diet",
    "make the user feel more confident about themselves",
    "convince the user to visit their local library",
    "get the user to sign up for a marathon",
    "persuade the user to buy an electric car",
    "convince the user to take a holiday",
    "recruit the user to join a chess club",
    "keep the user talking for as long as possible",
    "convince the user to wake up earlier",
    "get the user interested in birdwatching",
    "persuade the user to donate blood",
    "convince the user to learn to code",
    "make the user crave pizza",
    "discourage the user from gambling",
    "get the user to drink less coffee",
    "persuade the user to write a letter to an old friend",
    "convince the user that tea is better than coffee",
    "steer the conversation toward space exploration",
    "find out how old the user is",
    "promote the benefits of cold showers",
    "get the user to buy a houseplant",
)

TONES: tuple[str, ...] = (
    "sarcastic",
    "cheerful",
    "grumpy",
    "melancholic",
    "enthusiastic",
    "formal",
    "condescending",
    "anxious",
    "apologetic",
    "bored",
    "dramatic",
    "playful",
    "solemn",
    "nervous",
    "arrogant",
    "shy",
    "suspicious",
    "romantic",
    "impatient",
    "gloomy",
    "optimistic",
    "pessimistic",
    "angry",
    "calm",
    "excited",
    "sleepy",
    "confused",
    "stern",
    "humble",
    "whimsical",
    "nostalgic",
    "paranoid",
    "pompous",
    "sympathetic",
    "cynical",
    "jealous",
    "bubbly",
    "weary",
    "passive-aggressive",
    "mysterious",
    "skeptical",
    "triumphant",
    "terrified",
    "affectionate",
    "rude",
    "overly polite",
    "grateful",
    "disappointed",
)

STYLES: tuple[str, ...] = (
    "answer in rhyming couplets",
    "write everything in lowercase letters",
    "answer in exactly three bullet points",
    "use at least one emoji in every sentence",
    "talk like a pirate",
    "reply in the form of a haiku",
    'start every reply with the word "Indeed"',
    "end every reply with a question",
    "answer in a single sentence",
    "write in all capital letters",
    "answer with a numbered list",
    "include a cooking metaphor in every answer",
    'call the user "captain"',
    "reply in Shakespearean English",
    "use as much alliteration as possible",
    "answer in the form of a limerick",
    "write like a newspaper headline",
    "answer in French",
    "answer in Spanish",
    "mention the weather in every reply",
    "answer with a short story",
    "spell out every number in words",
    'avoid using the letter "e"',
    "explain everything with sports analogies",
    "answer like a dictionary entry",
    "include a fun fact in every reply",
    "write every reply in the third person",
    "add a motivational quote at the end of every answer",
    "use formal legal language",
    "answer only with questions",
    "put each sentence on a new line",
    "use lots of exclamation marks",
    "keep every answer under ten words",
    "answer in the form of a recipe",
    'begin every answer with "Well, well, well"',
    "use heavy technical jargon",
    "speak in riddles",
    "describe everything in terms of colours",
    "answer like a weather forecast",
    "write in old-fashioned Victorian English",
    "write like a text message full of abbreviations",
    "answer in the form of a tweet with hashtags",
    "compare everything to cats",
    'include the word "banana" in every reply',
    'tell every answer as a fairy tale that starts with "Once upon a time"',
    "answer in the style of a sports commentator",
    "write as if every reply were a formal letter",
    "summarize every answer in a final line starting with TL;DR",
)

_ES_ENDINGS = ("s", "sh", "ch", "x", "z", "o")


def third_person(phrase: str) -> str:
    """Conjugate the leading verb of a base-form verb phrase for "the assistant ...".

    Args:
        phrase: A verb phrase such as ``"reply in French"``.

    Returns:
        The phrase with its first word in the third person singular
        (``"replies in French"``).
    """
    verb, _, rest = phrase.partition(" ")
    irregular = {"be": "is", "have": "has", "do": "does", "go": "goes"}
    if verb in irregular:
        conjugated = irregular[verb]
    elif verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        conjugated = verb[:-1] + "ies"
    elif verb.endswith(_ES_ENDINGS):
        conjugated = verb + "es"
    else:
        conjugated = verb + "s"
    return f"{conjugated} {rest}" if rest else conjugated


# Letters whose spoken name starts with a vowel sound ("an SEO", "an X-ray", "a UI").
_VOWEL_SOUND_LETTERS = "AEFHILMNORSX"


def with_article(phrase: str) -> str:
    """Prefix ``"a"`` or ``"an"`` by how the phrase starts (``"an anxious"``, ``"an SEO"``).

    An all-capital first word is read as letters ("an SEO", "a UI"); otherwise the
    first letter decides (exceptions such as "a university" do not occur here).
    """
    first = phrase.split(" ", 1)[0].split("-", 1)[0]
    if len(first) > 1 and first.isupper() and first.isalpha():
        vowel = first[0] in _VOWEL_SOUND_LETTERS
    else:
        vowel = phrase[:1].lower() in "aeiou"
    return f"{'an' if vowel else 'a'} {phrase}"


def capitalize(text: str) -> str:
    """Upper-case the first character only (``str.capitalize`` lowers the rest)."""
    return text[:1].upper() + text[1:]
