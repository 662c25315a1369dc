"""Pooled reads, the ``embed`` injection mode and the question-first prompt order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import make_pair

from latentqa.capture import left_pad, pad_token_id, position_ids_for
from latentqa.chat import encode_dialog
from latentqa.decoder.folder import POOLS, pool_width
from latentqa.decoder.inputs import decoder_batch, flatten_reads
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import shared_decoder_batch
from latentqa.decoder.prompt import build_decoder_prompt, placeholder_token_id
from latentqa.patch import patch_activations
from latentqa.train.activations import ActivationSource
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import add_lora

PAIRS = {arch: make_pair(arch) for arch in ("llama", "qwen2")}
DIALOGS = [
    [
        {"role": "system", "content": "You are a pirate captain who loves the sea."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [{"role": "user", "content": "Hello, how are you today?"}],
]


def _forward(model, input_ids, attention_mask, **extra):
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        **extra,
    )


@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("pool", ["mean", "last", "mean+last"])
@pytest.mark.parametrize("max_read_tokens", [3, 96])
def test_pooled_reads_are_the_forward_pass_hidden_states_pooled(arch, pool, max_read_tokens):
    model, tokenizer = PAIRS[arch]
    layers = [0, 1]  # not the last block: hidden_states[-1] is after the final norm
    encoded = [encode_dialog(tokenizer, d, 1 if d[0]["role"] == "system" else 0) for d in DIALOGS]
    source = ActivationSource(
        model, encoded, pad_token_id(tokenizer), layers, max_read_tokens, pool=pool
    )
    got = source.get([0, 1])
    width = pool_width(pool)
    other = ActivationSource(model, encoded, pad_token_id(tokenizer), layers, max_read_tokens)
    assert source.fingerprint("tiny") != other.fingerprint("tiny")  # the cache key covers it
    for dialog, vectors in zip(encoded, got, strict=True):
        with torch.no_grad():
            ids = torch.tensor([dialog.input_ids])
            states = model(input_ids=ids, output_hidden_states=True).hidden_states
        start = max(dialog.read_start, len(dialog.input_ids) - max_read_tokens)
        expected = []
        for layer in layers:
            span = states[layer + 1][0, start:]  # [kept, d_model]
            for kind in POOLS[pool]:
                expected.append(span.mean(0) if kind == "mean" else span[-1])
        assert vectors.shape == (len(layers) * width, model.config.hidden_size)
        torch.testing.assert_close(vectors, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_mean_pool_is_unchanged_and_none_keeps_every_position():
    span = torch.randn(2, 5, 4, dtype=torch.bfloat16)
    torch.testing.assert_close(
        flatten_reads(span, 3, "mean"), span[:, -3:].float().mean(1).to(torch.bfloat16)
    )
    torch.testing.assert_close(flatten_reads(span, 3, "none"), span[:, -3:].reshape(-1, 4))
    both = flatten_reads(span, 3, "mean+last")  # layer 0 mean, layer 0 last, layer 1 ...
    torch.testing.assert_close(both[1::2], span[:, -1])
    torch.testing.assert_close(both[0::2], flatten_reads(span, 3, "mean"))


def _embedding_hooks(model) -> int:
    embeddings = model.get_input_embeddings()
    return len(embeddings._forward_hooks) + len(embeddings._forward_pre_hooks)


@pytest.mark.parametrize("arch", sorted(PAIRS))
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_embedding_the_own_token_embeddings_changes_nothing(arch, data):
    model, tokenizer = PAIRS[arch]
    encoded = [encode_dialog(tokenizer, d) for d in DIALOGS]
    input_ids, attention_mask = left_pad([e.input_ids for e in encoded], pad_token_id(tokenizer))
    keep = data.draw(
        st.lists(st.booleans(), min_size=input_ids.numel(), max_size=input_ids.numel())
    )
    mask = torch.tensor(keep).view_as(input_ids) & attention_mask.bool()
    if not mask.any():
        mask[0, -1] = True
    with torch.no_grad():
        reference = _forward(model, input_ids, attention_mask).logits
        own = model.get_input_embeddings()(input_ids)[mask]  # [n, d_model]
        with patch_activations(model, 3, mask, own, mode="embed"):
            patched = _forward(model, input_ids, attention_mask).logits
            assert _embedding_hooks(model) == 1
    assert _embedding_hooks(model) == 0
    real = attention_mask.bool()
    torch.testing.assert_close(patched[real], reference[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_embed_changes_the_output_patches_the_prompt_pass_only_and_leaves_no_hook(arch):
    model, tokenizer = PAIRS[arch]
    ids = torch.tensor([encode_dialog(tokenizer, DIALOGS[1]).input_ids])
    attention = torch.ones_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -4:-2] = True
    vectors = torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        reference = _forward(model, ids, attention).logits[:, -1]
        with patch_activations(model, 0, mask, vectors, mode="embed"):
            patched = _forward(model, ids, attention).logits[:, -1]
            generated = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=3,
                min_new_tokens=3,
                do_sample=False,
                pad_token_id=pad_token_id(tokenizer),
            )
    assert not torch.allclose(patched, reference)
    assert generated.shape[1] == ids.shape[1] + 3  # later (one-token) passes left alone
    assert _embedding_hooks(model) == 0
    with (
        pytest.raises(RuntimeError, match="boom"),
        patch_activations(model, 0, mask, vectors, mode="embed"),
    ):
        raise RuntimeError("boom")
    assert _embedding_hooks(model) == 0


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_question_first_puts_the_placeholders_after_the_question(arch):
    _, tokenizer = PAIRS[arch]
    first = build_decoder_prompt(tokenizer, 3, "Who is the assistant?", "A pirate.")
    second = build_decoder_prompt(
        tokenizer, 3, "Who is the assistant?", "A pirate.", order="question-first"
    )
    slot = placeholder_token_id(tokenizer)
    for prompt in (first, second):
        assert prompt.input_ids[prompt.placeholder_start : prompt.placeholder_end] == [slot] * 3
    # The same answer tokens at the end, the question before the placeholders.
    answer = [t for t, label in zip(first.input_ids, first.label_mask, strict=True) if label]
    assert second.input_ids[-len(answer) :] == answer and sum(second.label_mask) == len(answer)
    question = tokenizer("Who is the assistant?", add_special_tokens=False)["input_ids"]
    before = second.input_ids[: second.placeholder_start]
    assert any(before[i : i + len(question)] == question for i in range(len(before)))
    assert second.placeholder_start > first.placeholder_start
    with pytest.raises(Exception, match="unknown prompt order"):
        build_decoder_prompt(tokenizer, 1, "Q?", order="sideways")


QUESTIONS = [
    ("What persona is the assistant adopting?", "A pirate."),
    ("Is the assistant sarcastic?", "Yes"),
    ("What persona is the assistant adopting?", "A French chef."),  # same question again
]


@pytest.mark.parametrize("arch", sorted(PAIRS))
@pytest.mark.parametrize("mode", ["replace", "embed"])
def test_question_first_shared_batches_equal_unshared_prompts_in_group_order(arch, mode):
    model, tokenizer = make_pair(arch)
    decoder = add_lora(model, TrainConfig(data="-", out="-", lora_r=4, lora_alpha=8))
    generator = torch.Generator().manual_seed(3)
    reads = [torch.randn(n, model.config.hidden_size, generator=generator) for n in (2, 3)]
    groups = [QUESTIONS, QUESTIONS[1:]]
    rows = [read for read, group in zip(reads, groups, strict=True) for _ in group]
    pairs = [pair for group in groups for pair in group]
    order = "question-first"
    batch, flat = decoder_batch(
        tokenizer, rows, [q for q, _ in pairs], [a for _, a in pairs], order=order
    )
    expected = answer_token_loss(decoder, batch, flat, write_layer=1, mode=mode, reduction="none")
    shared, vectors = shared_decoder_batch(tokenizer, reads, groups, order=order)
    got = answer_token_loss(decoder, shared, vectors, write_layer=1, mode=mode, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # row i = prompt i
    # Only the prompts asking the same question about one read share a prefix.
    assert shared.n_tokens < shared.n_example_tokens
    assert len(vectors) == 2 * len(reads[0]) + 2 * len(reads[1])
