"""The LIT decoder: its saved description, its inputs, and its answer loss.

The decoder is the target model with LoRA adapters. It reads activation vectors
patched in at placeholder positions (see :mod:`latentqa.layout` and
:mod:`latentqa.patch`) and is trained with cross-entropy on answer tokens only.
A trained decoder is a folder (``latentqa.json`` and the peft adapter files);
:func:`latentqa.decoder.loaded.load_decoder` loads one onto its target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from latentqa.decoder.lora_gate import LORA_FROM
from latentqa.decoder.projector import PROJECTOR_FILE, PROJECTOR_KINDS
from latentqa.decoder.prompt import PROMPT_ORDERS
from latentqa.errors import LatentQAError
from latentqa.json_files import read_json, write_json_atomic
from latentqa.layers import check_layers
from latentqa.models import EMBEDDED_MODEL, check_device_dtype, model_shape
from latentqa.package_data import package_file
from latentqa.patch import PATCH_MODES

SPEC_FILE = "latentqa.json"
SPEC_FORMAT = "latentqa-decoder/1"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
SHIPPED_DECODERS = package_file("latentqa", "resources/decoders")
POOLS: dict[str, tuple[str, ...]] = {
    "none": (),
    "mean": ("mean",),
    "last": ("last",),
    "mean+last": ("mean", "last"),
}
"""Each read pool and the vectors it makes of one read layer, in this order: ``none``
keeps every position; ``mean`` is the mean of the kept positions, ``last`` the last
kept position; ``mean+last`` gives both, the mean first (see
:func:`latentqa.decoder.inputs.flatten_reads`)."""


def pool_width(pool: str) -> int:
    """Vectors per read layer of a pooled read (its *slots* per layer); 0 for ``none``.

    Raises:
        LatentQAError: An unknown pool.
    """
    if pool not in POOLS:
        raise LatentQAError(f"unknown read pool {pool!r}; use one of {', '.join(POOLS)}")
    return len(POOLS[pool])


READ_CONTRASTS = ("none", "no-system")
"""``none``: the read as it is; ``no-system``: minus the read without the system prompt
(:mod:`latentqa.decoder.contrast`), one pooled vector per layer (``mean`` or ``last``)."""


def check_contrast(contrast: str, pool: str) -> None:
    """Refuse an unknown read contrast, or one with a pool it cannot difference."""
    if contrast not in READ_CONTRASTS:
        raise LatentQAError(f"unknown read contrast {contrast!r}; use none or no-system")
    if contrast != "none" and pool not in ("mean", "last"):
        raise LatentQAError(
            f"--read-contrast {contrast} subtracts one pooled vector per read layer: "
            f"use --read-pool mean or last (not {pool!r})"
        )


@dataclass
class DecoderSpec:
    """What a trained decoder folder records about how it reads (``latentqa.json``)."""

    target: str
    """Model spec of the target whose activations the decoder reads."""
    read_layers: list[int]
    """Target decoder blocks whose outputs are read (concatenated along positions)."""
    write_layer: int
    """Decoder block at whose output the activations are patched in."""
    mode: str
    """Injection mode: ``replace`` or ``add``."""
    max_read_tokens: int
    """Only the last this-many read positions of a dialog are given to the decoder."""
    hidden_size: int
    """The target's hidden size, checked against the target at load time."""
    n_layers: int
    """The target's number of decoder blocks, checked at load time."""
    pool: str = "none"
    """``none``: one vector per read position; ``mean``, ``last``, ``mean+last``: one
    vector per read layer and pooling (see :data:`POOLS`)."""
    vector_mean: list[float] | None = None
    """Per-dimension mean of the training vectors, when the decoder reads them standardized."""
    vector_std: list[float] | None = None
    """Per-dimension standard deviation of the training vectors (with ``vector_mean``)."""
    projector: str = "none"
    """``none``, or the kind of projector (``linear``, ``mlp``) saved beside the adapter
    as ``projector.safetensors``: each pooled vector goes through its slot's map into
    the decoder's input-embedding space (with ``mode`` ``embed``)."""
    prompt_order: str = "vectors-first"
    """Where the placeholders go: before the question (``vectors-first``) or after it
    (``question-first``); see :func:`latentqa.decoder.prompt.build_decoder_prompt`."""
    lora_from: str = "start"
    """Where the LoRA acts: on every token (``start``) or only on tokens that see a read
    (``reads``); see :mod:`latentqa.decoder.lora_gate`."""
    read_contrast: str = "none"
    """``no-system``: the decoder reads each pooled read minus that of the same dialog
    without its system prompt (see :mod:`latentqa.decoder.contrast`); ``none``: the read itself."""
    extra: dict = field(default_factory=dict)
    """Training config, data version and final metrics, for reproducibility."""

    @property
    def train_config(self) -> dict:
        """The ``latentqa train`` options recorded in :attr:`extra` (empty when absent)."""
        config = self.extra.get("train_config")
        return config if isinstance(config, dict) else {}

    @property
    def picks_by_yes_no(self) -> bool:
        """Whether the decoder was trained on yes/no questions (``yes_no`` in its
        ``--task-mix``): it then picks among options by each option's yes/no margin, which
        the 50/50 training calibrates, instead of by the options' likelihood."""
        mix = self.train_config.get("task_mix")
        if not isinstance(mix, str):
            return False
        return any(part.split("=")[0].strip() == "yes_no" for part in mix.split(","))

    @property
    def layers_path(self) -> str | None:
        """The block-list override the decoder was trained with (``None``: found by search)."""
        return self.train_config.get("layers_path")

    @property
    def n_slots(self) -> int:
        """Vectors per read of a pooled decoder (read layers x poolings); 0 unpooled."""
        return len(self.read_layers) * pool_width(self.pool)

    def save(self, folder: str | Path) -> None:
        data = {"format": SPEC_FORMAT, **asdict(self)}
        # Fields added later are left out at their defaults: a decoder without them
        # keeps the file older latentqa versions read.
        for name, default in _LATER_FIELDS.items():
            if data[name] == default:
                del data[name]
        Path(folder, SPEC_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> DecoderSpec:
        import dataclasses
        import typing

        path = Path(folder, SPEC_FILE)
        if not path.is_file():
            raise LatentQAError(
                f"{folder} is not a latentqa decoder folder (no {SPEC_FILE}); "
                "pass a folder written by `latentqa train`"
            )
        data = read_json(path)
        if not isinstance(data, dict):
            raise LatentQAError(
                f"{path} must hold a JSON object ({SPEC_FORMAT}), got a {type(data).__name__}"
            )
        if data.pop("format", None) != SPEC_FORMAT:
            raise LatentQAError(f"{path} is not a {SPEC_FORMAT} file")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise LatentQAError(
                f"{path} has unknown field(s) {', '.join(map(repr, unknown))}: written by a "
                "newer latentqa? update latentqa, or retrain the decoder"
            )
        missing = [
            name
            for name, f in known.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise LatentQAError(
                f"{path} lacks field(s) {', '.join(map(repr, missing))}: "
                "pass a folder written by `latentqa train`"
            )

        def fits(value: object, hint: object) -> bool:
            origin, args = typing.get_origin(hint), typing.get_args(hint)
            if hint is int:
                return isinstance(value, int) and not isinstance(value, bool)
            if hint is float:
                return isinstance(value, int | float) and not isinstance(value, bool)
            if origin is list:
                return isinstance(value, list) and all(fits(v, args[0]) for v in value)
            if hint is dict or origin is dict:
                return isinstance(value, dict)
            return not isinstance(hint, type) or isinstance(value, hint)

        words = {
            int: "an integer",
            float: "a number",
            str: "a string",
            bool: "true or false",
            dict: "a JSON object",
            list[int]: "a list of integers",
        }
        for name, value in data.items():
            hint = hints[name]
            if not fits(value, hint):
                expected = words.get(hint, str(hint))
                raise LatentQAError(
                    f"{path}: field {name!r} must be {expected}, got {json.dumps(value)[:60]}"
                )
        if not data["read_layers"]:
            raise LatentQAError(f"{path}: field 'read_layers' is empty")
        choices = {
            "mode": PATCH_MODES,
            "pool": tuple(POOLS),
            "projector": PROJECTOR_KINDS,
            "prompt_order": PROMPT_ORDERS,
            "lora_from": LORA_FROM,
            "read_contrast": READ_CONTRASTS,
        }
        for name, allowed in choices.items():
            if name in data and data[name] not in allowed:
                raise LatentQAError(
                    f"{path}: field {name!r} must be one of {', '.join(allowed)}, got "
                    f"{json.dumps(data[name])[:60]}: written by a newer latentqa?"
                )
        if data.get("projector", "none") != "none" and data.get("pool", "none") == "none":
            raise LatentQAError(f"{path}: a projector needs a pooled read, but 'pool' is none")
        try:
            check_contrast(data.get("read_contrast", "none"), data.get("pool", "none"))
        except LatentQAError as error:
            raise LatentQAError(f"{path}: {error}") from None
        return cls(**data)

    def check_target(self, target: nn.Module, n_layers: int) -> None:
        """Raise a clear error when ``target`` is not the model this decoder reads."""
        hidden = getattr(getattr(target, "config", None), "hidden_size", None)
        if hidden != self.hidden_size or n_layers != self.n_layers:
            raise LatentQAError(
                f"decoder was trained on {self.target!r} ({self.n_layers} layers, hidden "
                f"size {self.hidden_size}) but the target has {n_layers} layers, hidden "
                f"size {hidden}: load the matching target"
            )


_LATER_FIELDS = {
    "projector": "none",
    "prompt_order": "vectors-first",
    "lora_from": "start",
    "read_contrast": "none",
}
"""Spec fields added after the first decoders shipped, with the value they default to."""


# Decoder folders.


SHIPPED_PREFIX = "shipped:"
"""``shipped:NAME`` names a decoder that ships in the package (see :data:`SHIPPED_NAMES`)."""
SHIPPED_NAMES = {"default": "", "relations": "-relations", "control": "-control"}
"""Shipped decoder name -> folder suffix: ``default`` reads behaviours (personas, hidden
instructions), ``relations`` reads facts about a country from its name's tokens,
``control`` reads an assistant reply's tone and whether it relies on a stereotype (the
decoder steering uses)."""


def shipped_decoder(target: str, name: str = "default") -> Path:
    """The decoder folder shipped in the package for ``target`` (the embedded model only).

    Args:
        target: The target model spec.
        name: A key of :data:`SHIPPED_NAMES`.

    Raises:
        LatentQAError: No decoder ships for ``target`` or under ``name``, or the shipped
            folder is missing.
    """
    if name not in SHIPPED_NAMES:
        raise LatentQAError(
            f"no shipped decoder is called {name!r}; choose "
            + ", ".join(SHIPPED_PREFIX + key for key in SHIPPED_NAMES)
        )
    if str(target).strip().lower() != EMBEDDED_MODEL:
        raise LatentQAError(
            f"no decoder ships for target {str(target)!r} (only for {EMBEDDED_MODEL!r}); "
            "pass a decoder folder written by `latentqa train`"
        )
    folder = SHIPPED_DECODERS / (EMBEDDED_MODEL + SHIPPED_NAMES[name])
    if not (folder / SPEC_FILE).is_file():
        raise LatentQAError(
            f"the shipped decoder {SHIPPED_PREFIX}{name} for {EMBEDDED_MODEL!r} is not "
            f"installed ({folder} is missing); train one with `latentqa train --out DIR` "
            "and pass it as the decoder"
        )
    return folder


def decoder_folder(target: str, decoder: str | Path | None) -> Path:
    """Where ``decoder`` lives: ``None`` is the shipped default, ``shipped:NAME`` a shipped
    decoder, anything else a folder path."""
    if decoder is None:
        return shipped_decoder(str(target))
    if isinstance(decoder, str) and decoder.startswith(SHIPPED_PREFIX):
        return shipped_decoder(str(target), decoder[len(SHIPPED_PREFIX) :] or "default")
    return Path(decoder).expanduser()


def open_decoder_folder(target: str, decoder: str | Path | None) -> tuple[Path, DecoderSpec]:
    """The decoder folder (see :func:`decoder_folder`) and its spec, checked for adapters
    (and the projector its spec names).

    Raises:
        LatentQAError: The folder is missing, has no ``latentqa.json``, or lacks the
            safetensors adapter files or projector.
    """
    folder = decoder_folder(target, decoder)
    if not folder.is_dir():
        raise LatentQAError(f"decoder folder {folder} does not exist")
    spec = DecoderSpec.load(folder)
    needed = ADAPTER_FILES + ((PROJECTOR_FILE,) if spec.projector != "none" else ())
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise LatentQAError(
            f"{folder} lacks {', '.join(missing)}: pass a folder written by `latentqa train` "
            "(adapters are read from safetensors only)"
        )
    return folder, spec


def set_read_threshold(folder: str | Path, threshold: float) -> Path:
    """Record ``threshold`` as the decoder's calibrated ``read_threshold`` (the evidence
    above which its open answers are marked read) in ``folder``'s ``latentqa.json``,
    written atomically; every other field stays as it was.

    Returns:
        The file written.

    Raises:
        LatentQAError: No decoder file in ``folder``, or a threshold that is not finite.
    """
    path = Path(folder, SPEC_FILE)
    if not path.is_file():
        raise LatentQAError(f"{folder} has no {SPEC_FILE}: pass a decoder folder")
    if not math.isfinite(threshold):
        raise LatentQAError(f"read_threshold must be a finite number, got {threshold}")
    data = read_json(path, "decoder spec")
    data.setdefault("extra", {})["read_threshold"] = float(threshold)
    write_json_atomic(path, data)
    return path


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message, or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def preflight_decoder(
    target: str,
    decoder: str | Path | None,
    *,
    layers: Sequence[int] | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> DecoderSpec:
    """Check a decoder folder, its target and layers to read, without loading either.

    Args:
        target: The target's model spec.
        decoder: The decoder folder (``None``: the shipped one).
        layers: Read layers asked for instead of the decoder's own.
        device: Device name.
        dtype: Dtype name.

    Returns:
        The decoder's spec (``latentqa.json``).

    Raises:
        LatentQAError: Bad device or dtype, a missing or malformed decoder folder, a
            target that is missing or of another shape than the decoder's, or a layer
            out of range.
    """
    from latentqa.decoder.folder import open_decoder_folder

    check_device_dtype(device, dtype)
    folder, spec = open_decoder_folder(str(target), decoder)
    shape = model_shape(str(target))
    trained = (spec.n_layers, spec.hidden_size)
    if shape is not None and spec.layers_path is None and shape != trained:
        raise LatentQAError(
            f"decoder {folder} was trained on {spec.target!r} ({spec.n_layers} layers, hidden "
            f"size {spec.hidden_size}) but {target!r} has {shape[0]} layers, hidden size "
            f"{shape[1]}: pass the matching target"
        )
    check_layers(layers, spec.n_layers, "read layer")
    return spec
