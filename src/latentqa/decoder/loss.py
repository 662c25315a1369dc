"""The decoder's answer loss: cross-entropy of the answer tokens only, with the LM head
run only where an answer token is predicted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from latentqa.capture import position_ids_for
from latentqa.decoder.frozen_prefix import live_body
from latentqa.decoder.lora_gate import lora_scope
from latentqa.decoder.prompt import DecoderBatch
from latentqa.layers import DecoderLayers
from latentqa.models import unwrap_causal_lm
from latentqa.patch import PatchMode, patch_activations


def lm_head_logits(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's LM head on ``hidden`` ``[..., d_model]`` -> logits ``[..., vocab]``.

    Applies the final soft-capping of models that have one (Gemma), as their own
    forward does, so losses computed from a body's hidden states match ``model(...)``.
    The logits keep the head's dtype.
    """
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft capping, part of the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits


@dataclass
class RowLayout:
    """How the decoder's body reads a batch's rows, and whose answer each token is."""

    attention_mask: torch.Tensor  # [rows, seq] 0/1, or additive [rows, 1, seq, seq]
    position_ids: torch.Tensor  # [rows, seq]
    owners: torch.Tensor  # [n_answer_tokens] long: each answer token's prompt, row-major
    n_owners: int
    """Prompts in the batch."""


class PackedBatch(Protocol):
    """A batch whose rows pack several prompts and that lays them out itself (such as
    :class:`latentqa.decoder.packing.SharedBatch`)."""

    input_ids: torch.Tensor  # [rows, seq]
    placeholder_mask: torch.Tensor  # [rows, seq] bool
    label_mask: torch.Tensor  # [rows, seq] bool, answer tokens

    def layout(self, dtype: torch.dtype) -> RowLayout:
        """The rows' layout, an additive attention mask in ``dtype``."""
        ...


def answer_token_loss(
    decoder: nn.Module,
    batch: DecoderBatch | PackedBatch,
    vectors: torch.Tensor,
    *,
    write_layer: int,
    mode: PatchMode,
    reduction: str = "mean",
    blocks: DecoderLayers | None = None,
    lora_from: str = "start",
    frozen_once: bool | None = None,
) -> torch.Tensor:
    """Cross-entropy of the answer tokens with ``vectors`` patched in.

    Runs the decoder's transformer body, then the LM head only at the positions
    that predict answer tokens: the answer is a few tokens of a ~100-token input,
    so full-sequence logits would waste most of the head's compute and memory.

    Args:
        decoder: Decoder model (peft-wrapped CausalLM).
        batch: Decoder inputs with a label mask: one prompt per row, or packed rows
            whose shared prefixes are computed once.
        vectors: ``[n_placeholders_total, d_model]`` activations.
        write_layer: Block at whose output to patch.
        mode: ``replace`` or ``add``.
        reduction: ``mean`` (per answer token), ``sum``, or ``none`` (per prompt sums
            and token counts as a ``[n_prompts, 2]`` tensor).
        blocks: The model's decoder blocks, found once by the caller (searched when
            ``None``).
        lora_from: Where the LoRA acts: ``start`` (every token) or ``reads`` (tokens
            that see a placeholder; :mod:`latentqa.decoder.lora_gate`).
        frozen_once: With ``lora_from="reads"``, run the tokens that see no placeholder
            once without autograd, then the others alone
            (:mod:`latentqa.decoder.frozen_prefix`); the same loss and gradients.
            ``None``: whenever gradients are on.
    """
    causal_lm = unwrap_causal_lm(decoder)
    if isinstance(batch, DecoderBatch):  # one prompt per row
        layout = RowLayout(
            batch.attention_mask,
            position_ids_for(batch.attention_mask),
            batch.label_mask.nonzero()[:, 0],  # [n_answer_tokens], each token's row
            batch.input_ids.shape[0],
        )
    else:
        layout = batch.layout(causal_lm.get_input_embeddings().weight.dtype)
    if frozen_once is None:
        frozen_once = torch.is_grad_enabled()
    if lora_from == "reads" and frozen_once and bool(batch.placeholder_mask.any()):
        hidden, index, valid = live_body(
            causal_lm,
            batch.input_ids,
            layout.attention_mask,
            layout.position_ids,
            batch.placeholder_mask,
            vectors,
            write_layer=write_layer,
            mode=mode,
            blocks=blocks,
        )  # [rows, width, d_model]: the live tokens only
        ids = batch.input_ids.gather(1, index)
        labels = batch.label_mask.gather(1, index) & valid  # every answer token is live
        return answer_losses(
            causal_lm, hidden, ids, labels, layout.owners, layout.n_owners, reduction
        )
    with (
        patch_activations(
            causal_lm, write_layer, batch.placeholder_mask, vectors, mode, blocks=blocks
        ),
        lora_scope(causal_lm, lora_from, batch.placeholder_mask, layout.attention_mask),
    ):
        hidden = causal_lm.base_model(
            input_ids=batch.input_ids,
            attention_mask=layout.attention_mask,
            position_ids=layout.position_ids,
            use_cache=False,
        ).last_hidden_state  # [rows, seq, d_model]
    return answer_losses(
        causal_lm,
        hidden,
        batch.input_ids,
        batch.label_mask,
        layout.owners,
        layout.n_owners,
        reduction,
    )


def answer_losses(
    causal_lm: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    label_mask: torch.Tensor,
    owners: torch.Tensor,
    n_owners: int,
    reduction: str,
) -> torch.Tensor:
    """Cross-entropy of the answer tokens from the body's last hidden states.

    The LM head runs only at the positions that predict an answer token (one step
    before it; an answer never starts a row or a packed branch, so the shift stays
    inside its prompt).

    Args:
        causal_lm: The unwrapped CausalLM (for its head).
        hidden: ``[rows, seq, d_model]`` last hidden states.
        input_ids: ``[rows, seq]`` the ids, answers included.
        label_mask: ``[rows, seq]`` True on answer tokens.
        owners: ``[n_answer_tokens]`` the prompt each answer token belongs to, in
            row-major order.
        n_owners: Number of prompts.
        reduction: ``mean``, ``sum`` or ``none`` (per prompt sums and token counts,
            ``[n_owners, 2]``).
    """
    predicts = torch.zeros_like(label_mask)
    predicts[:, :-1] = label_mask[:, 1:]
    logits = lm_head_logits(causal_lm, hidden[predicts]).float()  # [n_answer, vocab]
    targets = input_ids[label_mask]  # [n_answer], same row-major order
    if reduction != "none":
        return F.cross_entropy(logits, targets, reduction=reduction)
    token_losses = F.cross_entropy(logits, targets, reduction="none")
    sums = torch.zeros(n_owners, device=logits.device).index_add_(0, owners, token_losses)
    counts = torch.zeros_like(sums).index_add_(0, owners, torch.ones_like(token_losses))
    return torch.stack([sums, counts], dim=-1)
