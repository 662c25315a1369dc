"""One copy of the target's weights carrying two LoRA adapters: the decoder and the steer.

The frozen decoder is loaded as the peft adapter ``"decoder"``; the trainable
steering adapter ``"steer"`` sits only on the chosen target layers (LoraConfig
``layers_to_transform``). Exactly one adapter is active at a time:

- the target's read pass runs with only ``"steer"`` active (the steered target);
- the decoder pass runs with only ``"decoder"`` active (the decoder as trained);
- the unsteered target is the base model, with every adapter disabled.

Adapters are switched through the model's :class:`~latentqa.handle.TargetHandle`
(``handle.use_adapter(name)``, ``handle.target()``). peft's ``set_adapter`` also
changes ``requires_grad`` (it makes the active adapter trainable and the others
frozen), so the handle re-applies this module's rule (``trainable="steer"``) after
every switch: only the steering adapter's weights require gradients, whichever
adapter is active. A switch between the read pass and the decoder pass therefore
keeps the steering weights in the autograd graph.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.decoder.contrast import check_plain_reads
from latentqa.decoder.folder import ADAPTER_FILES, first_line
from latentqa.decoder.loaded import DecoderHolder, LoadedDecoder
from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index, linear_module_names
from latentqa.models import EMBEDDED_MODEL, load_model

DECODER_ADAPTER = "decoder"
STEER_ADAPTER = "steer"

STEERING_DECODER = "shipped:control"
"""The decoder steering uses on the embedded target unless told otherwise: it reads the
tone of replies and stereotypes in them, what the steering evaluations control."""


def steering_decoder(target: str, decoder: str | Path | None) -> str | Path | None:
    """``decoder``, else :data:`STEERING_DECODER` for the embedded target (``None``, the
    shipped default, for any other target, which then needs a decoder folder)."""
    if decoder is not None:
        return decoder
    return STEERING_DECODER if str(target).strip().lower() == EMBEDDED_MODEL else None


class SteerableModel(DecoderHolder):
    """The target with the frozen decoder adapter and, once added, a steering adapter.

    Args:
        decoder: The loaded decoder: a peft model whose adapter ``"decoder"`` is the
            decoder (:meth:`load` builds it).
    """

    adapter_name = DECODER_ADAPTER
    trainable = STEER_ADAPTER

    @classmethod
    def decoder_for(cls, target: str, decoder: str | Path | None) -> str | Path | None:
        """:func:`steering_decoder`'s choice: ``shipped:control`` on the embedded target."""
        return steering_decoder(target, decoder)

    def __init__(self, decoder: LoadedDecoder) -> None:
        super().__init__(decoder)
        check_plain_reads(self.spec.read_contrast, "steering")
        # The handle applies the gradient rule now and after every adapter switch.
        self.handle.trainable = STEER_ADAPTER
        self.handle.apply_gradient_rule()
        self.steer_layers: list[int] = []

    # Adapters.

    def use(self, adapter: str) -> None:
        """Make ``adapter`` the only active one until the next switch (see
        :meth:`TargetHandle.activate`); only the steering weights require gradients."""
        self.handle.activate(adapter)

    @property
    def has_steering(self) -> bool:
        return STEER_ADAPTER in self.model.peft_config

    def add_steering(
        self,
        layers: Sequence[int] | None = None,
        *,
        r: int = 8,
        alpha: int = 16,
        targets: str = "all-linear",
        seed: int = 0,
    ) -> list[int]:
        """Add a fresh trainable steering adapter (replacing any previous one).

        Args:
            layers: Target layers to adapt; default: 0 through the deepest read layer.
            r: LoRA rank.
            alpha: LoRA alpha.
            targets: ``all-linear`` (every linear module of the chosen blocks) or a
                comma-separated list of module names.
            seed: Seed of the LoRA initialisation.

        Returns:
            The adapted layers, normalised and sorted.
        """
        from peft import LoraConfig

        if layers is None:
            layers = range(max(self.spec.read_layers) + 1)
        chosen = sorted(
            {check_layer_index(layer, self.n_layers, "steer layer") for layer in layers}
        )
        if targets == "all-linear":
            modules = linear_module_names(self.blocks)
        else:
            modules = [name.strip() for name in targets.split(",") if name.strip()]
        if not modules:
            raise LatentQAError(f"no linear modules to adapt (lora_targets={targets!r})")
        self.remove_steering()
        config = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=modules,
            layers_to_transform=chosen,
            layers_pattern=self.blocks.path.rsplit(".", 1)[-1],
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)
        try:
            self.model.add_adapter(STEER_ADAPTER, config)
        except ValueError as error:
            raise LatentQAError(f"cannot add the steering adapter: {first_line(error)}") from None
        self.handle.apply_gradient_rule()
        for parameter in self.steering_parameters():
            parameter.data = parameter.data.float()
        self.steer_layers = chosen
        self.use(STEER_ADAPTER)
        return chosen

    def remove_steering(self) -> None:
        """Delete the steering adapter, if any (the decoder becomes the active adapter)."""
        if self.has_steering:
            self.use(DECODER_ADAPTER)
            self.model.delete_adapter(STEER_ADAPTER)
            self.steer_layers = []
            self.handle.apply_gradient_rule()

    def steering_parameters(self) -> list[nn.Parameter]:
        """The steering adapter's weights (the only trainable ones)."""
        marker = f".{STEER_ADAPTER}."
        return [p for name, p in self.model.named_parameters() if marker in name]

    # Views of the one model.

    def steered(self) -> AbstractContextManager[nn.Module]:
        """Context in which the model is the steered target (only ``"steer"`` active).

        On exit the adapter active before is active again.
        """
        if not self.has_steering:
            raise LatentQAError("no steering adapter: train one first")
        return self.handle.use_adapter(STEER_ADAPTER)

    @contextmanager
    def steered_at(self, strength: float) -> Iterator[nn.Module]:
        """The steered target with the steering adapter's output multiplied by ``strength``.

        A LoRA adds ``scaling * B A x``; scaling it is the adapter's analogue of a steering
        vector's coefficient (0: the plain target, 1: as trained), so the strength can be
        tuned against fluency the same way. The scaling is restored on exit, also on error.
        """
        # peft's LoRA layers keep a {adapter: scaling} dict (other modules' may be a float).
        layers = [
            m
            for m in self.model.modules()
            if isinstance(getattr(m, "scaling", None), dict) and STEER_ADAPTER in m.scaling
        ]
        original = [m.scaling[STEER_ADAPTER] for m in layers]
        try:
            for module, value in zip(layers, original, strict=True):
                module.scaling[STEER_ADAPTER] = value * strength
            with self.steered() as model:
                yield model
        finally:
            for module, value in zip(layers, original, strict=True):
                module.scaling[STEER_ADAPTER] = value

    def unsteered(self) -> AbstractContextManager[nn.Module]:
        """Context in which the model is the plain target (every adapter disabled).

        On exit peft re-enables the active adapter; the handle re-applies the gradient
        rule (peft marks that adapter trainable again).
        """
        return self.handle.target()

    def save_steering(self, out: str | Path) -> Path:
        """Write the steering adapter as a plain peft folder (safetensors) into ``out``.

        peft writes a named adapter into a subfolder; its files are moved up so that
        ``PeftModel.from_pretrained(base_model, out)`` loads it directly.
        """
        if not self.has_steering:
            raise LatentQAError("no steering adapter to save")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            self.model.save_pretrained(
                tmp, selected_adapters=[STEER_ADAPTER], safe_serialization=True
            )
            written = Path(tmp) / STEER_ADAPTER
            source = written if written.is_dir() else Path(tmp)
            for path in source.iterdir():
                if path.is_file():
                    shutil.move(str(path), out / path.name)
        return out


def load_steered(
    target: str,
    folder: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load ``target`` with a steering adapter written by ``latentqa steer``.

    The result is an ordinary peft model: its ``generate`` method generates steered
    text, and ``with model.disable_adapter():`` gives the unsteered target.

    Returns:
        ``(peft_model, tokenizer)`` in eval mode.

    Raises:
        LatentQAError: The folder holds no steering adapter, or it does not fit ``target``.
    """
    from peft import PeftModel

    folder = Path(folder).expanduser()
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise LatentQAError(
            f"{folder} lacks {', '.join(missing)}: pass a folder written by `latentqa steer`"
        )
    model, tokenizer = load_model(target, device=device, dtype=dtype)
    try:
        steered = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise LatentQAError(
            f"could not load the adapter in {folder}: {first_line(error)}"
        ) from error
    return steered.eval(), tokenizer
