"""Write vectors into a model's hidden states at chosen positions (activation patching).

The decoder of LatentQA sees the target's activations this way: its input holds
placeholder tokens, and at the output of decoder block ``w`` the hidden states at
those positions are overwritten (``replace``) or shifted (``add``, norm-matched as
in Activation Oracles) by the target's vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from latentqa.errors import LatentQAError
from latentqa.layers import DecoderLayers, block_output_hook, find_decoder_layers

PatchMode = Literal["replace", "add"]
PATCH_MODES: tuple[str, ...] = ("replace", "add")


def patched_hidden(
    hidden: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor, mode: PatchMode
) -> torch.Tensor:
    """Return ``hidden`` with ``vectors`` written at the ``True`` positions of ``mask``.

    Args:
        hidden: ``[batch, seq, d_model]`` block output.
        mask: ``[batch, seq]`` bool, the positions to patch.
        vectors: ``[n_true, d_model]``, one per ``True`` of ``mask`` in row-major order.
        mode: ``replace`` overwrites; ``add`` adds the vector rescaled to the norm of
            the hidden state it is added to.

    Differentiable with respect to ``vectors`` (steering trains through it).
    """
    select = mask.unsqueeze(-1)  # [batch, seq, 1]
    # [batch, seq, d_model], zeros except the patched positions
    dense = hidden.new_zeros(hidden.shape).masked_scatter(
        select.expand_as(hidden), vectors.to(hidden.dtype)
    )
    if mode == "replace":
        return torch.where(select, dense, hidden)
    unit = dense / dense.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return hidden + select * unit * hidden.norm(dim=-1, keepdim=True)


@contextmanager
def patch_activations(
    model: nn.Module,
    layer: int,
    mask: torch.Tensor,
    vectors: torch.Tensor,
    mode: PatchMode = "replace",
    *,
    blocks: DecoderLayers | None = None,
) -> Iterator[None]:
    """Context manager patching ``vectors`` into the output of decoder block ``layer``.

    Only forward passes whose sequence length equals ``mask.shape[1]`` are patched:
    during ``generate`` that is the prompt pass, while the one-token decoding steps
    that follow (served from the KV cache) are left alone. The hook is removed on
    exit, also when the body raises.

    Args:
        model: The model to patch (the decoder), possibly peft/DDP-wrapped.
        layer: Decoder block whose output is patched.
        mask: ``[batch, seq]`` bool positions.
        vectors: ``[mask.sum(), d_model]`` values, in row-major order of ``mask``.
        mode: ``replace`` or ``add``.
        blocks: The model's decoder blocks, found once by the caller (searched when
            ``None``).
    """
    if mode not in PATCH_MODES:
        raise LatentQAError(f"unknown injection mode {mode!r}; use one of {', '.join(PATCH_MODES)}")
    if mask.dim() != 2:
        raise LatentQAError(f"patch mask must be [batch, seq], got shape {tuple(mask.shape)}")
    n_positions = int(mask.sum())
    if vectors.dim() != 2 or vectors.shape[0] != n_positions:
        raise LatentQAError(
            f"expected {n_positions} vectors [n, d_model] for the patched positions, "
            f"got shape {tuple(vectors.shape)}"
        )
    blocks = find_decoder_layers(model) if blocks is None else blocks
    mask = mask.to(torch.bool)

    def patch(_index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        if hidden.shape[:2] != mask.shape:
            return None  # a KV-cached decoding step: nothing to patch
        if vectors.shape[-1] != hidden.shape[-1]:
            raise LatentQAError(
                f"activation size {vectors.shape[-1]} does not match the model's hidden "
                f"size {hidden.shape[-1]}: decoder and target do not match"
            )
        return patched_hidden(hidden, mask.to(hidden.device), vectors.to(hidden.device), mode)

    with block_output_hook(blocks, layer, patch, what="write layer"):
        yield
