"""Generation with the tokens every prompt of a batch opens with computed once.

A batch of decoder prompts opens with the same tokens up to the first placeholder: the
chat template's header (SmolLM2 inserts a default system turn: 19 of the relations
decoder's 41 prompt tokens) and, in the ``question-first`` order, a question they share.
Those tokens' keys and values do not depend on the row, so :func:`split_header` runs
them once, copies their KV cache to every row, and lays the rows out as the header
followed by each row's rest, left-padded in between::

    row 0:  H H H H | p p P P Q Q      (H: header, p: padding, P: placeholders)
    row 1:  H H H H | P P P Q Q Q Q

Position ids follow from the attention mask (``generate`` counts the ones), so every
token keeps the position it had in the left-padded batch, and the rest of the prompt is
the only pass that is patched. Greedy answers equal those of the left-padded batch
(tested; equal up to float round-off in the header's keys and values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latentqa.decoder.lora_gate import lora_scope

MIN_HEADER = 4
"""A shorter shared opening is not worth a separate pass."""


def common_header(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, placeholder_mask: torch.Tensor
) -> int:
    """How many tokens every left-padded row opens with, before any placeholder and
    leaving each row at least one token of its own.

    Args:
        input_ids: ``[rows, width]`` left-padded ids.
        attention_mask: ``[rows, width]``, 1 on real tokens.
        placeholder_mask: ``[rows, width]`` bool.
    """
    lengths = attention_mask.sum(1)  # [rows]
    n = int(lengths.min()) - 1
    if n <= 0:
        return 0
    starts = input_ids.shape[1] - lengths  # [rows] first real token
    at = starts[:, None] + torch.arange(n, device=input_ids.device)  # [rows, n]
    opening = input_ids.gather(1, at)  # [rows, n] each row's first n tokens
    differs = (opening != opening[:1]) | placeholder_mask.gather(1, at)
    stops = differs.any(0).nonzero()
    return int(stops[0]) if len(stops) else n


@dataclass
class HeaderSplit:
    """A batch as its shared header (cached) and each row's rest."""

    input_ids: torch.Tensor
    """``[rows, header + rest]``: the header, then each row's rest, left-padded."""
    attention_mask: torch.Tensor
    """``[rows, header + rest]``, 0 on the padding between header and rest."""
    placeholder_mask: torch.Tensor
    """``[rows, rest]``: the placeholders of the first uncached pass."""
    rest_attention: torch.Tensor
    """``[rows, rest]``: the attention mask of that pass's tokens."""
    cache: object
    """The header's KV cache, one copy per row."""


@torch.no_grad()
def split_header(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    placeholder_mask: torch.Tensor,
    header: int,
    lora_from: str,
    pad_id: int,
) -> HeaderSplit:
    """Run the first ``header`` tokens (the same in every row) once; lay out the rest.

    Args:
        model: The causal LM (its LoRA layers in place), in the state to generate with.
        input_ids: ``[rows, width]`` left-padded ids.
        attention_mask: ``[rows, width]``.
        placeholder_mask: ``[rows, width]`` bool; none among the header's tokens.
        header: From :func:`common_header`.
        lora_from: The decoder's ``lora_from``: the header sees no read, so under
            ``reads`` its tokens run without the adapter, as they do in the whole batch.
        pad_id: The id written on padding.
    """
    rows, width = input_ids.shape
    lengths = attention_mask.sum(1)  # [rows]
    start = int(width - lengths.max())  # the longest row's first token
    first = int(width - lengths[0])
    ids = input_ids[:1, first : first + header]  # [1, header]
    no_reads = torch.zeros_like(ids, dtype=torch.bool)
    with lora_scope(model, lora_from, no_reads, torch.ones_like(ids)):
        cache = model(input_ids=ids, use_cache=True).past_key_values
    cache.batch_repeat_interleave(rows)
    # Each row's rest: its tokens after the header, right-aligned as before.
    rest = slice(start + header, width)
    column = torch.arange(width, device=input_ids.device)[None, rest]  # [1, rest]
    own = column >= (width - lengths + header)[:, None]  # [rows, rest] past the header
    rest_ids = input_ids[:, rest].masked_fill(~own, pad_id)
    rest_attention = (attention_mask[:, rest].bool() & own).to(attention_mask.dtype)
    return HeaderSplit(
        torch.cat([ids.expand(rows, -1), rest_ids], 1),
        torch.cat([torch.ones_like(ids).expand(rows, -1), rest_attention], 1),
        placeholder_mask[:, rest] & own,
        rest_attention,
        cache,
    )


def share_header(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    placeholder_mask: torch.Tensor,
    lora_from: str,
    pad_id: int,
    most: int | None = None,
) -> HeaderSplit:
    """:func:`split_header` where two or more rows share at least :data:`MIN_HEADER`
    tokens (at most ``most`` of them, when given); else the batch as it is (``cache``
    ``None``). Other arguments as there."""
    rows = len(input_ids)
    header = common_header(input_ids, attention_mask, placeholder_mask) if rows > 1 else 0
    if most is not None:
        header = min(header, most)
    if header < MIN_HEADER:
        return HeaderSplit(input_ids, attention_mask, placeholder_mask, attention_mask, None)
    return split_header(
        model, input_ids, attention_mask, placeholder_mask, header, lora_from, pad_id
    )
