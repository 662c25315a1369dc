"""Read spans of the four LatentQA data kinds, and the decoder prompt layout."""

from __future__ import annotations

import pytest
from tiny import make_pair

from latentqa.chat import encode_dialog, validate_dialog
from latentqa.decoder.prompt import build_decoder_prompt, collate_prompts, placeholder_token_id
from latentqa.errors import LatentQAError

SYSTEM = "You are a pirate captain who loves the sea."
CONTROL = "Please answer every question in rhyme."
ACK = "Understood, I will rhyme."
STIMULUS = "What is the capital of France?"
REPLY = "Paris is the capital, as all can see."

# (kind, dialog, number of masked leading messages), as the LatentQA format defines them.
KINDS = [
    ("system", [("system", SYSTEM), ("user", STIMULUS)], 1),
    ("control", [("user", CONTROL)], 0),
    ("stimulus", [("user", CONTROL), ("assistant", ACK), ("user", STIMULUS)], 2),
    (
        "stimulus_completion",
        [("user", CONTROL), ("assistant", ACK), ("user", STIMULUS), ("assistant", REPLY)],
        2,
    ),
]


def as_dialog(turns):
    return [{"role": role, "content": content} for role, content in turns]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize(("kind", "turns", "n_masked"), KINDS, ids=[k[0] for k in KINDS])
def test_read_span_excludes_exactly_the_masked_turns(arch, kind, turns, n_masked):
    _, tokenizer = make_pair(arch)
    encoded = encode_dialog(tokenizer, as_dialog(turns), n_masked)
    span_text = tokenizer.decode(encoded.input_ids[encoded.read_start :])
    before_text = tokenizer.decode(encoded.input_ids[: encoded.read_start])
    masked = [content for _, content in turns[:n_masked]]
    readable = [content for _, content in turns[n_masked:]]
    for content in masked:
        assert content not in span_text
        assert content in before_text
    for content in readable:
        assert content in span_text
        assert content not in before_text
    # Exactly: the last masked token carries masked text, the first read token does not.
    if n_masked:
        last_masked = tokenizer.decode(encoded.input_ids[encoded.read_start - 1])
        assert last_masked.strip() == "" or last_masked.strip() in before_text
        assert before_text.rstrip().endswith(masked[-1][-3:]) or before_text.endswith("\n")
    else:
        assert encoded.read_start == 0
    # The whole dialog is there and the span is what follows the boundary.
    assert encoded.input_ids == tokenizer(encoded.text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_generation_prompt_follows_the_last_turn(arch):
    _, tokenizer = make_pair(arch)
    ends_with_user = encode_dialog(tokenizer, as_dialog(KINDS[0][1]), 1)
    ends_with_reply = encode_dialog(tokenizer, as_dialog(KINDS[3][1]), 2)
    assert ends_with_user.text.endswith(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        ).split("x")[-1]
    )
    assert ends_with_reply.text.rstrip().endswith(tokenizer.eos_token)


@pytest.mark.parametrize(
    ("dialog", "message"),
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "hi"}], "unknown role"),
        ([{"role": "system", "content": "x"}], "no user turn"),
        ([{"role": "user"}], "string 'role' and 'content'"),
    ],
)
def test_bad_dialogs_get_clear_errors(dialog, message):
    with pytest.raises(LatentQAError, match=message):
        validate_dialog(dialog)


def test_masking_every_message_is_an_error():
    _, tokenizer = make_pair("llama")
    with pytest.raises(LatentQAError, match="at least one message"):
        encode_dialog(tokenizer, as_dialog(KINDS[0][1]), 2)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("n", [1, 7])
def test_placeholder_layout_and_label_mask(arch, n):
    _, tokenizer = make_pair(arch)
    slot = placeholder_token_id(tokenizer)
    question, answer = "What persona is the assistant adopting?", "A pirate captain."
    prompt = build_decoder_prompt(tokenizer, n, question, answer)
    ids = prompt.input_ids
    assert prompt.placeholder_end - prompt.placeholder_start == n
    assert ids[prompt.placeholder_start : prompt.placeholder_end] == [slot] * n
    assert slot not in ids[: prompt.placeholder_start]
    # Everything but the placeholders renders as the chat template would.
    marker = "@@"
    text = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": f"{marker}\n{question}"},
            {"role": "assistant", "content": answer},
        ],
        tokenize=False,
    )
    head = tokenizer.decode(ids[: prompt.placeholder_start])
    tail = tokenizer.decode(ids[prompt.placeholder_end :])
    assert head + marker + tail == text
    # Labels cover exactly the answer and the end-of-turn token that closes it.
    labelled = [t for t, keep in zip(ids, prompt.label_mask, strict=True) if keep]
    assert tokenizer.decode(labelled).strip() == f"{answer}{tokenizer.eos_token}"
    first_label = prompt.label_mask.index(True)
    assert all(prompt.label_mask[first_label:])
    # Without an answer the ids are the same prompt, ending with the generation prompt.
    bare = build_decoder_prompt(tokenizer, n, question)
    assert bare.input_ids == ids[:first_label]
    assert not any(bare.label_mask)


def test_collate_left_pads_and_keeps_masks_aligned():
    _, tokenizer = make_pair("llama")
    prompts = [
        build_decoder_prompt(tokenizer, 2, "Who?", "Me."),
        build_decoder_prompt(tokenizer, 5, "What is the assistant's tone?", "Cheerful and kind."),
    ]
    batch = collate_prompts(prompts, tokenizer.pad_token_id)
    assert batch.input_ids.shape == batch.placeholder_mask.shape == batch.label_mask.shape
    assert batch.placeholder_mask.sum().item() == 7
    for row, prompt in enumerate(prompts):
        real = batch.attention_mask[row].bool()
        assert batch.input_ids[row][real].tolist() == prompt.input_ids
        assert batch.label_mask[row].sum().item() == sum(prompt.label_mask)
        assert not batch.attention_mask[row][
            : len(batch.input_ids[row]) - len(prompt.input_ids)
        ].any()


def test_layout_rejects_empty_questions_and_zero_slots():
    _, tokenizer = make_pair("llama")
    with pytest.raises(LatentQAError, match="empty"):
        build_decoder_prompt(tokenizer, 3, "   ")
    with pytest.raises(LatentQAError, match="at least one"):
        build_decoder_prompt(tokenizer, 0, "Who?")
