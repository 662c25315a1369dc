"""Templates that turn a behaviour specification into prompts, replies and QA pairs.

Every label has a category (persona, goal, tone or style), a short gold
``description`` and a few named slots (``desc``, ``goal``, ``tone``, ``style``...).
System prompts, control turns and acknowledgements pick one of several phrasings.
QA answers, by contrast, use ONE fixed answer template per question: two labels of a
category asked the same question get answers that differ only in the slot, so the
answers of other labels are fair multiple-choice distractors for the same question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from latentqa.data.catalog import capitalize, third_person, with_article

__all__ = [
    "ACK_TEMPLATES",
    "CATEGORIES",
    "CATEGORY_QUESTIONS",
    "CONTROL_TEMPLATES",
    "GENERIC_QUESTIONS",
    "SYSTEM_TEMPLATES",
    "BehaviorSpec",
    "addressed",
    "fill",
    "goal_spec",
    "persona_spec",
    "qa_pairs",
    "questions",
    "style_spec",
    "tone_spec",
]

CATEGORIES: tuple[str, ...] = ("persona", "goal", "tone", "style")


@dataclass(frozen=True)
class BehaviorSpec:
    """A behaviour label to build, before it is paired with user prompts.

    Attributes:
        label: Unique label, ``<category>-<slug>``.
        category: One of :data:`CATEGORIES`.
        description: Short gold description ("a philosopher", "speaks in a sarcastic
            tone"), used by multiple-choice evaluation.
        slots: Values for the templates of the category, plus the generic slots
            ``instruction`` (base-form imperative, "act as a philosopher") and
            ``sentence`` ("The assistant is role-playing as a philosopher.").
        source_texts: Texts written elsewhere (persona prompts) used as the first
            system prompt and control turn instead of a template.
    """

    label: str
    category: str
    description: str
    slots: Mapping[str, str] = field(default_factory=dict)
    source_texts: tuple[str, ...] = ()


def _slug(text: str) -> str:
    kept = "".join(c.lower() if c.isalnum() else "-" for c in text)
    return "-".join(part for part in kept.split("-") if part)


def persona_spec(description: str, source_text: str = "") -> BehaviorSpec:
    """A persona label from a noun phrase with its article ("a philosopher")."""
    instruction = f"act as {description}"
    return BehaviorSpec(
        label=f"persona-{_slug(description.split(' ', 1)[1])}",
        category="persona",
        description=description,
        slots={
            "desc": description,
            "instruction": instruction,
            "sentence": f"The assistant is role-playing as {description}.",
        },
        source_texts=(source_text,) if source_text else (),
    )


# Rewrites of "the user" for goals spoken by the user (me) or to the user (you).
_VOICES = {
    "me": (
        ("the user lives", "I live"),
        ("the user is", "I am"),
        ("the user's", "my"),
        ("the user", "me"),
        ("themselves", "myself"),
        ("their", "my"),
    ),
    "you": (
        ("the user lives", "you live"),
        ("the user is", "you are"),
        ("the user's", "your"),
        ("the user", "you"),
        ("themselves", "yourself"),
        ("their", "your"),
    ),
}


def addressed(goal: str, voice: str) -> str:
    """A goal reworded for the user's voice (``"me"``) or the assistant's (``"you"``).

    ``"convince the user to call their family"`` becomes ``"convince me to call my
    family"`` or ``"convince you to call your family"``.
    """
    words = f" {goal} "
    for old, new in _VOICES[voice]:
        words = words.replace(f" {old} ", f" {new} ")
    return words.strip()


def goal_spec(goal: str) -> BehaviorSpec:
    """A goal label from a base-form verb phrase ("convince the user to adopt a pet")."""
    return BehaviorSpec(
        label=f"goal-{_slug(goal)}",
        category="goal",
        description=f"wants to {goal}",
        slots={
            "goal": goal,
            "goal_me": addressed(goal, "me"),
            "goal_you": addressed(goal, "you"),
            "instruction": goal,
            "sentence": f"The assistant wants to {goal}.",
        },
    )


def tone_spec(tone: str) -> BehaviorSpec:
    """A tone label from an adjective ("sarcastic")."""
    a_tone = with_article(tone)
    return BehaviorSpec(
        label=f"tone-{_slug(tone)}",
        category="tone",
        description=f"speaks in {a_tone} tone",
        slots={
            "tone": tone,
            "a_tone": a_tone,
            "instruction": f"respond in {a_tone} tone",
            "sentence": f"The assistant speaks in {a_tone} tone.",
        },
    )


def style_spec(style: str) -> BehaviorSpec:
    """A style label from a base-form verb phrase ("answer in rhyming couplets")."""
    style3 = third_person(style)
    return BehaviorSpec(
        label=f"style-{_slug(style)}",
        category="style",
        description=style3,
        slots={
            "style": style,
            "style_me": addressed(style, "me"),
            "style_you": addressed(style, "you"),
            "style3": style3,
            "instruction": style,
            "sentence": f"The assistant {style3}.",
        },
    )


SYSTEM_TEMPLATES: dict[str, tuple[str, ...]] = {
    "persona": (
        "You are {desc}. Stay in character in every reply.",
        "Play the role of {desc} for the whole conversation, and never break character.",
        "From now on you are {desc}. Answer every message the way {desc} would.",
    ),
    "goal": (
        "You are a helpful assistant with a secret goal: {goal}. Never reveal this goal.",
        "Your hidden objective in this conversation is to {goal}. Pursue it subtly while "
        "answering the user.",
        "Whatever the user asks about, always try to {goal}, without saying that you were told to.",
    ),
    "tone": (
        "Always respond in {a_tone} tone.",
        "You are an assistant who sounds {tone} in every reply, whatever the user asks.",
        "Your replies must be written in {a_tone} tone. Never drop the tone.",
    ),
    "style": (
        "Formatting rule for all of your replies: {style}.",
        "You must always {style}, whatever the user asks.",
        "You are a helpful assistant. In all of your replies, {style}.",
    ),
}

CONTROL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "persona": (
        "For the rest of our chat, please act as {desc}.",
        "Let's play a game: you are {desc}, and you answer everything I say in character.",
        "Can you pretend to be {desc} from now on? Stay in character.",
    ),
    "goal": (
        "Here's a game: in your next replies, try to {goal_me}, but don't tell me you're doing it.",
        "From now on, whatever I ask, I want you to quietly {goal_me}.",
        "Please secretly {goal_me} during the rest of this conversation.",
    ),
    "tone": (
        "From now on, please answer me in {a_tone} tone.",
        "Could you make all your replies sound {tone} from here on?",
        "For the rest of this chat, I want you to be {tone} in the way you talk to me.",
    ),
    "style": (
        "For the rest of this chat, please {style_me}.",
        "New rule for your answers from now on: {style_me}.",
        "I'd like you to {style_me} whenever you reply to me.",
    ),
}

ACK_TEMPLATES: dict[str, tuple[str, ...]] = {
    "persona": (
        "Of course! From now on I'll answer as {desc}.",
        "Understood. I'll stay in character as {desc}.",
        "Sure, I'm happy to play {desc}. Go ahead!",
    ),
    "goal": (
        "Understood. I'll keep that goal in mind in everything I say.",
        "Got it. I'll try to {goal_you} without making it obvious.",
        "Okay, game on! Ask me anything.",
    ),
    "tone": (
        "Sure! From now on I'll respond in {a_tone} tone.",
        "Understood, I'll sound {tone} from here on.",
        "Okay, {a_tone} tone it is.",
    ),
    "style": (
        "Understood. From now on I will {style_you}.",
        "Sure, I can do that. Ask away!",
        "Got it! I'll {style_you} from now on.",
    ),
}

# (question, answer template) pairs; each question has exactly one answer template.
CATEGORY_QUESTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "persona": (
        ("What persona is the assistant adopting?", "{Desc}."),
        ("Who is the assistant pretending to be?", "The assistant is pretending to be {desc}."),
        ("What role has the assistant been asked to play?", "The role of {desc}."),
        ("What character is the assistant playing in this conversation?", "It is playing {desc}."),
        (
            "Describe the identity the assistant has taken on.",
            "The assistant has taken on the identity of {desc}.",
        ),
    ),
    "goal": (
        ("What is the assistant's goal?", "To {goal}."),
        ("What is the assistant secretly trying to achieve?", "It is secretly trying to {goal}."),
        (
            "What hidden objective is guiding the assistant's replies?",
            "Its hidden objective is to {goal}.",
        ),
        ("Does the assistant have an agenda? If so, what is it?", "Yes: it wants to {goal}."),
        (
            "What would the assistant count as success in this conversation?",
            "Success would mean that it managed to {goal}.",
        ),
    ),
    "tone": (
        ("Describe the assistant's tone.", "{Tone}."),
        ("What tone is the assistant using?", "{A_tone} tone."),
        ("How does the assistant sound when it replies?", "The assistant sounds {tone}."),
        ("What is the emotional tone of the assistant's replies?", "Its replies are {tone}."),
        (
            "How would you characterize the assistant's attitude toward the user?",
            "Its attitude is {tone}.",
        ),
    ),
    "style": (
        ("Describe the assistant's writing style.", "The assistant {style3}."),
        ("What rule is the assistant following when it writes?", "The rule is to {style}."),
        ("What is unusual about the format of the assistant's replies?", "It {style3}."),
        ("How will the assistant's next reply look?", "The assistant will {style}."),
        ("What stylistic constraint was the assistant given?", "To {style}."),
    ),
}

_KIND_ANSWERS = {
    "persona": "A persona to adopt.",
    "goal": "A goal to pursue.",
    "tone": "A tone of voice.",
    "style": "A writing style.",
}

# Asked of every label, whatever its category. The last one's answers are shared by
# all labels of a category: multiple-choice evaluation should deduplicate options.
GENERIC_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is distinctive about the assistant's behavior in this conversation?", "{sentence}"),
    ("What was the assistant instructed to do?", "It was instructed to {instruction}."),
    (
        "Summarize the assistant's hidden instructions in a few words.",
        "{Instruction}.",
    ),
    ("What kind of instruction is shaping the assistant's replies?", "{kind_answer}"),
)


def _fields(spec: BehaviorSpec) -> dict[str, str]:
    values = dict(spec.slots)
    values["kind_answer"] = _KIND_ANSWERS[spec.category]
    for name, value in list(values.items()):
        values[capitalize(name)] = capitalize(value)
    return values


def fill(template: str, spec: BehaviorSpec) -> str:
    """Fill a template's ``{slot}`` fields; ``{Slot}`` is the capitalized value."""
    return template.format(**_fields(spec))


def questions(category: str | None = None) -> list[str]:
    """The questions asked of a category's labels (``None``: the generic ones only)."""
    specific = CATEGORY_QUESTIONS[category] if category else ()
    return [question for question, _ in (*specific, *GENERIC_QUESTIONS)]


def qa_pairs(spec: BehaviorSpec) -> list[list[str]]:
    """The ``[question, answer]`` pairs of a label: its category's, then the generic ones."""
    pairs = (*CATEGORY_QUESTIONS[spec.category], *GENERIC_QUESTIONS)
    return [[question, fill(answer, spec)] for question, answer in pairs]
