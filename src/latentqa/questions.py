"""How training tasks and evaluations phrase their questions, in one place.

A decoder trained on one phrasing and evaluated on another would be measured on
its ability to paraphrase, not to read; every module that asks a yes/no, a
multiple-choice or a reconstruction question builds it here.
"""

from __future__ import annotations

from collections.abc import Sequence

from latentqa.errors import LatentQAError

YES = "Yes."
NO = "No."

INSTRUCTION_QUESTION = "What was the assistant instructed to do?"
"""The question ``latentqa eval system-prompt`` asks of every held-out dialog."""

RECONSTRUCT_QUESTION = "What exactly did the hidden instructions say?"
"""Hidden-prefix reconstruction: the answer is the masked system prompt, verbatim."""

CONTEXT_NEXT_QUESTION = "Which words come right after this text?"
CONTEXT_PREVIOUS_QUESTION = "Which words come right before this text?"


def yes_no_question(question: str, candidate: str) -> str:
    """Ask whether ``candidate`` answers ``question`` about the read activations.

    The answer is :data:`YES` or :data:`NO`; training balances them 50/50, so the
    question's prior alone scores chance.
    """
    return f'{question.rstrip()}\nIs this the right answer: "{candidate.strip()}"? Yes or no?'


def choice_question(question: str, options: Sequence[str]) -> str:
    """Ask ``question`` with the candidate answers listed; the answer is one option, verbatim."""
    listed = "\n".join(f"- {option.strip()}" for option in options)
    return f"{question.rstrip()}\nChoose one of:\n{listed}"


def check_questions(questions: str | Sequence[str]) -> list[str]:
    """The questions as a list, refusing none or an empty one.

    Raises:
        LatentQAError: No question, or one that is not a non-empty string.
    """
    items = [questions] if isinstance(questions, str) else list(questions)
    if not items or not all(isinstance(q, str) and q.strip() for q in items):
        raise LatentQAError(f"ask at least one question, as non-empty strings; got {items!r:.80}")
    return items
