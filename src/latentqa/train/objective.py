"""The objective of one LIT micro-batch: its decoder inputs, and the answer loss as a module.

:func:`lit_inputs` lays out a micro-batch (sharing each dialog's read across its QA
pairs where the prompt order allows); :class:`LITObjective` projects the read vectors
(with a projector) and takes the answer loss, as one module so that DDP/FSDP see one
forward per step and all-reduce the projector's gradients with the LoRA's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import SharedBatch, question_shared_batch, shared_decoder_batch
from latentqa.decoder.projector import Projector
from latentqa.decoder.prompt import DecoderBatch
from latentqa.layers import DecoderLayers
from latentqa.train.activations import ActivationSource


def project_flat(projector: Projector | None, vectors: torch.Tensor) -> torch.Tensor:
    """Read vectors concatenated read by read ``[n_reads * n_slots, d_in]`` through their
    slots' maps -> ``[n_reads * n_slots, d_out]`` (unchanged without a projector)."""
    if projector is None:
        return vectors
    slots = vectors.view(-1, projector.n_slots, vectors.shape[-1])  # [n_reads, slots, d_in]
    return projector(slots).flatten(0, 1)


class LITObjective(nn.Module):
    """The decoder's answer loss as a module, with the projector (if any) in front.

    Args:
        decoder: The peft model.
        write_layer: Decoder block whose output is patched (unused in ``embed`` mode).
        mode: Injection mode.
        blocks: The block list the vectors were read from.
        projector: Maps each read's pooled vectors into the decoder's input embeddings.
        lora_from: Where the LoRA acts (``start`` or ``reads``, see
            :mod:`latentqa.decoder.lora_gate`).
    """

    def __init__(
        self,
        decoder: nn.Module,
        write_layer: int,
        mode: str,
        blocks: DecoderLayers | None = None,
        projector: Projector | None = None,
        lora_from: str = "start",
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.write_layer = write_layer
        self.mode = mode
        self.blocks = blocks
        self.projector = projector
        self.lora_from = lora_from

    def forward(
        self, batch: DecoderBatch | SharedBatch, vectors: torch.Tensor, projected: bool = False
    ) -> torch.Tensor:
        """The mean answer-token loss; ``projected``: ``vectors`` are already soft tokens
        (the verbalizer phase, :mod:`latentqa.train.verbalizer`), the projector is skipped."""
        loss = answer_token_loss(
            self.decoder,
            batch,
            vectors if projected else project_flat(self.projector, vectors),
            write_layer=self.write_layer,
            mode=self.mode,
            blocks=self.blocks,
            lora_from=self.lora_from,
        )
        if projected and self.projector is not None:
            # DDP expects every parameter in each forward: the projector joins with weight 0.
            loss = loss + 0.0 * sum(p.sum() for p in self.projector.parameters())
        return loss


def lit_inputs(
    tokenizer,
    source: ActivationSource,
    examples: Sequence[tuple[int, str, str]],
    share: int,
    order: str = "vectors-first",
) -> tuple[DecoderBatch | SharedBatch, torch.Tensor, int]:
    """The decoder inputs of one micro-batch and its tokens (each example counted whole).

    With ``share`` > 1, prompts that agree up to their vectors share that prefix (the
    loss and gradient are the same): in the ``vectors-first`` order, the examples of one
    dialog (up to ``share`` of them) read its activations once; in the ``question-first``
    order, examples that ask the same question (a yes/no pair, or one question about
    several dialogs; up to ``share`` of them) encode it once, each branch then reading its
    own dialog (:func:`question_shared_batch`). A read's vectors always go in whole, so a
    projector sees whole reads.
    """
    if share <= 1:
        vectors = source.get([dialog for dialog, _, _ in examples])
        batch, flat = decoder_batch(
            tokenizer,
            vectors,
            [q for _, q, _ in examples],
            [a for _, _, a in examples],
            order=order,
        )
        return batch, flat, int(batch.attention_mask.sum())
    if order == "question-first":
        dialogs = list(dict.fromkeys(dialog for dialog, _, _ in examples))
        index = {dialog: i for i, dialog in enumerate(dialogs)}
        vectors = source.get(dialogs)
        triples = [(index[dialog], q, a) for dialog, q, a in examples]
        batch, flat = question_shared_batch(tokenizer, vectors, triples, max_branches=share)
        return batch, flat, batch.n_example_tokens
    groups: dict[tuple[int, int], list[tuple[str, str]]] = {}
    seen: dict[int, int] = {}
    for dialog, question, answer in examples:
        # A dialog with more than `share` examples in the batch starts a second prefix.
        key = (dialog, seen.get(dialog, 0) // share)
        seen[dialog] = seen.get(dialog, 0) + 1
        groups.setdefault(key, []).append((question, answer))
    vectors = source.get([dialog for dialog, _ in groups])
    batch, flat = shared_decoder_batch(tokenizer, vectors, list(groups.values()), order=order)
    return batch, flat, batch.n_example_tokens
