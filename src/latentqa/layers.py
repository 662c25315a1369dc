"""Find a model's decoder blocks by searching its module tree.

No per-model tables: the block list is the largest ``nn.ModuleList`` whose
children all share one class. This covers Llama, Qwen2, Gemma 3 and GPT-2 style
models, and the same search sees through peft, DDP and FSDP wrappers because it
walks ``named_modules()`` of whatever it is given. Odd models pass an explicit
dotted path (``layers_path``) instead.

:func:`block_output_hook` is the one way this package hooks a block's output: reading
(:mod:`latentqa.read`), patching (:mod:`latentqa.patch`) and steering vectors
(:mod:`latentqa.steer.vector`) are all built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from latentqa.errors import LatentQAError


@dataclass(frozen=True)
class DecoderLayers:
    """The decoder block list of a model and where it was found."""

    path: str
    """Dotted module path of the block list inside the searched model."""
    blocks: nn.ModuleList
    """The decoder blocks, in forward order."""

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]


def _homogeneous_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList, int]]:
    """Every ModuleList whose children share one class, with its parameter count."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1:
                n_params = sum(p.numel() for p in module.parameters())
                found.append((name, module, n_params))
    return found


def _resolve_path(model: nn.Module, path: str) -> nn.Module | None:
    module: object = model
    for part in path.split("."):
        if part.isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            index = int(part)
            module = module[index] if index < len(module) else None
        else:
            module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> DecoderLayers:
    """Locate the decoder blocks of ``model``.

    Args:
        model: Any causal LM, possibly wrapped by peft, DDP or FSDP.
        layers_path: Optional dotted path to the block list (e.g. ``"model.layers"``),
            for models where the search picks the wrong list. Resolved against the
            model and, failing that, against the suffixes of every module path so
            that a path written for the bare model also works through wrappers.

    Returns:
        The block list and its path.

    Raises:
        LatentQAError: if no block list is found, listing the candidates seen.
    """
    candidates = _homogeneous_lists(model)
    if layers_path is not None:
        module = _resolve_path(model, layers_path)
        if module is None:
            # A path written for the bare model, used on a wrapped one.
            for name, candidate, _ in candidates:
                if name == layers_path or name.endswith("." + layers_path):
                    return DecoderLayers(name, candidate)
        if isinstance(module, nn.ModuleList):
            return DecoderLayers(layers_path, module)
        names = ", ".join(name for name, _, _ in candidates) or "none"
        raise LatentQAError(
            f"layers_path {layers_path!r} does not name a ModuleList of decoder blocks in "
            f"{type(model).__name__}; candidates: {names}"
        )
    if not candidates:
        raise LatentQAError(
            f"found no list of decoder blocks in {type(model).__name__}; pass layers_path "
            "(the dotted path of the nn.ModuleList holding the blocks)"
        )
    # The decoder stack holds most of the weights; nested lists (experts, vision
    # towers) hold fewer, so the largest homogeneous list is the one we want.
    name, blocks, _ = max(candidates, key=lambda c: (c[2], len(c[1])))
    return DecoderLayers(name, blocks)


def check_layer_index(layer: int, n_layers: int, what: str = "layer") -> int:
    """Validate a layer index (negative counts from the end) and return it normalised."""
    if not -n_layers <= layer < n_layers:
        raise LatentQAError(
            f"{what} {layer} is out of range: the model has {n_layers} decoder layers "
            f"(valid: 0..{n_layers - 1}, or negative from the end)"
        )
    return layer % n_layers


def linear_module_names(blocks: DecoderLayers) -> list[str]:
    """Names (last path component) of the linear modules inside a decoder block.

    Works on a bare model's blocks and on a peft-wrapped one's (a LoRA layer counts as
    the linear module it wraps; the adapters' own linear modules are skipped).
    """
    block = blocks[0]
    names = set()
    for name, module in block.named_modules():
        parts = name.split(".")
        if not name or any(part.startswith("lora_") or part == "base_layer" for part in parts):
            continue
        if isinstance(getattr(module, "base_layer", module), nn.Linear):
            names.add(parts[-1])
    return sorted(names)


BlockEdit = Callable[[int, torch.Tensor], torch.Tensor | None]
"""``(layer, hidden [batch, seq, d_model]) -> replacement or None`` (keep the output)."""


@contextmanager
def block_output_hook(
    blocks: DecoderLayers, layers: int | Sequence[int], edit: BlockEdit, *, what: str = "layer"
) -> Iterator[list[int]]:
    """Context manager calling ``edit`` on the output of each block in ``layers``.

    The one place that unwraps block outputs (a tensor in recent transformers, a tuple
    whose first item is the hidden state in older ones) and removes hooks: they are
    removed on exit, also when the body or ``edit`` raises.

    Args:
        blocks: The resolved block list (see :func:`find_decoder_layers`).
        layers: Block index or indices (negative counts from the end).
        edit: Called as ``edit(layer, hidden)`` with the normalised index and the
            block's hidden output ``[batch, seq, d_model]``; a returned tensor replaces
            that output, ``None`` leaves it unchanged. Exceptions propagate to the
            forward pass (a read stops the forward early this way).
        what: Name of the layers in the out-of-range error ("read layer", ...).

    Yields:
        The hooked indices, normalised, unique and sorted.

    Raises:
        LatentQAError: An index is out of range (before any hook is registered).
    """
    wanted = [layers] if isinstance(layers, int) else list(layers)
    indices = sorted({check_layer_index(layer, len(blocks), what) for layer in wanted})

    def make_hook(index: int):
        def hook(_module: nn.Module, _args: object, output: object) -> object:
            hidden = output[0] if isinstance(output, tuple) else output
            new = edit(index, hidden)
            if new is None:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    handles = []
    try:
        for index in indices:
            handles.append(blocks[index].register_forward_hook(make_hook(index)))
        yield indices
    finally:
        for handle in handles:
            handle.remove()


def check_layers(layers: Sequence[int] | None, n_layers: int | None, what: str) -> None:
    """Refuse layers outside a model of ``n_layers`` blocks (no check when it is unknown).

    Raises:
        LatentQAError: A layer is out of range (see :func:`latentqa.layers.check_layer_index`).
    """
    from latentqa.layers import check_layer_index

    if n_layers is not None:
        for layer in layers or ():
            check_layer_index(layer, n_layers, what)


def resolve_read_layers(
    layers: Sequence[int] | None, n_layers: int, default: Sequence[int] | None = None
) -> list[int]:
    """The read layers, checked and normalised (a negative index counts from the end).

    Args:
        layers: The layers chosen; ``None``: ``default``.
        n_layers: The target's number of decoder layers.
        default: The layers read when none are chosen (e.g. a trained decoder's own);
            ``None``: half depth (the paper read 15 of 32).

    Raises:
        LatentQAError: A layer is out of range for the target.
    """
    if layers is None:
        layers = [n_layers // 2] if default is None else default
    return [check_layer_index(layer, n_layers, "read layer") for layer in layers]
