"""Write vectors into a model's hidden states at chosen positions (activation patching).

The decoder of LatentQA sees the target's activations this way: its input holds
placeholder tokens, and at the output of decoder block ``w`` the hidden states at
those positions are overwritten (``replace``) or shifted (``add``, norm-matched as
in Activation Oracles) by the target's vectors. ``embed`` writes them one step
earlier, as the placeholders' input embeddings (soft input tokens, as a projector in
front of the decoder produces them); the write layer plays no part there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal

import torch
from torch import nn

from latentqa.errors import LatentQAError
from latentqa.layers import DecoderLayers, block_output_hook, find_decoder_layers
from latentqa.models import unwrap_causal_lm

PatchMode = Literal["replace", "add", "embed"]
PATCH_MODES: tuple[str, ...] = ("replace", "add", "embed")
"""``replace`` / ``add``: at the output of the write layer's block; ``embed``: the input
embeddings at the placeholders are replaced (the write layer is not used)."""


def patched_hidden(
    hidden: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor, mode: PatchMode
) -> torch.Tensor:
    """Return ``hidden`` with ``vectors`` written at the ``True`` positions of ``mask``.

    Args:
        hidden: ``[batch, seq, d_model]`` block output.
        mask: ``[batch, seq]`` bool, the positions to patch.
        vectors: ``[n_true, d_model]``, one per ``True`` of ``mask`` in row-major order.
        mode: ``replace`` (and ``embed``, applied to input embeddings) overwrites;
            ``add`` adds the vector rescaled to the norm of the hidden state it is added to.

    Differentiable with respect to ``vectors`` (steering trains through it).
    """
    select = mask.unsqueeze(-1)  # [batch, seq, 1]
    # [batch, seq, d_model], zeros except the patched positions
    dense = hidden.new_zeros(hidden.shape).masked_scatter(
        select.expand_as(hidden), vectors.to(hidden.dtype)
    )
    if mode != "add":
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
    """Context manager patching ``vectors`` into the output of decoder block ``layer``
    (``replace``, ``add``), or into the input embeddings (``embed``: a hook on the
    model's input-embedding module; ``layer`` is not used).

    Only forward passes whose sequence length equals ``mask.shape[1]`` are patched:
    during ``generate`` that is the prompt pass, while the one-token decoding steps
    that follow (served from the KV cache) are left alone. The hook is removed on
    exit, also when the body raises.

    Args:
        model: The model to patch (the decoder), possibly peft/DDP-wrapped.
        layer: Decoder block whose output is patched.
        mask: ``[batch, seq]`` bool positions.
        vectors: ``[mask.sum(), d_model]`` values, in row-major order of ``mask``.
        mode: ``replace``, ``add`` or ``embed``.
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

    with ExitStack() as stack:
        if mode == "embed":
            embeddings = _input_embeddings(model)
            # [batch, seq] ids -> [batch, seq, d_model]; a forward hook's return replaces it
            handle = embeddings.register_forward_hook(lambda _m, _a, out: patch(-1, out))
            stack.callback(handle.remove)
        else:
            blocks = find_decoder_layers(model) if blocks is None else blocks
            stack.enter_context(block_output_hook(blocks, layer, patch, what="write layer"))
        yield


def _input_embeddings(model: nn.Module) -> nn.Module:
    """The module that turns ``model``'s input ids into embeddings (inside any peft, DDP
    or FSDP wrapper)."""
    inner = unwrap_causal_lm(model)
    get = getattr(inner, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if not isinstance(embeddings, nn.Module):
        raise LatentQAError(
            f"{type(inner).__name__} has no input embeddings to patch: use --mode replace or add"
        )
    return embeddings
