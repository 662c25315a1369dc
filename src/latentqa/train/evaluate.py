"""Held-out answer loss with the real, zeroed and shuffled activations.

The gap between them is the evidence that the decoder reads the activations
rather than answering from the question alone (see :mod:`latentqa.conditions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.conditions import CONDITIONS, activation_conditions
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.layers import DecoderLayers
from latentqa.patch import PatchMode
from latentqa.train.activations import ActivationSource


@dataclass(frozen=True)
class EvalItem:
    """One held-out example: which dialog, which label, and the QA pair."""

    dialog: int
    label: str
    question: str
    answer: str
    task: str = "open"
    """Which training task the item exercises (losses are also reported per task)."""


def shuffled_partners(items: Sequence[EvalItem], seed: int) -> list[int]:
    """For each item, the index of an item with a different label (fixed seed).

    Training keeps this draw rather than :func:`latentqa.conditions.other_label_picks`
    so that the shuffled losses of runs stay comparable across versions.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=generator).tolist()
    partners = [0] * len(items)
    for position, index in enumerate(order):
        # Walk forward through the random order to the next different label.
        for step in range(1, len(order)):
            other = order[(position + step) % len(order)]
            if items[other].label != items[index].label:
                partners[index] = other
                break
        else:
            partners[index] = order[(position + 1) % len(order)]
    return partners


@torch.no_grad()
def evaluate_losses(
    decoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: ActivationSource,
    items: Sequence[EvalItem],
    *,
    write_layer: int,
    mode: PatchMode,
    batch_size: int,
    seed: int,
    blocks: DecoderLayers | None = None,
    projector: nn.Module | None = None,
    order: str = "vectors-first",
    lora_from: str = "start",
) -> dict[str, float]:
    """Mean answer loss (nats/token) per condition over ``items``, overall and per task.

    Keys: ``loss_<condition>`` and, when the items span several tasks,
    ``loss_<condition>_<task>``. With a ``projector`` the reads are projected first, so
    the zeroed condition is zero soft tokens, as a loaded decoder's (see
    :meth:`latentqa.decoder.loaded.LoadedDecoder.inputs`); ``order`` is the prompt order,
    ``lora_from`` where the LoRA acts (:mod:`latentqa.decoder.lora_gate`).
    """
    was_training = decoder.training
    decoder.eval()
    partners = shuffled_partners(items, seed)
    tasks = sorted({item.task for item in items})
    keys = [(c, None) for c in CONDITIONS] + [(c, t) for c in CONDITIONS for t in tasks]
    totals: dict[tuple[str, str | None], list[float]] = {key: [0.0, 0.0] for key in keys}
    for start in range(0, len(items), batch_size):
        chunk = list(range(start, min(start + batch_size, len(items))))
        batch_items = [items[i] for i in chunk]
        vectors = activation_conditions(
            _projected(projector, source.get([item.dialog for item in batch_items])),
            shuffled=_projected(projector, source.get([items[partners[i]].dialog for i in chunk])),
        )
        for condition in CONDITIONS:
            batch, flat = decoder_batch(
                tokenizer,
                vectors[condition],
                [item.question for item in batch_items],
                [item.answer for item in batch_items],
                order=order,
            )
            device = flat.device
            sums = answer_token_loss(
                decoder,
                batch.to(device),
                flat,
                write_layer=write_layer,
                mode=mode,
                reduction="none",
                blocks=blocks,
                lora_from=lora_from,
            )
            totals[condition, None][0] += float(sums[:, 0].sum())
            totals[condition, None][1] += float(sums[:, 1].sum())
            for row, item in enumerate(batch_items):
                totals[condition, item.task][0] += float(sums[row, 0])
                totals[condition, item.task][1] += float(sums[row, 1])
    decoder.train(was_training)
    result = {}
    for (condition, task), (total, count) in totals.items():
        if task is None or len(tasks) > 1:
            name = f"loss_{condition}" if task is None else f"loss_{condition}_{task}"
            result[name] = total / max(count, 1.0)
    return result


def _projected(projector: nn.Module | None, reads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each read ``[n_slots, d_model]`` through the projector (as it is without one)."""
    return reads if projector is None else [projector(read) for read in reads]
