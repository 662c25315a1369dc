"""Generation computes the opening every prompt of a batch shares once (its KV cache
copied to each row); answers equal those of each prompt generated alone."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import make_lora_decoder, n_forward_hooks, random_reads

from latentqa.answering import generate_ids
from latentqa.decoder import header_cache
from latentqa.decoder.header_cache import common_header, split_header
from latentqa.generation import generate_rows
from latentqa.models import unwrap_causal_lm
from latentqa.patch import PATCH_MODES

QUESTIONS = [
    "What persona is the assistant adopting?",
    "Is the assistant sarcastic?",
    "Describe the tone of the assistant.",
]


def test_common_header_stops_at_a_difference_a_placeholder_or_the_shortest_row():
    ids = torch.tensor([[0, 0, 5, 6, 7, 9, 3], [5, 6, 7, 8, 9, 4, 2], [0, 5, 6, 7, 8, 1, 1]])
    attention = (torch.arange(7) >= torch.tensor([[2], [0], [1]])).long()
    none = torch.zeros_like(ids, dtype=torch.bool)
    assert common_header(ids, attention, none) == 3  # 5 6 7, then 9 / 8 / 8
    placeholders = none.clone()
    placeholders[1, 1] = True  # row 1's second token is a placeholder
    assert common_header(ids, attention, placeholders) == 1
    same = torch.tensor([[4, 4, 4], [4, 4, 4]])
    assert common_header(same, torch.ones_like(same), torch.zeros_like(same).bool()) == 2


def test_split_layout_keeps_each_rows_tokens_after_the_header(monkeypatch):
    decoder = make_lora_decoder("llama", "replace", lora_seed=1)
    ids = torch.tensor([[0, 0, 5, 6, 7, 9, 3], [5, 6, 7, 8, 9, 4, 2]])
    attention = (torch.arange(7) >= torch.tensor([[2], [0]])).long()
    placeholders = torch.zeros_like(ids, dtype=torch.bool)
    placeholders[:, -2] = True
    model = unwrap_causal_lm(decoder.model)
    split = split_header(model, ids, attention, placeholders, 3, "start", pad_id=0)
    assert split.input_ids.tolist() == [[5, 6, 7, 0, 0, 9, 3], [5, 6, 7, 8, 9, 4, 2]]
    assert split.attention_mask.tolist() == [[1, 1, 1, 0, 0, 1, 1], [1] * 7]
    assert split.placeholder_mask.tolist() == [[False, False, True, False]] * 2
    assert split.cache.get_seq_length() == 3
    # Every token keeps its position: the ones before it, as in the left-padded batch.
    assert ((split.attention_mask.cumsum(1) - 1) * split.attention_mask)[:, -2:].tolist() == [
        [3, 4],
        [5, 6],
    ]


@settings(max_examples=12, deadline=None)
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    mode=st.sampled_from(PATCH_MODES),
    lora_from=st.sampled_from(["start", "reads"]),
    order=st.sampled_from(["vectors-first", "question-first"]),
    n_rows=st.integers(2, 4),
    seed=st.integers(0, 1000),
)
def test_answers_with_the_shared_header_equal_each_prompt_alone(
    arch, mode, lora_from, order, n_rows, seed
):
    decoder = make_lora_decoder(arch, mode, lora_seed=seed, prompt_order=order, lora_from=lora_from)
    decoder.model.double()
    reads = [r.double() for r in random_reads(decoder.hidden_size, n_rows, seed)]
    questions = [QUESTIONS[(seed + i) % len(QUESTIONS)] for i in range(n_rows)]
    splits: list[int] = []
    real_split = header_cache.split_header

    def spy(*args, **kwargs):
        splits.append(args[4])
        return real_split(*args, **kwargs)

    hooks = n_forward_hooks(decoder.model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(header_cache, "split_header", spy)
        batched = generate_ids(decoder, reads, questions, max_new_tokens=4)
        alone = [
            generate_ids(decoder, [r], [q], max_new_tokens=4)[0]
            for r, q in zip(reads, questions, strict=True)
        ]
    assert batched == alone
    assert len(splits) == 1 and splits[0] >= 4  # the batch shared its chat header
    assert n_forward_hooks(decoder.model) == hooks


@settings(max_examples=8, deadline=None)
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    opening=st.integers(0, 8),
    tails=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    seed=st.integers(0, 1000),
)
def test_generated_rows_with_a_shared_opening_equal_each_row_alone(arch, opening, tails, seed):
    from tiny import make_pair

    model, tokenizer = make_pair(arch)
    model.double()
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    head = torch.randint(3, vocab, (opening,), generator=generator).tolist()
    rows = [head + torch.randint(3, vocab, (n,), generator=generator).tolist() for n in tails]
    pad = tokenizer.pad_token_id or 0
    batched = generate_rows(model, rows, max_new_tokens=3, pad_id=pad)
    alone = [generate_rows(model, [row], max_new_tokens=3, pad_id=pad)[0] for row in rows]
    assert batched == alone


@settings(max_examples=10, deadline=None)
@given(
    arch=st.sampled_from(["llama", "qwen2"]),
    opening=st.integers(0, 9),
    heads=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    tails=st.lists(st.integers(0, 5), min_size=4, max_size=4),
    shared_tail=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_scores_with_a_shared_opening_equal_each_row_alone(
    arch, opening, heads, tails, shared_tail, seed
):
    """Rows that open alike (a chat header, one prompt) run that opening once; each
    tail's log-probability is the one it gets alone, even where the tails open alike too
    (the head's last token, which predicts the tail, stays in the rows' own pass)."""
    from tiny import make_pair

    from latentqa.generation import continuation_logprobs

    model, tokenizer = make_pair(arch)
    model.double()
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)

    def draw(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=generator).tolist()

    opening_ids = draw(opening)
    head_ids = [opening_ids + draw(n) for n in heads]
    common = draw(2) if shared_tail else []  # every tail opens with the same tokens
    tail_ids = [common + draw(n) if n else [] for n in tails[: len(heads)]]
    calls = count_base_model_rows(model)
    batched = continuation_logprobs(model, tokenizer, head_ids, tail_ids, batch_size=8)
    computed = calls[0]
    alone = [
        continuation_logprobs(model, tokenizer, [h], [t], batch_size=1)[0]
        for h, t in zip(head_ids, tail_ids, strict=True)
    ]
    assert [n for _, n in batched] == [n for _, n in alone]
    assert [s for s, _ in batched] == pytest.approx([s for s, _ in alone], abs=1e-9)
    if opening >= header_cache.MIN_HEADER + 1:  # the opening ran once, not once per row
        assert computed < len(heads) * (opening + max(heads) + max(map(len, tail_ids)))


def count_base_model_rows(model) -> list[int]:
    """A running count of the token slots the model's body computes (rows x width)."""
    seen = [0]

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen[0] += ids.numel()

    model.model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen
