"""The steering-vector baseline (RepE / ActAdd style): add a mean activation difference.

The vector is the mean residual stream at a layer on "positive" inputs minus its mean
on "negative" inputs (the same prompts under contrasting instructions, or contrasting
sentences). Steering adds ``coefficient * vector`` to that layer's output at every
position, prompt and generated tokens alike. The coefficient is tuned on separate
prompts with :func:`tune_setting`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.capture import read_activations
from latentqa.chat import Message
from latentqa.errors import LatentQAError
from latentqa.layers import DecoderLayers, block_output_hook, find_decoder_layers

T = TypeVar("T")


@torch.no_grad()
def mean_activation(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: Sequence[Sequence[Message]],
    layer: int,
    *,
    n_masked: int = 0,
    batch_size: int = 16,
    blocks: DecoderLayers | None = None,
) -> torch.Tensor:
    """Mean output of block ``layer`` over the read positions of all dialogs, ``[d_model]``.

    ``n_masked`` leading messages (an instruction in a system prompt) are left out of the
    positions averaged, so the vector reflects their effect on the rest, not their text.
    """
    if not dialogs:
        raise LatentQAError("need at least one dialog to average activations over")
    total, count = None, 0
    for start in range(0, len(dialogs), batch_size):
        chunk = dialogs[start : start + batch_size]
        spans = read_activations(model, tokenizer, chunk, [layer], n_masked=n_masked, blocks=blocks)
        for span in spans:  # [1, span, d_model]
            summed = span[0].float().sum(0)  # [d_model]
            total = summed if total is None else total + summed
            count += span.shape[1]
    return total / count


def steering_vector(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    positive: Sequence[Sequence[Message]],
    negative: Sequence[Sequence[Message]],
    layer: int,
    *,
    n_masked: int = 0,
    blocks: DecoderLayers | None = None,
) -> torch.Tensor:
    """Mean activation on ``positive`` dialogs minus that on ``negative`` ones, ``[d_model]``."""
    kwargs = dict(n_masked=n_masked, blocks=blocks)
    return mean_activation(model, tokenizer, positive, layer, **kwargs) - mean_activation(
        model, tokenizer, negative, layer, **kwargs
    )


@contextmanager
def add_vector(
    model: nn.Module,
    layer: int,
    vector: torch.Tensor,
    coefficient: float = 1.0,
    *,
    blocks: DecoderLayers | None = None,
) -> Iterator[None]:
    """Context manager adding ``coefficient * vector`` to the output of block ``layer``.

    Applies to every forward pass inside the context (prompt and KV-cached decoding
    steps); the hook is removed on exit, also on error.
    """
    shift = coefficient * vector  # [d_model]

    def add(_index: int, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [batch, seq, d_model]; the shift broadcasts over batch and positions
        return hidden + shift.to(device=hidden.device, dtype=hidden.dtype)

    blocks = find_decoder_layers(model) if blocks is None else blocks
    with block_output_hook(blocks, layer, add, what="vector layer"):
        yield


def tune_setting(
    evaluate: Callable[[T], tuple[float, bool]], candidates: Sequence[T]
) -> tuple[T, list[tuple[T, float, bool]]]:
    """Pick the candidate with the best score among those that pass a fluency check.

    Args:
        evaluate: Maps a candidate (a coefficient, a (layer, coefficient) pair...) to
            ``(score, acceptable)``, higher scores better.
        candidates: Tried in order, mildest first.

    Returns:
        The best acceptable candidate (the first, mildest one if none is acceptable), and
        every candidate's ``(candidate, score, acceptable)``.
    """
    if not candidates:
        raise LatentQAError("give at least one steering-vector setting to try")
    trials = [(candidate, *evaluate(candidate)) for candidate in candidates]
    acceptable = [trial for trial in trials if trial[2]]
    if acceptable:
        return max(acceptable, key=lambda trial: trial[1])[0], trials
    return trials[0][0], trials
