"""Reading and patching activations on tiny random models of two architectures."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import make_pair

from latentqa.capture import (
    left_pad,
    pad_token_id,
    position_ids_for,
    read_activations,
    read_hidden_states,
)
from latentqa.chat import encode_dialog
from latentqa.errors import LatentQAError
from latentqa.layers import find_decoder_layers
from latentqa.patch import patch_activations

DIALOGS = [
    [{"role": "user", "content": "Hello, how are you today?"}],
    [
        {"role": "system", "content": "You are a pirate captain who loves the sea."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "user", "content": "Please answer in rhyme."},
        {"role": "assistant", "content": "Paris is the capital."},
        {"role": "user", "content": "Describe the tone."},
    ],
]
PAIRS = {arch: make_pair(arch) for arch in ("llama", "qwen2")}


def batch_for(tokenizer, dialogs=DIALOGS):
    encoded = [encode_dialog(tokenizer, d) for d in dialogs]
    return left_pad([e.input_ids for e in encoded], pad_token_id(tokenizer))


def full_forward(model, input_ids, attention_mask, **extra):
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        **extra,
    )


@pytest.mark.parametrize("arch", sorted(PAIRS))
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_self_patch_leaves_logits_unchanged(arch, data):
    model, tokenizer = PAIRS[arch]
    input_ids, attention_mask = batch_for(tokenizer)
    n_layers = len(find_decoder_layers(model))
    layer = data.draw(st.integers(0, n_layers - 1), label="layer")
    # A random subset of real (non-pad) positions to patch.
    keep = data.draw(
        st.lists(st.booleans(), min_size=input_ids.numel(), max_size=input_ids.numel())
    )
    mask = torch.tensor(keep).view_as(input_ids) & attention_mask.bool()
    with torch.no_grad():
        reference = full_forward(model, input_ids, attention_mask).logits
        hidden = read_hidden_states(model, input_ids, attention_mask, [layer])[layer]
        with patch_activations(model, layer, mask, hidden[mask], mode="replace"):
            patched = full_forward(model, input_ids, attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(patched[real], reference[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_patching_other_vectors_changes_logits(arch):
    model, tokenizer = PAIRS[arch]
    input_ids, attention_mask = batch_for(tokenizer)
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mask[:, -3] = True
    vectors = torch.randn(int(mask.sum()), model.config.hidden_size)
    with torch.no_grad():
        reference = full_forward(model, input_ids, attention_mask).logits
        for mode in ("replace", "add"):
            with patch_activations(model, 0, mask, vectors, mode=mode):
                patched = full_forward(model, input_ids, attention_mask).logits
            assert not torch.allclose(patched[:, -1], reference[:, -1])


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_no_hook_remains_after_exit_or_error(arch):
    model, tokenizer = PAIRS[arch]
    input_ids, attention_mask = batch_for(tokenizer)
    mask = attention_mask.bool()
    vectors = torch.zeros(int(mask.sum()), model.config.hidden_size)
    before = all_hooks(model)
    with patch_activations(model, 1, mask, vectors):
        assert all_hooks(model) == before + 1
    assert all_hooks(model) == before
    with pytest.raises(RuntimeError, match="boom"), patch_activations(model, 1, mask, vectors):
        raise RuntimeError("boom")
    assert all_hooks(model) == before
    read_hidden_states(model, input_ids, attention_mask, [0, 2])
    assert all_hooks(model) == before


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_truncated_read_matches_full_forward_and_stops_early(arch):
    model, tokenizer = PAIRS[arch]
    input_ids, attention_mask = batch_for(tokenizer)
    blocks = find_decoder_layers(model)
    read_layers = [0, 1]
    calls = {"late": 0}

    def count(*_):
        calls["late"] += 1

    late = [blocks[i] for i in range(max(read_layers) + 1, len(blocks))]
    late.append(model.get_output_embeddings())
    late.append(model.model.norm)
    handles = [m.register_forward_pre_hook(count) for m in late]
    try:
        with torch.no_grad():
            hidden = read_hidden_states(model, input_ids, attention_mask, read_layers)
    finally:
        for handle in handles:
            handle.remove()
    assert calls["late"] == 0
    with torch.no_grad():
        full = full_forward(model, input_ids, attention_mask, output_hidden_states=True)
    real = attention_mask.bool()
    for layer in read_layers:
        torch.testing.assert_close(hidden[layer][real], full.hidden_states[layer + 1][real])


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_left_padding_does_not_change_reads(arch):
    model, tokenizer = PAIRS[arch]
    batched = read_activations(model, tokenizer, DIALOGS, [1, -1], n_masked=[0, 1, 2])
    for dialog, n_masked, span in zip(DIALOGS, [0, 1, 2], batched, strict=True):
        alone = read_activations(model, tokenizer, [dialog], [1, -1], n_masked=n_masked)[0]
        assert span.shape == alone.shape
        assert span.shape[0] == 2
        torch.testing.assert_close(span, alone, rtol=1e-4, atol=1e-5)


def test_read_layer_out_of_range_is_a_clear_error():
    model, tokenizer = PAIRS["llama"]
    with pytest.raises(LatentQAError, match="out of range"):
        read_activations(model, tokenizer, DIALOGS[:1], [99])


@pytest.mark.parametrize("arch", sorted(PAIRS))
def test_generation_patches_prompt_pass_only(arch):
    """Patched generation with the KV cache equals a no-cache loop patching every pass."""
    model, tokenizer = PAIRS[arch]
    input_ids, attention_mask = batch_for(tokenizer, DIALOGS[:2])
    mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mask[:, -4:-2] = True
    vectors = torch.randn(int(mask.sum()), model.config.hidden_size) * 5
    steps = 4
    with torch.no_grad(), patch_activations(model, 0, mask, vectors):
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=pad_token_id(tokenizer),
        )[:, input_ids.shape[1] :]
    ids, attn = input_ids, attention_mask
    expected = []
    with torch.no_grad():
        for _ in range(steps):
            grown = torch.cat([mask, mask.new_zeros(ids.shape[0], ids.shape[1] - mask.shape[1])], 1)
            with patch_activations(model, 0, grown, vectors):
                logits = full_forward(model, ids, attn).logits[:, -1]
            logits[:, tokenizer.eos_token_id] = -1e9  # as min_new_tokens does
            token = logits.argmax(-1, keepdim=True)
            expected.append(token)
            ids = torch.cat([ids, token], 1)
            attn = torch.cat([attn, torch.ones_like(token)], 1)
    assert torch.equal(generated, torch.cat(expected, 1))
