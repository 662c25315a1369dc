"""One resolved target: the model, its tokenizer, its decoder blocks and adapter switching.

The decoder is the target with LoRA adapters, so one copy of the weights serves as
both: the target is the same model with every adapter disabled. A
:class:`TargetHandle` is resolved once (the block search runs once, with the
``layers_path`` override if any) and is the one way to switch adapters, shared by
the :class:`~latentqa.reader.Reader`, steering
(:class:`~latentqa.steer.model.SteerableModel`) and training's activation source.
:func:`stop_token_ids` and :func:`context_length` say where the target's answers end
and how long its inputs may be.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.chat import render
from latentqa.layers import DecoderLayers, find_decoder_layers
from latentqa.models import unwrap_causal_lm

_ANSWER_MARKER = "\u2063LATENTQA-ANSWER\u2063"


def adapters_off(model: nn.Module) -> AbstractContextManager:
    """Context in which a peft model behaves as its frozen base; a bare model as itself."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@dataclass
class TargetHandle:
    """A model with its tokenizer and decoder blocks, and the one way to switch adapters.

    Build it with :meth:`resolve`. :meth:`target` gives the plain target (every adapter
    off); :meth:`use_adapter` makes one named adapter the only active one for a block;
    :meth:`activate` switches for good (a training loop alternating adapters).
    """

    model: nn.Module
    """A bare causal LM or a peft model wrapping one."""
    tokenizer: PreTrainedTokenizerBase
    """The target's tokenizer, with a chat template."""
    blocks: DecoderLayers
    """The decoder block list, found once."""
    layers_path: str | None = None
    """The dotted-path override the blocks were found with, if any."""
    trainable: str | None = None
    """Adapter whose weights alone require gradients, re-applied after every switch
    (peft's switches mark the active adapter trainable); ``None`` leaves gradients alone."""

    @classmethod
    def resolve(
        cls,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        layers_path: str | None = None,
        *,
        trainable: str | None = None,
    ) -> TargetHandle:
        """Find ``model``'s decoder blocks (with the ``layers_path`` override) once.

        Raises:
            LatentQAError: No block list is found, or ``layers_path`` names none.
        """
        blocks = find_decoder_layers(model, layers_path)
        handle = cls(model, tokenizer, blocks, layers_path, trainable)
        handle.apply_gradient_rule()
        return handle

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        """Where the model's first parameter lives (inputs go there)."""
        return next(self.model.parameters()).device

    def apply_gradient_rule(self) -> None:
        """With :attr:`trainable` set: only that adapter's weights require gradients."""
        if self.trainable is None:
            return
        marker = f".{self.trainable}."
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(marker in name)

    def activate(self, adapter: str) -> None:
        """Make ``adapter`` the only active one until the next switch."""
        self.model.set_adapter(adapter)
        self.apply_gradient_rule()

    @contextmanager
    def use_adapter(self, adapter: str | None) -> Iterator[nn.Module]:
        """Context in which only ``adapter`` is active (``None``: none, the plain target).

        On exit the adapter active before is active again, and the gradient rule is
        re-applied, so nested or successive contexts never depend on each other's exits.

        Yields:
            The model, in that state.
        """
        if adapter is None:
            try:
                with adapters_off(self.model):
                    yield self.model
            finally:
                self.apply_gradient_rule()
            return
        previous = self.model.active_adapter
        self.activate(adapter)
        try:
            yield self.model
        finally:
            self.activate(previous)

    def target(self) -> AbstractContextManager[nn.Module]:
        """Context in which the model is the plain target (every adapter disabled)."""
        return self.use_adapter(None)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: nn.Module) -> list[int]:
    """Token ids that end an answer: eos, and the chat template's end-of-turn token.

    The end-of-turn token is found by rendering an assistant turn and taking the first
    token after its content when that token is a special / added token.

    Args:
        tokenizer: The model's tokenizer, with a chat template.
        model: The causal LM (its generation config's eos ids count too).

    Returns:
        The stop token ids, sorted.
    """
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates = [tokenizer.eos_token_id, *(eos if isinstance(eos, (list, tuple)) else [eos])]
    ids = {int(c) for c in candidates if c is not None}
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _ANSWER_MARKER}]
    tail = render(tokenizer, turns, False).partition(_ANSWER_MARKER)[2]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if tail_ids and tail_ids[0] in special:
        ids.add(int(tail_ids[0]))
    return sorted(ids)


def context_length(model: nn.Module) -> int | None:
    """The model's context in tokens (``max_position_embeddings``), or ``None`` if unknown."""
    config = unwrap_causal_lm(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None
