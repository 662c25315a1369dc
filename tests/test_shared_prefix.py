"""Sharing a read's prefix computes the same loss and gradients as unshared prompts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import assert_same_loss_and_gradients

from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import (
    HEADER,
    cpu_attention,
    question_shared_batch,
    shared_decoder_batch,
)
from latentqa.decoder.prompt import build_decoder_prompt
from latentqa.patch import PATCH_MODES
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import add_lora

QUESTIONS = [
    ("What persona is the assistant adopting?", "A pirate."),
    ("Describe the tone of the assistant.", "Cheerful and casual, with a rhyme."),
    ("Is the assistant sarcastic?", "Yes"),
    ("What is the capital of France?", "Paris is the capital."),
]


def _reads(model, n_reads: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    d = model.config.hidden_size
    return [torch.randn(2 + (3 * i) % 5, d, generator=generator) for i in range(n_reads)]


def _common_prefix(rows: list[list[int]]) -> list[int]:
    """The longest list every row starts with."""
    n = 0
    while all(len(r) > n and r[n] == rows[0][n] for r in rows):
        n += 1
    return rows[0][:n]


def _lora(model):
    return add_lora(model, TrainConfig(data="-", out="-", lora_r=4, lora_alpha=8))


@settings(max_examples=6, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    mode=st.sampled_from(PATCH_MODES),
    seed=st.integers(0, 1000),
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_loss_and_gradients_equal_unshared(arch, sizes, mode, seed):
    from tiny import make_pair

    model, tokenizer = make_pair(arch)
    decoder = _lora(model)
    reads = _reads(model, len(sizes), seed)
    pick = lambda i, j: QUESTIONS[(seed + i + j) % len(QUESTIONS)]  # noqa: E731
    groups = [[pick(i, j) for j in range(k)] for i, k in enumerate(sizes)]
    # The same prompts, one row each: every group member repeats its read.
    flat_reads = [read for read, group in zip(reads, groups, strict=True) for _ in group]
    pairs = [pair for group in groups for pair in group]
    batch, flat = decoder_batch(tokenizer, flat_reads, [q for q, _ in pairs], [a for _, a in pairs])
    shared, vectors = shared_decoder_batch(tokenizer, reads, groups)
    assert_same_loss_and_gradients(decoder, (batch, flat), (shared, vectors), mode)
    # The shared layout computes each prefix once and counts every prompt's tokens.
    assert shared.n_example_tokens == int(batch.attention_mask.sum())
    assert shared.n_tokens <= shared.n_example_tokens


def test_mean_reduction_matches_and_math_attention_changes_nothing(tiny):
    model, tokenizer = tiny
    decoder = _lora(model)
    reads = _reads(model, 2, 7)
    groups = [QUESTIONS[:3], QUESTIONS[2:]]
    shared, vectors = shared_decoder_batch(tokenizer, reads, groups)
    flat_reads = [reads[0]] * 3 + [reads[1]] * 2
    pairs = groups[0] + groups[1]
    batch, flat = decoder_batch(tokenizer, flat_reads, [q for q, _ in pairs], [a for _, a in pairs])
    expected = answer_token_loss(decoder, batch, flat, write_layer=0, mode="replace")
    with cpu_attention(torch.device("cpu")):
        got = answer_token_loss(decoder, shared, vectors, write_layer=0, mode="replace")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_group_without_questions_is_an_error(tiny):
    from latentqa.errors import LatentQAError

    model, tokenizer = tiny
    with pytest.raises(LatentQAError, match="at least one question"):
        shared_decoder_batch(tokenizer, _reads(model, 1, 0), [[]])


@pytest.mark.parametrize("row_tokens", [1, 10_000])
def test_packing_trees_into_rows_changes_nothing(tiny, row_tokens):
    # 1: one tree per row; 10,000: every tree in one row, side by side.
    model, tokenizer = tiny
    decoder = _lora(model)
    reads = _reads(model, 3, 11)
    groups = [QUESTIONS[:2], QUESTIONS[1:2], QUESTIONS[2:]]
    shared, vectors = shared_decoder_batch(tokenizer, reads, groups, row_tokens)
    assert shared.input_ids.shape[0] == (3 if row_tokens == 1 else 1)
    flat_reads = [reads[0]] * 2 + [reads[1]] + [reads[2]] * 2
    pairs = [pair for group in groups for pair in group]
    batch, flat = decoder_batch(tokenizer, flat_reads, [q for q, _ in pairs], [a for _, a in pairs])
    expected = answer_token_loss(decoder, batch, flat, write_layer=1, mode="add", reduction="none")
    got = answer_token_loss(decoder, shared, vectors, write_layer=1, mode="add", reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # Each row computes the tokens every prompt opens with (the chat header) once.
    opened = []
    for read, group in zip(reads, groups, strict=True):
        p = build_decoder_prompt(tokenizer, len(read), *group[0])
        opened.append(p.input_ids[: p.placeholder_start])
    header = _common_prefix(opened)
    assert len(header) > 0
    for row in range(shared.input_ids.shape[0]):
        at = shared.trees[row] == HEADER
        assert shared.input_ids[row][at].tolist() == header
        assert shared.position_ids[row][at].tolist() == list(range(len(header)))
    # Each tree alone: its prefix (to the last placeholder) once, then its branches.
    alone = 0
    for read, group in zip(reads, groups, strict=True):
        prompts = [build_decoder_prompt(tokenizer, len(read), *pair) for pair in group]
        alone += prompts[0].placeholder_end
        alone += sum(len(p.input_ids) - p.placeholder_end for p in prompts)
    rows = shared.input_ids.shape[0]
    assert shared.n_tokens == alone - len(header) * (len(groups) - rows)


@settings(max_examples=6, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=7),
    max_branches=st.integers(1, 4),
    mode=st.sampled_from(PATCH_MODES),
    seed=st.integers(0, 1000),
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_question_shared_batch_equals_each_prompt_alone(arch, picks, max_branches, mode, seed):
    # Question-first prompts that ask one question of different reads share the question.
    from tiny import make_pair

    model, tokenizer = make_pair(arch)
    decoder = _lora(model)
    reads = _reads(model, 3, seed)
    examples = [(read, *QUESTIONS[q]) for read, q in picks]
    batch, flat = decoder_batch(
        tokenizer,
        [reads[r] for r, _, _ in examples],
        [q for _, q, _ in examples],
        [a for _, _, a in examples],
        order="question-first",
    )
    shared, vectors = question_shared_batch(tokenizer, reads, examples, max_branches)
    assert_same_loss_and_gradients(decoder, (batch, flat), (shared, vectors), mode)
    assert shared.n_example_tokens == int(batch.attention_mask.sum())
    # Each tree computes its question once: up to max_branches examples of one question.
    prefixes, trees, seen, opened = 0, {}, {}, []
    for read, question, answer in examples:
        p = build_decoder_prompt(
            tokenizer, len(reads[read]), question, answer, order="question-first"
        )
        prefixes += p.placeholder_start
        opened.append(p.input_ids[: p.placeholder_start])
        rank = seen[question] = seen.get(question, -1) + 1
        trees[(question, rank // max_branches)] = p.placeholder_start
    # Each row computes the header all prompts open with once; each tree the rest of
    # its question.
    header = len(_common_prefix(opened))
    rows = shared.trees.shape[0]
    assert int((shared.trees == HEADER).sum()) == header * rows
    saved = header * (len(trees) - rows)
    assert shared.n_tokens == shared.n_example_tokens - prefixes + sum(trees.values()) - saved


def test_question_shared_batch_needs_examples(tiny):
    from latentqa.errors import LatentQAError

    model, tokenizer = tiny
    with pytest.raises(LatentQAError, match="needs examples"):
        question_shared_batch(tokenizer, _reads(model, 1, 0), [], 2)
