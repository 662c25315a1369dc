"""Read the residual stream: decoder-layer outputs of a target model.

"Layer k" is the output of decoder block k (0-based), i.e. ``hidden_states[k + 1]``
of a transformers forward with ``output_hidden_states=True``. The forward pass is
cut short after the deepest requested block, so later blocks and the LM head
never run: for a read at half depth this halves the target's cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.chat import EncodedDialog, Message, encode_dialog
from latentqa.layers import DecoderLayers, block_output_hook, check_layer_index, find_decoder_layers


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest read layer has run."""


@contextmanager
def capture_layers(
    model: nn.Module,
    layers: Sequence[int],
    *,
    stop_after_last: bool = True,
    blocks: DecoderLayers | None = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Context manager recording the outputs of the given decoder blocks.

    Yields a dict filled during the forward passes run inside the context:
    ``{layer: hidden [batch, seq, d_model]}``. With ``stop_after_last`` the deepest
    block's hook raises an internal exception that :func:`run_until` swallows, so
    the rest of the model never runs. Hooks are removed on exit, also on error.
    """
    blocks = find_decoder_layers(model) if blocks is None else blocks
    normalised = [check_layer_index(layer, len(blocks), "read layer") for layer in layers]
    deepest = max(normalised, default=None)
    captured: dict[int, torch.Tensor] = {}

    def record(index: int, hidden: torch.Tensor) -> None:
        captured[index] = hidden
        if stop_after_last and index == deepest:
            raise _StopForward

    with block_output_hook(blocks, layers, record, what="read layer"):
        yield captured


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that make a left-padded row see the same positions as unpadded."""
    # [batch, seq]: 0, 1, 2, ... counted from each row's first real token.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def run_until(model: nn.Module, **inputs: torch.Tensor) -> None:
    """Run ``model(**inputs)``, treating an early stop from :func:`capture_layers` as done."""
    with suppress(_StopForward):
        model(**inputs, use_cache=False)


def read_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    *,
    blocks: DecoderLayers | None = None,
) -> dict[int, torch.Tensor]:
    """Hidden states at ``layers`` for a padded batch, running only as deep as needed.

    Args:
        model: The target causal LM.
        input_ids: ``[batch, seq]`` token ids, left-padded.
        attention_mask: ``[batch, seq]``, 1 on real tokens.
        layers: Decoder block indices to read (negative counts from the end).
        blocks: The model's decoder blocks, found once by the caller (searched when
            ``None``).

    Returns:
        ``{layer: [batch, seq, d_model]}`` keyed by the layers as given.
    """
    blocks = find_decoder_layers(model) if blocks is None else blocks
    n_layers = len(blocks)
    with capture_layers(model, layers, blocks=blocks) as captured:
        run_until(
            model,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
        )
    return {layer: captured[layer % n_layers] for layer in layers}


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` ``[batch, seq]``."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad id, falling back to eos (padding is masked, so its value is irrelevant)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def read_encoded(
    model: nn.Module,
    encoded: Sequence[EncodedDialog],
    pad_id: int,
    layers: Sequence[int],
    *,
    blocks: DecoderLayers | None = None,
) -> list[torch.Tensor]:
    """Read spans of already encoded dialogs: one ``[n_layers, span, d_model]`` per dialog."""
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad([e.input_ids for e in encoded], pad_id, device)
    hidden = read_hidden_states(model, input_ids, attention_mask, layers, blocks=blocks)
    # [n_layers, batch, seq, d_model]
    stacked = torch.stack([hidden[layer] for layer in layers])
    width = input_ids.shape[1]
    spans = []
    for row, item in enumerate(encoded):
        start = width - len(item.input_ids) + item.read_start
        spans.append(stacked[:, row, start:])
    return spans


@torch.no_grad()
def read_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: Sequence[Sequence[Message]],
    layers: Sequence[int],
    *,
    n_masked: int | Sequence[int] = 0,
    blocks: DecoderLayers | None = None,
) -> list[torch.Tensor]:
    """Run the target on a batch of dialogs and return the read span of each.

    Args:
        model: The target causal LM.
        tokenizer: Its tokenizer (with a chat template).
        dialogs: Lists of ``{"role", "content"}`` messages, rendered with the chat
            template and left-padded together.
        layers: Decoder block indices to read.
        n_masked: Leading messages per dialog (or one count for all) whose tokens are
            excluded from the span: the system prompt or control turn.
        blocks: The model's decoder blocks, found once by the caller (searched when
            ``None``).

    Returns:
        Per dialog, a tensor ``[len(layers), span_length, d_model]`` in the order of
        ``layers``.
    """
    counts = [n_masked] * len(dialogs) if isinstance(n_masked, int) else list(n_masked)
    encoded = [encode_dialog(tokenizer, d, n) for d, n in zip(dialogs, counts, strict=True)]
    return read_encoded(model, encoded, pad_token_id(tokenizer), layers, blocks=blocks)
