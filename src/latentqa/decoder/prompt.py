"""The decoder's input: a chat prompt with placeholder positions for activations.

Layouts (rendered with the decoder tokenizer's own chat template), by prompt order::

    vectors-first:   <header> <user> [P P ... P] \\n QUESTION <end> <assistant> ANSWER <end>
    question-first:  <header> <user> QUESTION \\n [P P ... P] <end> <assistant> ANSWER <end>

``P`` is a placeholder token, one per activation vector; the patch hook overwrites
the hidden states there (``embed`` mode: their input embeddings). Positions are found
by rendering the template around a marker string and tokenizing the pieces, never
from per-model offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from latentqa.chat import render
from latentqa.errors import LatentQAError

# Stands in for the placeholders while the template renders; chosen so that no
# template trims or escapes it and no real text contains it.
_MARKER = "\u2063LATENTQA-ACTIVATIONS\u2063"
# Tried in order; the first that is one token in the tokenizer is the placeholder.
_PLACEHOLDER_CANDIDATES = ("?", "_", ".", "x")
PROMPT_ORDERS: tuple[str, ...] = ("vectors-first", "question-first")
"""``vectors-first``: the placeholders open the user turn, the question follows (every
prompt about one read shares the prefix up to its last placeholder); ``question-first``:
the question opens it and the placeholders end it, right before the answer."""


def placeholder_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """A single-token placeholder id for ``tokenizer`` (its embedding is overwritten)."""
    for text in _PLACEHOLDER_CANDIDATES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
    raise LatentQAError("found no single-token placeholder in the tokenizer; pass one explicitly")


@dataclass(frozen=True)
class DecoderPrompt:
    """Token ids of one decoder input, with where the activations and the answer go."""

    input_ids: list[int]
    """Token ids, unpadded."""
    placeholder_start: int
    """First placeholder position."""
    placeholder_end: int
    """One past the last placeholder position."""
    label_mask: list[bool]
    """True on answer tokens (the only ones trained on); all False without an answer."""


@lru_cache(maxsize=4096)
def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_decoder_prompt(
    tokenizer: PreTrainedTokenizerBase,
    n_placeholders: int,
    question: str,
    answer: str | None = None,
    *,
    placeholder_id: int | None = None,
    order: str = "vectors-first",
) -> DecoderPrompt:
    """Build the decoder's ids: ``n_placeholders`` slots and the question (in ``order``),
    then the answer.

    Args:
        tokenizer: The decoder's tokenizer (with a chat template).
        n_placeholders: Number of activation vectors to patch in.
        question: The question about the activations.
        answer: The answer (training / scoring); ``None`` ends with the generation prompt.
        placeholder_id: Override for the placeholder token.
        order: One of :data:`PROMPT_ORDERS`.

    Returns:
        The ids, the placeholder span, and the label mask over answer tokens. The
        answer's tokens include the template's end-of-turn token, so a trained
        decoder learns to stop.
    """
    if n_placeholders < 1:
        raise LatentQAError("the decoder needs at least one activation to read")
    if not question.strip():
        raise LatentQAError("the question is empty")
    if order not in PROMPT_ORDERS:
        choices = ", ".join(PROMPT_ORDERS)
        raise LatentQAError(f"unknown prompt order {order!r}; use one of {choices}")
    content = f"{_MARKER}\n{question}" if order == "vectors-first" else f"{question}\n{_MARKER}"
    messages = [{"role": "user", "content": content}]
    prompt_text = render(tokenizer, messages, add_generation_prompt=True)
    if prompt_text.count(_MARKER) != 1:
        raise LatentQAError("the chat template altered the activation marker; cannot lay out")
    before, after = prompt_text.split(_MARKER)
    slot = placeholder_token_id(tokenizer) if placeholder_id is None else placeholder_id
    head = list(_encode(tokenizer, before))
    ids = head + [slot] * n_placeholders + list(_encode(tokenizer, after))
    labels = [False] * len(ids)
    if answer is not None:
        full = render(tokenizer, [*messages, {"role": "assistant", "content": answer}], False)
        if not full.startswith(prompt_text):
            raise LatentQAError(
                "the chat template renders the answer turn inconsistently with its "
                "generation prompt; cannot find the answer tokens"
            )
        answer_ids = list(_encode(tokenizer, full[len(prompt_text) :]))
        ids += answer_ids
        labels += [True] * len(answer_ids)
    start = len(head)
    return DecoderPrompt(ids, start, start + n_placeholders, labels)


@dataclass
class DecoderBatch:
    """Left-padded decoder inputs for a batch of :class:`DecoderPrompt`."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    placeholder_mask: torch.Tensor  # [batch, seq] bool
    label_mask: torch.Tensor  # [batch, seq] bool, answer tokens

    def to(self, device: torch.device | str) -> DecoderBatch:
        return DecoderBatch(*(t.to(device) for t in vars(self).values()))


def collate_prompts(prompts: Sequence[DecoderPrompt], pad_id: int) -> DecoderBatch:
    """Left-pad prompts into a :class:`DecoderBatch` (placeholders in row-major order)."""
    width = max(len(p.input_ids) for p in prompts)
    batch = len(prompts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    placeholders = torch.zeros((batch, width), dtype=torch.bool)
    labels = torch.zeros((batch, width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        offset = width - len(prompt.input_ids)
        input_ids[row, offset:] = torch.tensor(prompt.input_ids)
        attention[row, offset:] = 1
        placeholders[row, offset + prompt.placeholder_start : offset + prompt.placeholder_end] = 1
        labels[row, offset:] = torch.tensor(prompt.label_mask)
    return DecoderBatch(input_ids, attention, placeholders, labels)
