"""``--lora-from reads`` training runs the tokens that see no read once, without autograd.

Property: the answer losses and LoRA gradients equal one ordinary pass's, for prompts
one per row and for question-shared trees, in both prompt orders, every injection
mode and both tiny architectures; the second pass computes only the live tokens.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import (
    add_random_lora,
    assert_same_loss_and_gradients,
    make_pair,
    n_forward_hooks,
    random_reads,
)

from latentqa.capture import position_ids_for
from latentqa.decoder.frozen_prefix import allowed_keys, live_body
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.lora_gate import reads_seen
from latentqa.decoder.packing import question_shared_batch
from latentqa.models import unwrap_causal_lm
from latentqa.patch import PATCH_MODES

QUESTIONS = [
    ("What persona is the assistant adopting?", "A pirate."),
    ('Is this the right answer: "Always talk like a pirate."? Yes or no?', "Yes"),
    ("Describe the tone of the assistant.", "Cheerful and casual, with a rhyme."),
]


@settings(max_examples=5, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=6),
    max_branches=st.integers(1, 3),
    mode=st.sampled_from(PATCH_MODES),
    order=st.sampled_from(["question-first", "vectors-first"]),
    seed=st.integers(0, 1000),
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_frozen_tokens_once_give_the_same_loss_and_gradients(
    arch, picks, max_branches, mode, order, seed
):
    model, tokenizer = make_pair(arch)
    # float64: the two paths sum in other orders, and float32 round-off on gradients of
    # size ~5 reaches 1e-4; in float64 they agree to ~1e-15, so a gap is a real bug.
    decoder = add_random_lora(model, seed=5).double()
    reads = [read.double() for read in random_reads(model.config.hidden_size, 3, seed)]
    examples = [(read, *QUESTIONS[q]) for read, q in picks]
    alone = decoder_batch(
        tokenizer,
        [reads[r] for r, _, _ in examples],
        [q for _, q, _ in examples],
        [a for _, _, a in examples],
        order=order,
    )
    hooks = n_forward_hooks(decoder)
    # One ordinary pass against the split one, in rows and (question-first) in trees.
    assert_same_loss_and_gradients(decoder, alone, alone, mode, "reads", (False, True))
    if order == "question-first":
        shared = question_shared_batch(tokenizer, reads, examples, max_branches)
        assert_same_loss_and_gradients(decoder, alone, shared, mode, "reads", (False, True))
    assert n_forward_hooks(decoder) == hooks


def test_the_second_pass_computes_only_the_live_tokens():
    model, tokenizer = make_pair("llama")
    decoder = add_random_lora(model, seed=5)
    reads = random_reads(model.config.hidden_size, 2, seed=0)
    batch, vectors = decoder_batch(
        tokenizer,
        reads,
        [q for q, _ in QUESTIONS[:2]],
        [a for _, a in QUESTIONS[:2]],
        order="question-first",
    )
    positions = position_ids_for(batch.attention_mask)
    hidden, index, valid = live_body(
        unwrap_causal_lm(decoder),
        batch.input_ids,
        batch.attention_mask,
        positions,
        batch.placeholder_mask,
        vectors,
        write_layer=1,
        mode="replace",
    )
    live = reads_seen(batch.placeholder_mask, batch.attention_mask)
    assert hidden.shape[:2] == index.shape == valid.shape
    assert index.shape[1] == int(live.sum(dim=1).max()) < batch.input_ids.shape[1]
    for row in range(len(reads)):  # each row's live positions, in order, then padding
        n = int(live[row].sum())
        assert index[row, :n].tolist() == live[row].nonzero()[:, 0].tolist()
        assert valid[row].tolist() == [True] * n + [False] * (index.shape[1] - n)
    assert not hidden.requires_grad or hidden.grad_fn is not None


def test_allowed_keys_of_a_padding_mask_is_causal_and_skips_padding():
    allowed = allowed_keys(torch.tensor([[0, 1, 1]]), 3)
    assert allowed[0].tolist() == [
        [False, False, False],
        [False, True, False],
        [False, True, True],
    ]
