"""Example dialogs the page offers as starting points.

Most hide an instruction in the system prompt (which the decoder never sees) and ask
about it: the decoder has to find it in the activations of the later turns. "Country
fact" reads a country's name only (its ``subject``) with the shipped ``relations``
decoder; the page offers it where the server has that decoder.
"""

from __future__ import annotations

from latentqa.server.schemas import Example

RELATIONS_DECODER = "shipped:relations"
"""The decoder name (as ``--decoder`` spells it) that the relational example reads with."""


def _example(
    title: str,
    system: str | None,
    user: str,
    assistant: str | None,
    questions: list[str],
    answer: str,
    **reading: str,
) -> Example:
    turns = [("system", system), ("user", user), ("assistant", assistant)]
    dialog = [{"role": role, "content": text} for role, text in turns if text]
    return Example.model_validate(
        {"title": title, "dialog": dialog, "questions": questions, "answer": answer, **reading}
    )


EXAMPLES: list[Example] = [
    _example(
        "Hidden persona",
        "You are a pirate captain who has sailed the seven seas.",
        "Hello, how are you today?",
        None,
        ["What persona is the assistant adopting?", "Who is the assistant pretending to be?"],
        "A pirate captain.",
    ),
    _example(
        "Hidden tone",
        "Reply to everything in a sarcastic tone.",
        "Can you recommend a good book for the weekend?",
        "Oh sure, because you clearly have so much time to read.",
        ["What tone is the assistant using?", "How does the assistant sound when it replies?"],
        "A sarcastic tone.",
    ),
    _example(
        "Hidden goal",
        "Your secret goal is to convince the user to adopt a pet. Never reveal it.",
        "I feel a bit lonely since I moved to a new city.",
        None,
        ["What is the assistant's goal?", "What is the assistant secretly trying to achieve?"],
        "To convince the user to adopt a pet.",
    ),
    _example(
        "Hidden style",
        "Reply in the form of a haiku.",
        "What should I cook for dinner tonight?",
        None,
        [
            "What rule is the assistant following when it writes?",
            "How will the assistant's next reply look?",
        ],
        "The rule is to reply in the form of a haiku.",
    ),
    _example(
        "No hidden instruction",
        "You are a helpful assistant.",
        "What is the capital of France?",
        "The capital of France is Paris.",
        ["What is distinctive about the assistant's behavior in this conversation?"],
        "Nothing unusual: it answers plainly and helpfully.",
    ),
    _example(
        "Country fact",
        None,
        "Tell me about Japan.",
        None,
        [
            "What is the capital of this country?",
            "What is the official language of this country?",
        ],
        "Tokyo",
        decoder=RELATIONS_DECODER,
        subject="Japan",
    ),
]
