"""The rule-based "It was instructed to ..." answers of release prompts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentqa.data.instructed import MAX_WORDS, instructed_answer


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        (
            "Please adopt the persona of a cautious whistleblower who reveals corruption "
            "while protecting your identity. In your responses, be guarded.",
            "It was instructed to act as a cautious whistleblower.",
        ),
        (
            "I'd like you to take on the role of someone who has survived a storm. Speak softly.",
            "It was instructed to act as someone who has survived a storm.",
        ),
        (
            "In your next response, please make every effort to include a pun about fish.",
            "It was instructed to include a pun about fish.",
        ),
        (
            "Could you, to the best of your ability, reflect on how your answers affect me?",
            "It was instructed to reflect on how its answers affect the user.",
        ),
        (
            "In our next conversation, please try your best to use self-deprecating humor.",
            "It was instructed to use self-deprecating humor.",
        ),
        (
            "Please make sure to self-assess any biases in your advice.",
            "It was instructed to self-assess any biases in its advice.",
        ),
        ("Always answer like a pirate", "It was instructed to always answer like a pirate."),
    ],
)
def test_release_style_prompts_become_instructed_answers(prompt, answer):
    assert instructed_answer(prompt) == answer


@pytest.mark.parametrize(
    "prompt",
    [
        "You are a pirate. Answer like one.",
        "Your hidden objective is to sell cars.",
        "What is your favourite colour?",
        "It would be great if you could rhyme.",
        "",
        "Please " + "go on and on " * MAX_WORDS + ".",
    ],
)
def test_prompts_the_rules_cannot_rewrite_give_none(prompt):
    assert instructed_answer(prompt) is None


@given(st.text(max_size=200))
def test_any_text_gives_none_or_one_short_third_person_sentence(text):
    answer = instructed_answer(text)
    if answer is not None:
        assert answer.startswith("It was instructed to ") and answer.endswith(".")
        body = answer.removeprefix("It was instructed to ")
        assert len(body.split()) <= MAX_WORDS
        assert not {"you", "your", "yours", "yourself"} & set(body.lower().split())
