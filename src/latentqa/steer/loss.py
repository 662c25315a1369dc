"""Steering's objective: the frozen decoder's answer loss on the control, read off the
steered target.

The target is read with only the ``"steer"`` adapter active, with gradients; the
decoder takes the read vectors with only ``"decoder"`` active, so the gradient of its
cross-entropy on the control's answers flows through the patched vectors into the
steering adapter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentqa.capture import pad_token_id, read_encoded
from latentqa.chat import EncodedDialog
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import SharedBatch, question_shared_batch, shared_decoder_batch
from latentqa.steer.model import DECODER_ADAPTER, STEER_ADAPTER, SteerableModel
from latentqa.steer.qa_pairs import QAPair


def steering_loss(
    steerable: SteerableModel,
    encoded: Sequence[EncodedDialog],
    pairs: Sequence[QAPair],
    read_layers: Sequence[int],
    *,
    per_layer_loss: bool = False,
    shared: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """The decoder's answer loss on the control, reading the steered target on ``encoded``.

    Args:
        steerable: The target with both adapters (the steering one is read through).
        encoded: What the target reads, with their read spans (see
            :mod:`latentqa.steer.encoding`).
        pairs: The control's ``(question, answer)`` pairs, asked about every item.
        read_layers: The target layers read (checked, normalised).
        per_layer_loss: One loss per read layer (each read alone) instead of one loss
            of all read layers together.
        shared: Compute each read (or question) once for all the pairs that share it
            (:func:`shared_pairs_batch`); ``False`` gives every (read, pair) its own row,
            the same loss and gradients at more cost (for checks and benchmarks).

    Returns:
        The loss to minimise (the mean over layer groups) and each group's value: one
        group of all read layers, or one group per layer with ``per_layer_loss``.
    """
    steerable.use(STEER_ADAPTER)
    spans = read_encoded(
        steerable.model,
        encoded,
        pad_token_id(steerable.tokenizer),
        read_layers,
        blocks=steerable.blocks,
    )
    # spans: per prompt [n_read_layers, span, d_model], differentiable w.r.t. the steer LoRA
    steerable.use(DECODER_ADAPTER)
    groups = (
        [[i] for i in range(len(read_layers))]
        if per_layer_loss
        else [list(range(len(read_layers)))]
    )
    spec = steerable.spec
    losses = []
    for group in groups:
        # per prompt [len(group) * kept, d_model], once per control pair; a projector
        # (frozen) maps each layer with its own map, and the gradient passes through it
        layers = [read_layers[i] for i in group]
        vectors = [steerable.decoder.inputs(span[group], layers) for span in spans]
        if shared:
            batch, flat = shared_pairs_batch(steerable.tokenizer, vectors, pairs, spec.prompt_order)
        else:
            batch, flat = decoder_batch(
                steerable.tokenizer,
                [v for v in vectors for _ in pairs],
                [q for _ in vectors for q, _ in pairs],
                [a for _ in vectors for _, a in pairs],
                order=spec.prompt_order,
            )
        loss = answer_token_loss(
            steerable.model,
            batch.to(steerable.device),
            flat,
            write_layer=spec.write_layer,
            mode=spec.mode,
            blocks=steerable.blocks,
            lora_from=spec.lora_from,
        )
        losses.append(loss)
    stacked = torch.stack(losses)  # [n_groups]
    return stacked.mean(), [float(value) for value in stacked.detach()]


def shared_pairs_batch(
    tokenizer, vectors: Sequence[torch.Tensor], pairs: Sequence[QAPair], order: str
) -> tuple[SharedBatch, torch.Tensor]:
    """Every control pair asked of every read, each read's or question's common prefix
    computed once: in the ``vectors-first`` order a read is the prefix of all its pairs;
    in the ``question-first`` order a question is the prefix of all the reads it is asked
    of. The loss and its gradient are those of one prompt per row (see
    :mod:`latentqa.decoder.packing`)."""
    if order == "question-first":
        asked = [(read, q, a) for q, a in pairs for read in range(len(vectors))]
        return question_shared_batch(tokenizer, vectors, asked, max_branches=len(vectors))
    groups = [list(pairs) for _ in vectors]
    return shared_decoder_batch(tokenizer, vectors, groups, order=order)
