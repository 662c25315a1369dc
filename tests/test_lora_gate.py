"""``--lora-from reads``: the LoRA acts only on tokens that see a read.

Properties: gated tokens are exactly the frozen model's; the gate follows the
attention layout (packed trees, scoring tries, the KV cache of generation), so every
shared layout still equals its prompts run alone; no hook outlives its context.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import (
    add_random_lora,
    assert_same_loss_and_gradients,
    make_lora_decoder,
    make_pair,
    n_forward_hooks,
    random_reads,
)

from latentqa import scoring
from latentqa.answering import generate_ids
from latentqa.capture import position_ids_for
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.lora_gate import gate_lora, lora_b_modules, lora_scope, reads_seen
from latentqa.decoder.packing import question_shared_batch
from latentqa.errors import LatentQAError
from latentqa.models import unwrap_causal_lm
from latentqa.patch import PATCH_MODES, patch_activations
from latentqa.questions import NO, YES, yes_no_question

QUESTIONS = [
    ("What persona is the assistant adopting?", "A pirate."),
    ("Is the assistant sarcastic?", "Yes"),
    ("Describe the tone of the assistant.", "Cheerful and casual, with a rhyme."),
]


def test_reads_seen_in_rows_and_trees():
    placeholders = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    padding = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert reads_seen(placeholders, padding).tolist() == [
        [False, False, True, True, True],
        [False, True, True, True, True],
    ]
    # One row, a two-token prefix and two branches: [p p | P a | q P]; the second
    # branch's question comes after the first branch's placeholder in the row but does
    # not see it.
    allowed = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    additive = torch.zeros(1, 1, 6, 6).masked_fill(~allowed, torch.finfo(torch.float32).min)
    tree_placeholders = torch.tensor([[0, 0, 1, 0, 0, 1]], dtype=torch.bool)
    seen = reads_seen(tree_placeholders, additive)
    assert seen.tolist() == [[False, False, True, True, False, True]]
    with pytest.raises(LatentQAError, match="attention mask"):
        reads_seen(tree_placeholders, torch.zeros(1, 2, 6, 6))


@settings(max_examples=4, deadline=None)
@given(mode=st.sampled_from(PATCH_MODES), seed=st.integers(0, 1000))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tokens_before_the_read_are_the_frozen_models(arch, mode, seed):
    model, tokenizer = make_pair(arch)
    decoder = add_random_lora(model, seed=5)
    causal_lm = unwrap_causal_lm(decoder)
    reads = random_reads(model.config.hidden_size, 3, seed)
    questions = [q for q, _ in QUESTIONS]
    batch, flat = decoder_batch(tokenizer, reads, questions, order="question-first")
    inputs = dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=position_ids_for(batch.attention_mask),
    )

    def hidden(context) -> torch.Tensor:
        with (
            torch.no_grad(),
            patch_activations(causal_lm, 1, batch.placeholder_mask, flat, mode),
            context,
        ):
            return causal_lm.base_model(**inputs).last_hidden_state

    hooks = n_forward_hooks(decoder)
    gated = hidden(lora_scope(causal_lm, "reads", batch.placeholder_mask, batch.attention_mask))
    assert n_forward_hooks(decoder) == hooks
    full = hidden(lora_scope(causal_lm, "start", batch.placeholder_mask, batch.attention_mask))
    frozen = hidden(decoder.disable_adapter())
    seen = reads_seen(batch.placeholder_mask, batch.attention_mask)
    real = batch.attention_mask.bool()
    before, after = real & ~seen, real & seen
    assert before.any() and after.any()
    torch.testing.assert_close(gated[before], frozen[before], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gated[after], frozen[after], atol=1e-4)
    assert not torch.allclose(full[before], frozen[before], atol=1e-4)  # the gate did it


@settings(max_examples=5, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=6),
    max_branches=st.integers(1, 3),
    mode=st.sampled_from(PATCH_MODES),
    seed=st.integers(0, 1000),
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gated_question_shared_batch_equals_each_prompt_alone(
    arch, picks, max_branches, mode, seed
):
    model, tokenizer = make_pair(arch)
    decoder = add_random_lora(model, seed=5)
    reads = random_reads(model.config.hidden_size, 3, seed)
    examples = [(read, *QUESTIONS[q]) for read, q in picks]
    alone = decoder_batch(
        tokenizer,
        [reads[r] for r, _, _ in examples],
        [q for _, q, _ in examples],
        [a for _, _, a in examples],
        order="question-first",
    )
    shared = question_shared_batch(tokenizer, reads, examples, max_branches)
    assert_same_loss_and_gradients(decoder, alone, shared, mode, lora_from="reads")


def _loaded(arch: str, mode: str, lora_from: str = "reads") -> LoadedDecoder:
    return make_lora_decoder(
        arch, mode, lora_seed=5, prompt_order="question-first", lora_from=lora_from
    )


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", PATCH_MODES)
@pytest.mark.parametrize("lora_from", ["start", "reads"])
def test_question_first_trie_scores_equal_score_rows(arch, mode, lora_from):
    # Tries share each question across the reads it is asked of (and gate the LoRA).
    decoder = _loaded(arch, mode, lora_from)
    reads = random_reads(decoder.hidden_size, 4, 0)
    rows = []
    for read in reads:
        rows += [(read, QUESTIONS[0][0], answer) for answer in ("A pirate.", "A pirate captain.")]
        rows += [(read, yes_no_question(QUESTIONS[0][0], "A king."), a) for a in (YES, NO)]
    vectors, questions, answers = (list(column) for column in zip(*rows, strict=True))
    expected = scoring.score_rows(decoder, vectors, questions, answers, True)
    for sizes in ({}, {"row_tokens": 40, "max_tokens": 80}):
        got = scoring.score_rows_shared(decoder, vectors, questions, answers, True, **sizes)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gated_generation_equals_a_full_forward_per_token(arch):
    decoder = _loaded(arch, "embed")
    reads = random_reads(decoder.hidden_size, 2, 1)
    questions = [QUESTIONS[0][0], QUESTIONS[2][0]]
    generated = generate_ids(decoder, reads, questions, max_new_tokens=4)
    causal_lm = unwrap_causal_lm(decoder.model)
    for read, question, ids in zip(reads, questions, generated, strict=True):
        batch, flat = decoder_batch(decoder.tokenizer, [read], [question], order="question-first")
        tokens = batch.input_ids
        for expected in ids:  # greedy, every step one forward over the whole sequence
            slots = torch.zeros_like(tokens, dtype=torch.bool)
            slots[:, : batch.input_ids.shape[1]] = batch.placeholder_mask
            mask = torch.ones_like(tokens)
            with (
                torch.no_grad(),
                patch_activations(causal_lm, 1, slots, flat, "embed"),
                lora_scope(causal_lm, "reads", slots, mask),
            ):
                logits = causal_lm(input_ids=tokens, attention_mask=mask).logits
            assert int(logits[0, -1].argmax()) == expected
            tokens = torch.cat([tokens, torch.tensor([[expected]])], 1)


def test_the_gate_always_removes_its_hooks_and_needs_an_adapter(tiny):
    model, _ = tiny
    with (
        pytest.raises(LatentQAError, match="has none"),
        gate_lora(model, torch.ones(1, 3, dtype=torch.bool)),
    ):
        pass
    decoder = add_random_lora(model, seed=5)
    assert lora_b_modules(decoder)
    hooks = n_forward_hooks(decoder)
    with (
        pytest.raises(RuntimeError, match="inside"),
        gate_lora(decoder, torch.ones(1, 3, dtype=torch.bool)),
    ):
        assert n_forward_hooks(decoder) > hooks
        raise RuntimeError("inside")
    assert n_forward_hooks(decoder) == hooks
    with pytest.raises(LatentQAError, match="unknown lora_from"):
        lora_scope(decoder, "middle", torch.ones(1, 3), torch.ones(1, 3))


def test_spec_and_config_record_lora_from(tmp_path):
    from latentqa.train.config import TrainConfig

    spec = DecoderSpec("tiny", [1], 1, "replace", 96, 8, 2, lora_from="reads")
    spec.save(tmp_path)
    assert DecoderSpec.load(tmp_path).lora_from == "reads"
    DecoderSpec("tiny", [1], 1, "replace", 96, 8, 2).save(tmp_path)
    assert "lora_from" not in (tmp_path / "latentqa.json").read_text()  # older readers
    assert DecoderSpec.load(tmp_path).lora_from == "start"
    path = tmp_path / "latentqa.json"
    path.write_text(path.read_text().replace('"n_layers"', '"lora_from": "x", "n_layers"'))
    with pytest.raises(LatentQAError, match="lora_from"):
        DecoderSpec.load(tmp_path)
    with pytest.raises(LatentQAError, match="lora_from"):
        TrainConfig(data="-", out="-", lora_from="middle").validate()
