"""Start a run from a trained decoder (``--init-from``): a second phase on other data.

A decoder that already reads (its adapter and projector) is a better start for new
questions or candidates than fresh LoRA weights and a fitted projector: the second
phase only has to learn what is new. The run keeps the first decoder's read spec, so
everything that decides what a read vector *is* must match: target, read layers,
pooling, projector kind, injection and the LoRA's shape. Its standardization statistics
are taken over as well, since the projector was trained on vectors standardized by them.

Only the weights are taken: the optimizer, schedule and step count start afresh (that
is ``--resume``'s job, for the same run).

With ``--projector-init distilled`` the run may read differently (``--read-contrast``):
it refits the statistics on its own reads and fits its projector so that they give the
soft tokens the first decoder makes of the same dialogs (:func:`distill_projector`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from latentqa.decoder.folder import DecoderSpec, first_line, open_decoder_folder
from latentqa.decoder.inputs import standardizer
from latentqa.decoder.projector import Projector, fit_ridge
from latentqa.errors import LatentQAError
from latentqa.train.activations import ActivationSource
from latentqa.train.config import TrainConfig


def check_fits(spec: DecoderSpec, config: TrainConfig, read_layers: list[int]) -> None:
    """Every option that shapes a read or the adapter equals the first decoder's.

    Raises:
        LatentQAError: Names each option that differs, with both values.
    """
    first = spec.train_config
    pairs = {
        "read_layers": (spec.read_layers, read_layers),
        "read_pool": (spec.pool, config.read_pool),
        "projector": (spec.projector, config.projector),
        "mode": (spec.mode, config.mode),
        "write_layer": (spec.write_layer, config.write_layer),
        "prompt_order": (spec.prompt_order, config.prompt_order),
        "lora_from": (spec.lora_from, config.lora_from),
        "standardize": (spec.vector_mean is not None, config.standardize),
    }
    if config.projector_init != "distilled":  # a distilled projector bridges the reads
        pairs["read_contrast"] = (spec.read_contrast, config.read_contrast)
    for name in ("lora_r", "lora_alpha", "lora_targets", "lora_layers", "max_read_tokens"):
        if name in first:
            pairs[name] = (first[name], getattr(config, name))
    differ = [f"{k} {a!r} vs {b!r}" for k, (a, b) in pairs.items() if a != b]
    if differ:
        raise LatentQAError(
            "--init-from: the decoder was trained with other options than this run ("
            + "; ".join(differ)
            + "): pass the same ones"
        )


def init_from_decoder(
    folder: str | Path,
    config: TrainConfig,
    decoder: nn.Module,
    projector: Projector | None,
    source: ActivationSource,
    read_layers: list[int],
    *,
    fresh: bool = True,
) -> tuple[list[float], list[float]] | None:
    """Load a trained decoder's adapter (and projector) into this run's fresh ones.

    Args:
        folder: A folder written by ``latentqa train`` (or ``shipped:NAME``).
        config: This run's options (checked against the decoder's, see :func:`check_fits`).
        decoder: This run's peft model; its adapter's weights are replaced.
        projector: This run's projector (``None`` without one); its weights are replaced.
        source: The run's reads; they are standardized with the decoder's statistics.
        read_layers: The run's resolved read layers.
        fresh: Load the weights; ``False`` for a resumed run, whose checkpoint holds them
            (the options are still checked and the statistics still taken).

    Returns:
        The standardization mean and std taken over (``None`` without ``--standardize``,
        or with ``--projector-init distilled``, which keeps the run's own).

    Raises:
        LatentQAError: The folder is not a decoder, was trained on another target or
            with other read options, or its weights do not fit.
    """
    path, spec = open_decoder_folder(config.target, str(folder))
    if spec.target != config.target:
        raise LatentQAError(
            f"--init-from: {path} reads {spec.target!r}, this run trains on "
            f"{config.target!r}: pass a decoder of the same target"
        )
    check_fits(spec, config, read_layers)
    if fresh:
        _load_weights(path, decoder, projector)
    if spec.vector_mean is None or spec.vector_std is None or config.projector_init == "distilled":
        return None
    source.standardize(spec.vector_mean, spec.vector_std)
    return list(spec.vector_mean), list(spec.vector_std)


def _load_weights(path: Path, decoder: nn.Module, projector: Projector | None) -> None:
    """The decoder folder's adapter and projector into the run's (strict shapes)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        adapter = load_file(str(path / "adapter_model.safetensors"))
        weight = next(p for p in decoder.parameters() if p.requires_grad)
        adapter = {k: v.to(weight.dtype) for k, v in adapter.items()}
        result = set_peft_model_state_dict(decoder, adapter)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{len(unexpected)} tensors fit no LoRA layer: {unexpected[0]}")
        if projector is not None:
            loaded = Projector.load(path)
            projector.load_state_dict(loaded.state_dict())  # strict: every tensor and shape
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        raise LatentQAError(
            f"--init-from: the weights in {path} do not fit this run ({first_line(error)})"
        ) from None


@torch.no_grad()
def distill_projector(
    folder: str | Path,
    config: TrainConfig,
    projector: Projector,
    source: ActivationSource,
    dialogs: Sequence[int],
) -> None:
    """``--projector-init distilled``: per slot, the ridge map (see
    :func:`~latentqa.decoder.projector.fit_ridge`) from this run's reads of ``dialogs``
    (standardized as the run reads them) to the soft tokens the ``--init-from`` decoder
    makes of the same dialogs' plain reads (standardized with its statistics, through its
    projector), scaled to their median norm: at step 0 the decoder sees about what it saw.

    Up to ``config.projector_fit_dialogs`` of ``dialogs`` (a seeded sample) are read.
    """
    path, spec = open_decoder_folder(config.target, str(folder))
    teacher = Projector.load(path)
    scale = standardizer(spec.vector_mean, spec.vector_std)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(dialogs), generator=generator)[: config.projector_fit_dialogs]
    pick = sorted(dialogs[i] for i in order.tolist())
    features, targets = [], []
    for start in range(0, len(pick), 16):  # one target pass per 16 dialogs (or the cache)
        chunk = pick[start : start + 16]
        features += [v.float().cpu() for v in source.get(chunk)]  # each [n_slots, d_in]
        plain = [v.float().cpu() for v in source.plain(chunk)]
        targets += [teacher(scale(v) if scale else v) for v in plain]  # each [n_slots, d_out]
    soft = torch.stack(targets)  # [n, n_slots, d_out]
    norm = float(soft.norm(dim=-1).median())
    projector.init_fitted(*fit_ridge(torch.stack(features), soft, config.projector_alpha, norm))
