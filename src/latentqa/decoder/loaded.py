"""A decoder loaded onto its target: the one record its users share.

:class:`LoadedDecoder` is the target's :class:`~latentqa.handle.TargetHandle` (the model
with the decoder's adapters, or the bare target), the decoder's
:class:`~latentqa.decoder.folder.DecoderSpec`, its folder and the target's name, with
what every user needs derived once: hidden size, device, pad and stop ids, context
length, the decoder's input transform and the checks of vectors and lengths.
:func:`load_decoder` builds one from a decoder folder. The
:class:`~latentqa.reader.Reader`, steering's
:class:`~latentqa.steer.model.SteerableModel`, the server and the evaluations all work
through one; :class:`DecoderHolder` is the base of the first two (the decoder's parts
under the names their users know) and :func:`decoder_method` makes a function of a
loaded decoder one of their methods.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Concatenate, ParamSpec, TypeVar

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.capture import pad_token_id
from latentqa.decoder.folder import DecoderSpec, first_line, open_decoder_folder, pool_width
from latentqa.decoder.inputs import decoder_inputs
from latentqa.decoder.projector import Projector
from latentqa.errors import LatentQAError
from latentqa.handle import TargetHandle, context_length, stop_token_ids
from latentqa.layers import DecoderLayers, check_layer_index, find_decoder_layers
from latentqa.models import EMBEDDED_MODEL, load_model, unwrap_causal_lm

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound="DecoderHolder")


@dataclass
class LoadedDecoder:
    """A decoder on its target (or the bare target reading itself), and what it implies.

    Build it with :func:`load_decoder` (a trained decoder folder) or :meth:`from_model`
    (a model in hand). The model is put in eval mode.
    """

    handle: TargetHandle
    """The model (peft model with the decoder's adapters, or bare), tokenizer and blocks."""
    spec: DecoderSpec
    """How the decoder reads: read / write layers, mode, max_read_tokens, pooling."""
    folder: Path | None = None
    """The decoder folder; ``None`` without an adapter."""
    target_name: str = ""
    """The target's model spec, for reports (default: the spec's target)."""
    projector: Projector | None = None
    """The decoder's projector (frozen), when its spec names one: :meth:`inputs` applies
    it. Loaded from ``folder`` when not given."""
    hidden_size: int = field(init=False)
    """The target's hidden size: read vectors are ``[n, hidden_size]``."""
    device: torch.device = field(init=False)
    """Where the model's inputs go."""
    pad_id: int = field(init=False)
    """The id left padding uses."""
    stop_ids: list[int] = field(init=False)
    """Token ids that end an answer (eos and the template's end-of-turn token)."""
    context: int | None = field(init=False)
    """The model's context in tokens, ``None`` if unknown."""
    has_adapter: bool = field(init=False)
    """Whether the model carries adapters (a peft model), i.e. a trained decoder."""

    def __post_init__(self) -> None:
        from peft import PeftModel

        model = self.handle.model.eval()
        causal_lm = unwrap_causal_lm(model)
        self.target_name = self.target_name or self.spec.target
        self.hidden_size = int(causal_lm.config.hidden_size)
        self.device = self.handle.device
        self.pad_id = pad_token_id(self.handle.tokenizer)
        self.stop_ids = stop_token_ids(self.handle.tokenizer, causal_lm)
        self.context = context_length(model)
        self.has_adapter = isinstance(model, PeftModel)
        if self.spec.projector != "none" and self.projector is None:
            if self.folder is None:
                raise LatentQAError(
                    f"the decoder spec names a {self.spec.projector} projector: pass it, or "
                    "load the decoder from its folder"
                )
            self.projector = Projector.load(self.folder, self.device)
        if self.projector is not None:
            self.projector.requires_grad_(False).eval()  # frozen; gradients still pass through
            if self.projector.n_slots != self.spec.n_slots:
                raise LatentQAError(
                    f"the projector has {self.projector.n_slots} maps but the decoder reads "
                    f"{self.spec.n_slots} vectors ({len(self.spec.read_layers)} layers, pool "
                    f"{self.spec.pool}): its folder is inconsistent, retrain it"
                )

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: DecoderSpec,
        *,
        folder: Path | None = None,
        target_name: str = "",
        layers_path: str | None = None,
        trainable: str | None = None,
        projector: Projector | None = None,
    ) -> LoadedDecoder:
        """A loaded decoder around a model in hand (its blocks are found here, once).

        Args:
            model: A peft model (target with the decoder's adapters) or a bare causal LM.
            tokenizer: The target's tokenizer, with a chat template.
            spec: How the decoder reads.
            folder: The decoder folder, if any.
            target_name: The target's model spec (default: ``spec.target``).
            layers_path: Dotted path of the block list, for models the search misses.
            trainable: Adapter whose weights alone require gradients (see
                :attr:`TargetHandle.trainable`).
            projector: The decoder's projector, if its spec names one (else loaded from
                ``folder``).
        """
        handle = TargetHandle.resolve(model, tokenizer, layers_path, trainable=trainable)
        return cls(handle, spec, folder, target_name, projector)

    @property
    def model(self) -> nn.Module:
        """The model the handle holds."""
        return self.handle.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The target's tokenizer."""
        return self.handle.tokenizer

    @property
    def blocks(self) -> DecoderLayers:
        """The model's decoder blocks (reads are taken and vectors written there)."""
        return self.handle.blocks

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return self.handle.n_layers

    def inputs(self, span: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """The decoder's input vectors of a read span, as the spec says (kept tokens,
        pooling, standardization, projector): ``[n_layers, span, d_model]`` ->
        ``[n, d_model]``.

        Args:
            span: The read, one row per layer of ``layers``.
            layers: The target blocks ``span`` holds (default: the spec's read layers).
                A projector maps each layer's vectors with that layer's maps, so it
                reads only layers among the spec's.

        Raises:
            LatentQAError: A projector asked to map a layer it has no map for.

        Differentiable in ``span`` (steering trains the target through it).
        """
        vectors = decoder_inputs(span, self.spec)
        if self.projector is None:
            return vectors
        n_blocks = self.spec.n_layers
        read = [check_layer_index(layer, n_blocks, "read layer") for layer in self.spec.read_layers]
        asked = (
            read if layers is None else [check_layer_index(x, n_blocks, "layer") for x in layers]
        )
        if not set(asked) <= set(read) or len(asked) != len(span):
            raise LatentQAError(
                f"the decoder's projector maps reads of layers {self.spec.read_layers} only, "
                f"not {asked} ({len(span)} read): read its own layers"
            )
        width = pool_width(self.spec.pool)
        # the slot of (layer, pooling): the layer's place among the read layers x width + k
        slots = [read.index(layer) * width + k for layer in asked for k in range(width)]
        return self.projector(vectors, slots).to(vectors.dtype)  # [n_slots', d_model]

    def check_length(self, length: int, what: str) -> None:
        """Raise a clear error when ``length`` tokens of ``what`` exceed the context."""
        if self.context is not None and length > self.context:
            raise LatentQAError(
                f"{what} is {length} tokens, longer than the model's context of "
                f"{self.context} tokens; shorten it"
            )

    def check_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        """``vectors`` ``[n, d_model]`` on the model's device, checked against its size.

        Raises:
            LatentQAError: Not a 2-d tensor with at least one row, or another hidden size.
        """
        if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 or len(vectors) < 1:
            shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors)
            raise LatentQAError(f"vectors must be a [n, d_model] tensor with n >= 1, got {shape}")
        if vectors.shape[-1] != self.hidden_size:
            raise LatentQAError(
                f"vectors have size {vectors.shape[-1]} but the decoder's hidden size is "
                f"{self.hidden_size}: they come from another model"
            )
        return vectors.to(self.device)


def load_decoder(
    target: str = EMBEDDED_MODEL,
    decoder: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    adapter_name: str = "default",
    trainable: str | None = None,
) -> LoadedDecoder:
    """Load the target once and attach a trained decoder's adapters to it (frozen).

    Args:
        target: Model spec of the target (see :func:`latentqa.models.load_model`).
        decoder: A folder written by ``latentqa train`` or ``shipped:NAME``; ``None``: the
            decoder shipped for the embedded model.
        device: ``auto``, ``cpu``, ``cuda[:N]``.
        dtype: The frozen weights' dtype.
        adapter_name: The peft name of the decoder's adapter.
        trainable: Passed to the handle (see :attr:`TargetHandle.trainable`).

    Returns:
        The loaded decoder: a peft model whose blocks are found as the decoder was
        trained (its recorded block-list override, if any), its spec and folder.

    Raises:
        LatentQAError: Missing or malformed decoder folder, or a decoder trained on
            another target.
    """
    from peft import PeftModel

    folder, spec = open_decoder_folder(str(target), decoder)
    model, tokenizer = load_model(target, device=device, dtype=dtype)
    spec.check_target(model, len(find_decoder_layers(model, spec.layers_path)))
    try:
        peft_model = PeftModel.from_pretrained(
            model, str(folder), adapter_name=adapter_name, is_trainable=False
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise LatentQAError(
            f"could not load the adapter in {folder}: {first_line(error)}"
        ) from error
    return LoadedDecoder.from_model(
        peft_model,
        tokenizer,
        spec,
        folder=folder,
        target_name=str(target),
        layers_path=spec.layers_path,
        trainable=trainable,
    )


class DecoderHolder:
    """Base of what works through one :class:`LoadedDecoder` (the Reader, steering).

    :meth:`load` loads one from a decoder folder; the properties are the decoder's parts
    under the names their users know.

    Args:
        decoder: The loaded decoder.
    """

    adapter_name: ClassVar[str] = "default"
    """The peft name :meth:`load` gives the decoder's adapter."""
    trainable: ClassVar[str | None] = None
    """Adapter whose weights alone require gradients (see :attr:`TargetHandle.trainable`)."""

    def __init__(self, decoder: LoadedDecoder) -> None:
        self.decoder = decoder
        """The loaded decoder: target handle, spec, folder and what they imply."""

    @classmethod
    def decoder_for(cls, target: str, decoder: str | Path | None) -> str | Path | None:
        """The decoder :meth:`load` loads when asked for ``decoder``: ``decoder`` itself."""
        return decoder

    @classmethod
    def load(
        cls: type[H],
        target: str = EMBEDDED_MODEL,
        decoder: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
    ) -> H:
        """Load the target once and attach a trained decoder's adapters to it (frozen).

        Args:
            target: Model spec of the target (see :func:`latentqa.models.load_model`).
            decoder: A folder written by ``latentqa train`` or ``shipped:NAME``; ``None``:
                :meth:`decoder_for`'s choice (the Reader: the decoder shipped for the
                embedded model; steering: ``shipped:control``).
            device: ``auto``, ``cpu``, ``cuda[:N]``.
            dtype: The frozen weights' dtype.

        Raises:
            LatentQAError: Missing or malformed decoder folder, or a decoder trained on
                another target.
        """
        loaded = load_decoder(
            target,
            cls.decoder_for(target, decoder),
            device=device,
            dtype=dtype,
            adapter_name=cls.adapter_name,
            trainable=cls.trainable,
        )
        return cls(loaded)

    @property
    def model(self) -> nn.Module:
        """The model: the target with the decoder's adapters, or the bare target."""
        return self.decoder.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The target's tokenizer."""
        return self.decoder.tokenizer

    @property
    def handle(self) -> TargetHandle:
        """The model's handle: its blocks and the one way to switch its adapters."""
        return self.decoder.handle

    @property
    def spec(self) -> DecoderSpec:
        """How the decoder reads."""
        return self.decoder.spec

    @property
    def blocks(self) -> DecoderLayers:
        """The model's decoder blocks."""
        return self.decoder.blocks

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return self.decoder.n_layers

    @property
    def hidden_size(self) -> int:
        """The target's hidden size."""
        return self.decoder.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go."""
        return self.decoder.device

    @property
    def has_adapter(self) -> bool:
        """Whether the model carries a trained decoder's adapters."""
        return self.decoder.has_adapter

    @property
    def readable_layers(self) -> list[int]:
        """The target layers the decoder reads one at a time (``layer=``): any, or with a
        projector only its own read layers (it has maps for no others)."""
        if self.decoder.projector is None:
            return list(range(self.n_layers))
        return sorted(check_layer_index(x, self.n_layers, "layer") for x in self.spec.read_layers)

    @property
    def decoder_path(self) -> Path | None:
        """The decoder folder; ``None`` without an adapter."""
        return self.decoder.folder

    @property
    def target_name(self) -> str:
        """The target's model spec, for reports."""
        return self.decoder.target_name


def decoder_method(
    function: Callable[Concatenate[LoadedDecoder, P], R],
) -> Callable[Concatenate[DecoderHolder, P], R]:
    """``function(decoder, ...)`` as a method of a :class:`DecoderHolder`: it is called
    with the holder's decoder, and keeps the function's name, docs and parameters."""

    @functools.wraps(function)
    def method(self: DecoderHolder, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return function(self.decoder, *args, **kwargs)

    return method
