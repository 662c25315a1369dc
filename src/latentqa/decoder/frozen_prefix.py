"""Training with ``--lora-from reads``: the tokens that see no read, once and without autograd.

With the LoRA gated to the tokens that attend to a placeholder
(:mod:`latentqa.decoder.lora_gate`), every other token (the chat header, and the
question and candidate that a ``question-first`` prompt puts before the placeholders)
is a function of frozen weights alone. No trainable parameter reaches it, yet one
ordinary pass stores its activations and runs its backward pass. :func:`live_body` runs
the body twice instead:

1. every token, under ``torch.no_grad`` with the adapter off, keeping each layer's keys
   and values (the KV cache);
2. only the live tokens (those that see a read), with gradients, each attending to the
   cached keys and values of the frozen tokens it may see and to the live ones.

The live tokens of a question-first yes/no prompt are its few placeholders and its
answer, so the second pass is short and the first costs a forward pass without
backward. The answer losses and gradients are those of one pass
(``tests/test_frozen_prefix.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from latentqa.decoder.lora_gate import gate_lora, reads_seen
from latentqa.layers import DecoderLayers
from latentqa.models import cache_keyword
from latentqa.patch import PatchMode, patch_activations


def allowed_keys(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """Which keys each query may attend to: ``[rows, seq (query), seq (key)]`` bool.

    Args:
        attention_mask: ``[rows, seq]`` 0/1 padding mask of causal rows, or an additive
            ``[rows, 1, seq, seq]`` mask (0 where a query may attend).
        seq: Sequence length.
    """
    if attention_mask.dim() == 2:
        causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()
        return causal[None] & attention_mask.to(torch.bool)[:, None, :]
    return attention_mask[:, 0] == 0


def _cache_of(output) -> object:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def live_body(
    causal_lm: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    placeholder_mask: torch.Tensor,
    vectors: torch.Tensor,
    *,
    write_layer: int,
    mode: PatchMode,
    blocks: DecoderLayers | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The last hidden states of the live tokens, with the frozen ones run once without
    autograd (the module docstring).

    Args:
        causal_lm: The unwrapped CausalLM with its (peft) LoRA layers.
        input_ids: ``[rows, seq]``.
        attention_mask: ``[rows, seq]`` 0/1 or additive ``[rows, 1, seq, seq]``.
        position_ids: ``[rows, seq]``.
        placeholder_mask: ``[rows, seq]`` bool; at least one placeholder in the batch.
        vectors: ``[n_placeholders, d_model]`` patched at the placeholders.
        write_layer: Block at whose output to patch.
        mode: ``replace``, ``add`` or ``embed``.
        blocks: The model's decoder blocks, found once by the caller.

    Returns:
        ``hidden`` ``[rows, width, d_model]``, ``index`` ``[rows, width]`` (each live
        token's position, in order) and ``valid`` ``[rows, width]`` (False on a row's
        padding, which repeats frozen positions).
    """
    rows, seq = input_ids.shape
    live = reads_seen(placeholder_mask, attention_mask)  # [rows, seq]
    n_live = live.sum(dim=1)  # [rows]
    width = int(n_live.max())
    # Live positions first, each row's in increasing order (a stable sort of 0/1 keys).
    index = torch.argsort((~live).to(torch.int8), dim=1, stable=True)[:, :width]  # [rows, width]
    positions = torch.arange(width, device=input_ids.device)
    valid = positions[None, :] < n_live[:, None]  # [rows, width]
    body = causal_lm.base_model
    keyword = cache_keyword(body)
    with torch.no_grad(), gate_lora(causal_lm, torch.zeros_like(live)):
        frozen = body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
        )
    # Keys the live queries may see: the frozen ones from the cache (its first seq
    # entries), then the live ones computed now (appended to the cache).
    allowed = allowed_keys(attention_mask, seq)  # [rows, seq, seq]
    asked = allowed.gather(1, index[:, :, None].expand(rows, width, seq))  # [rows, width, seq]
    to_frozen = asked & ~live[:, None, :]
    to_live = asked.gather(2, index[:, None, :].expand(rows, width, width))  # [rows, w, w]
    to_live &= valid[:, None, :]
    # A padding query sees itself too, so that no softmax row is empty.
    to_live |= (
        torch.eye(width, dtype=torch.bool, device=input_ids.device)[None] & ~valid[:, :, None]
    )
    dtype = causal_lm.get_input_embeddings().weight.dtype
    seen = torch.cat([to_frozen, to_live], dim=2)[:, None]  # [rows, 1, width, seq + width]
    additive = torch.zeros(seen.shape, dtype=dtype, device=input_ids.device)
    additive.masked_fill_(~seen, torch.finfo(dtype).min)
    placeholders = placeholder_mask.to(torch.bool).gather(1, index) & valid  # [rows, width]
    with patch_activations(causal_lm, write_layer, placeholders, vectors, mode, blocks=blocks):
        hidden = body(
            input_ids=input_ids.gather(1, index),
            attention_mask=additive,
            position_ids=position_ids.gather(1, index),
            use_cache=True,
            **{keyword: _cache_of(frozen)},
        ).last_hidden_state  # [rows, width, d_model]
    return hidden, index, valid
