"""Where the decoder's LoRA acts: every token, or only tokens that see a read.

With ``lora_from="reads"`` (``latentqa train --lora-from reads``), a token's LoRA
update is dropped unless the token attends to a placeholder, itself included. In the
``question-first`` prompt order, the question (and a yes/no question's candidate) is
then encoded by the frozen model, exactly as the target would read it, and the
adapter acts from the soft tokens on. The adapter cannot bend the question's encoding
toward what the training data rewards, only learn to compare the read with it.

The gate multiplies the output of every LoRA ``B`` matrix by a ``[batch, seq, 1]``
0/1 mask, which is the same as running those tokens without the adapter.
:func:`reads_seen` computes the mask from the placeholders and the attention layout, so
it also holds for packed prompts and scoring tries, whose branches each read their own
vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

import torch
from torch import nn

from latentqa.errors import LatentQAError

LORA_FROM: tuple[str, ...] = ("start", "reads")
"""``start``: the LoRA acts on every token; ``reads``: only on tokens that see a read."""


def reads_seen(placeholder_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Which tokens attend to a placeholder (themselves included).

    Args:
        placeholder_mask: ``[batch, seq]`` bool, the placeholder positions.
        attention_mask: ``[batch, seq]`` 0/1 padding mask of causal rows, or an
            additive ``[batch, 1, seq, seq]`` mask (0 where a query may attend).

    Returns:
        ``[batch, seq]`` bool.
    """
    placeholders = placeholder_mask.to(torch.bool)
    if attention_mask.dim() == 2:  # causal rows: a placeholder at or before the token
        return placeholders.cumsum(dim=1) > 0
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        raise LatentQAError(
            f"attention mask must be [batch, seq] or [batch, 1, seq, seq], got "
            f"{tuple(attention_mask.shape)}"
        )
    allowed = attention_mask[:, 0] == 0  # [batch, query, key]
    return (allowed & placeholders[:, None, :].to(allowed.device)).any(dim=-1)


def lora_b_modules(model: nn.Module) -> list[nn.Module]:
    """Every LoRA ``B`` matrix in ``model`` (peft keeps them in ``lora_B`` dicts)."""
    found = []
    for module in model.modules():
        table = getattr(module, "lora_B", None)
        if isinstance(table, nn.ModuleDict):
            found.extend(table.values())
    return found


@contextmanager
def gate_lora(model: nn.Module, active: torch.Tensor) -> Iterator[None]:
    """Context manager: LoRA updates only at the ``True`` tokens of ``active``.

    Only forward passes over ``active``'s ``[batch, seq]`` shape are gated: the one-token
    decoding steps of ``generate`` that follow the prompt (all after its placeholders)
    keep the adapter. The hooks are removed on exit, also when the body raises.

    Args:
        model: The decoder (peft-wrapped, possibly inside DDP/FSDP).
        active: ``[batch, seq]`` bool, e.g. from :func:`reads_seen`.

    Raises:
        LatentQAError: ``model`` has no LoRA adapter to gate.
    """
    modules = lora_b_modules(model)
    if not modules:
        raise LatentQAError(
            "--lora-from reads gates a LoRA adapter, but the decoder has none: load it "
            "with its adapter"
        )
    shape = tuple(active.shape)
    gates: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # [batch, seq, 1] 0/1

    def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if out.dim() != 3 or tuple(out.shape[:2]) != shape:
            return None  # a KV-cached decoding step, or a head over picked positions
        key = (out.device, out.dtype)
        if key not in gates:  # once per device and dtype, not once per LoRA layer
            gates[key] = active.to(device=out.device, dtype=out.dtype).unsqueeze(-1)
        return out * gates[key]

    with ExitStack() as stack:
        for module in modules:
            stack.callback(module.register_forward_hook(hook).remove)
        yield


def lora_scope(
    model: nn.Module,
    lora_from: str,
    placeholder_mask: torch.Tensor,
    attention_mask: torch.Tensor,
) -> AbstractContextManager[None]:
    """The context a decoder forward pass runs in: :func:`gate_lora` for ``reads``,
    nothing for ``start``.

    Raises:
        LatentQAError: An unknown ``lora_from``.
    """
    if lora_from not in LORA_FROM:
        raise LatentQAError(f"unknown lora_from {lora_from!r}; use one of {', '.join(LORA_FROM)}")
    if lora_from == "start":
        return nullcontext()
    return gate_lora(model, reads_seen(placeholder_mask, attention_mask))
