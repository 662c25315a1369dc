"""The projector of a LIT run: built, started from data (or at random), and optimized.

With ``--projector-init fitted`` each slot's map starts as a ridge map (closed form,
:func:`latentqa.decoder.projector.fit_ridge`) from the training dialogs' pooled (and
standardized) read vectors to the decoder's mean input embedding of each dialog's
masked text, scaled to the embeddings' median norm: before step 0 the soft tokens
already carry what a linear probe finds in the read (measured in docs/method.md,
"Measured here (2026-12-04)"). The projector trains with the LoRA, in its own AdamW
group; ``--projector-warmup-steps`` train it alone first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.decoder.projector import Projector, fit_ridge, mean_token_embeddings, token_norm
from latentqa.train.activations import ActivationSource
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import PreparedData


def fit_examples(
    source: ActivationSource, data: PreparedData, config: TrainConfig
) -> tuple[torch.Tensor, list[str]]:
    """The fitted start's inputs: pooled read vectors ``[n, n_slots, d_model]`` of up to
    ``config.projector_fit_dialogs`` training dialogs (a seeded sample) and the text
    each is mapped toward (see :attr:`PreparedData.fit_texts`; empty texts left out)."""
    dialogs = sorted(d for d, text in data.fit_texts.items() if text.strip())
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(dialogs), generator=generator)[: config.projector_fit_dialogs]
    pick = sorted(dialogs[i] for i in order.tolist())
    vectors: list[torch.Tensor] = []
    for start in range(0, len(pick), 16):  # one target pass per 16 dialogs (or the cache)
        vectors += [v.float().cpu() for v in source.get(pick[start : start + 16])]
    return torch.stack(vectors), [data.fit_texts[d] for d in pick]


def build_projector(
    config: TrainConfig,
    decoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    source: ActivationSource,
    data: PreparedData,
    *,
    n_slots: int,
    fit: bool = True,
) -> Projector | None:
    """The run's projector on the decoder's device, started as ``config`` says; ``None``
    without one.

    Args:
        config: The run's options.
        decoder: The peft model (its input embeddings are the projector's output space).
        tokenizer: The decoder's tokenizer (to embed the fit texts).
        source: The training reads (standardized and cached as the run reads them).
        data: The prepared data.
        n_slots: Vectors per read (read layers x poolings).
        fit: Compute the fitted start; ``False`` when a checkpoint's weights replace it.
    """
    if config.projector == "none":
        return None
    embeddings = decoder.get_input_embeddings()
    weight = embeddings.weight
    d_in = int(decoder.get_base_model().config.hidden_size)
    norm = token_norm(embeddings)
    with torch.random.fork_rng(devices=[]):  # the run's random stream stays as it was
        torch.manual_seed(config.seed)
        projector = Projector(n_slots, d_in, weight.shape[-1], config.projector)
    projector.init_random(norm, seed=config.seed)
    if fit and config.projector_init == "fitted":
        features, texts = fit_examples(source, data, config)
        targets = mean_token_embeddings(embeddings, tokenizer, texts)  # [n, d_model]
        projector.init_fitted(*fit_ridge(features, targets, config.projector_alpha, norm))
    return projector.to(weight.device)


def parameter_groups(
    lora: Sequence[nn.Parameter], projector: Projector | None, config: TrainConfig
) -> list[dict]:
    """AdamW parameter groups: the LoRA's (``--lr``), then the projector's (``--projector-lr``);
    the learning-rate schedule scales both."""
    groups: list[dict] = [{"params": list(lora), "lr": config.lr}]
    if projector is not None:
        groups.append({"params": list(projector.parameters()), "lr": config.projector_lr})
    return groups


def freeze_lora_step(lora: Sequence[nn.Parameter], step: int, config: TrainConfig) -> None:
    """During the projector's warmup steps, drop the LoRA's gradients before the optimizer
    step: AdamW leaves a parameter without a gradient untouched (no moment update, no
    weight decay), so the LoRA stays exactly as it was."""
    if step < config.projector_warmup_steps:
        for parameter in lora:
            parameter.grad = None
