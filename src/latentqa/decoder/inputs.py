"""The decoder's input vectors: a read span pooled, truncated and standardized as its
spec says, and decoder prompts laid out around them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from latentqa.capture import pad_token_id
from latentqa.decoder.folder import POOLS, DecoderSpec, pool_width
from latentqa.decoder.prompt import DecoderBatch, build_decoder_prompt, collate_prompts


def flatten_reads(span: torch.Tensor, max_read_tokens: int, pool: str = "none") -> torch.Tensor:
    """``[n_layers, span, d_model]`` -> the decoder's input vectors, last tokens kept.

    ``pool="none"``: ``[n_layers * kept, d_model]``, layer by layer. A pooled read is
    ``[n_layers * pool_width(pool), d_model]``, layer-major: for each read layer in turn
    its pooled vectors in the order :data:`POOLS` lists them (``mean+last``: layer 0's
    mean, layer 0's last position, layer 1's mean, ...). These are the *slots* a
    projector has one map for.
    """
    kept = span[:, -max_read_tokens:]
    if pool_width(pool) == 0:
        return kept.reshape(-1, kept.shape[-1])
    slots = [  # each [n_layers, d_model]
        kept.float().mean(1).to(kept.dtype) if kind == "mean" else kept[:, -1]
        for kind in POOLS[pool]
    ]
    if len(slots) == 1:
        return slots[0]
    return torch.stack(slots, dim=1).flatten(0, 1)  # [n_layers * width, d_model], layer-major


def standardizer(
    mean: Sequence[float] | torch.Tensor | None, std: Sequence[float] | torch.Tensor | None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``v -> (v - mean) / std`` per dimension, or ``None`` without statistics.

    Residual streams have a few dimensions hundreds of times larger than the rest; the
    decoder's RMSNorm would let those drown the small, behaviour-specific directions.
    Standardizing with the training vectors' statistics (as a linear probe does) makes
    every dimension equally loud.
    """
    if mean is None or std is None:
        return None
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6)

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        m, s = mean_t.to(vectors.device), std_t.to(vectors.device)
        return ((vectors.float() - m) / s).to(vectors.dtype)  # [n, d_model]

    return apply


def fit_standardizer(vectors: Sequence[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Per-dimension mean and standard deviation over all rows of ``vectors``."""
    rows = torch.cat([v.float().cpu() for v in vectors])  # [n_rows, d_model]
    return rows.mean(0).tolist(), rows.std(0).clamp_min(1e-6).tolist()


def decoder_inputs(span: torch.Tensor, spec: DecoderSpec) -> torch.Tensor:
    """The decoder's input vectors for one read span ``[n_layers, span, d_model]``, as
    ``spec`` says: last ``max_read_tokens`` positions, pooled or not, standardized or not.
    """
    vectors = flatten_reads(span, spec.max_read_tokens, spec.pool)
    scale = standardizer(spec.vector_mean, spec.vector_std)
    return vectors if scale is None else scale(vectors)


def decoder_batch(
    tokenizer: PreTrainedTokenizerBase,
    vectors: Sequence[torch.Tensor],
    questions: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    order: str = "vectors-first",
) -> tuple[DecoderBatch, torch.Tensor]:
    """Lay out decoder prompts for flattened activation ``vectors`` (one per example).

    ``order`` is the decoder's prompt order (``DecoderSpec.prompt_order``, see
    :func:`build_decoder_prompt`). Returns the padded batch and all vectors
    concatenated in placeholder order ``[total_placeholders, d_model]``.
    """
    prompts = [
        build_decoder_prompt(
            tokenizer, len(v), q, None if answers is None else answers[i], order=order
        )
        for i, (v, q) in enumerate(zip(vectors, questions, strict=True))
    ]
    return collate_prompts(prompts, pad_token_id(tokenizer)), torch.cat(list(vectors))
