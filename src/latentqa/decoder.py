"""The LIT decoder: its saved description, its inputs, and its answer loss.

The decoder is the target model with LoRA adapters. It reads activation vectors
patched in at placeholder positions (see :mod:`latentqa.layout` and
:mod:`latentqa.patch`) and is trained with cross-entropy on answer tokens only.
A trained decoder is a folder (``latentqa.json`` and the peft adapter files);
:func:`load_decoder` loads one onto its target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.errors import LatentQAError
from latentqa.handle import TargetHandle
from latentqa.layers import find_decoder_layers
from latentqa.layout import DecoderBatch, build_decoder_prompt, collate_prompts
from latentqa.models import EMBEDDED_MODEL, load_model
from latentqa.package_data import package_file
from latentqa.patch import PatchMode, patch_activations
from latentqa.read import pad_token_id, position_ids_for

SPEC_FILE = "latentqa.json"
SPEC_FORMAT = "latentqa-decoder/1"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
SHIPPED_DECODERS = package_file("latentqa", "resources/decoders")


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
    """``none``: one vector per read position; ``mean``: one per read layer (the mean)."""
    vector_mean: list[float] | None = None
    """Per-dimension mean of the training vectors, when the decoder reads them standardized."""
    vector_std: list[float] | None = None
    """Per-dimension standard deviation of the training vectors (with ``vector_mean``)."""
    extra: dict = field(default_factory=dict)
    """Training config, data version and final metrics, for reproducibility."""

    @property
    def train_config(self) -> dict:
        """The ``latentqa train`` options recorded in :attr:`extra` (empty when absent)."""
        config = self.extra.get("train_config")
        return config if isinstance(config, dict) else {}

    def save(self, folder: str | Path) -> None:
        data = {"format": SPEC_FORMAT, **asdict(self)}
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
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except OSError as error:
            raise LatentQAError(f"cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise LatentQAError(f"{path} is not UTF-8: it must be UTF-8 JSON") from None
        except json.JSONDecodeError as error:
            raise LatentQAError(f"{path} is not valid JSON: {error}") from None
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


def flatten_reads(span: torch.Tensor, max_read_tokens: int, pool: str = "none") -> torch.Tensor:
    """``[n_layers, span, d_model]`` -> the decoder's input vectors, last tokens kept.

    ``pool="none"``: ``[n_layers * kept, d_model]``; ``pool="mean"``: ``[n_layers,
    d_model]``, each layer's mean over its kept positions.
    """
    kept = span[:, -max_read_tokens:]
    if pool == "mean":
        return kept.float().mean(1).to(kept.dtype)  # [n_layers, d_model]
    return kept.reshape(-1, kept.shape[-1])


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
) -> tuple[DecoderBatch, torch.Tensor]:
    """Lay out decoder prompts for flattened activation ``vectors`` (one per example).

    Returns the padded batch and all vectors concatenated in placeholder order
    ``[total_placeholders, d_model]``.
    """
    prompts = [
        build_decoder_prompt(tokenizer, len(v), q, None if answers is None else answers[i])
        for i, (v, q) in enumerate(zip(vectors, questions, strict=True))
    ]
    return collate_prompts(prompts, pad_token_id(tokenizer)), torch.cat(list(vectors))


def lm_head_logits(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's LM head on ``hidden`` ``[..., d_model]`` -> logits ``[..., vocab]``.

    Applies the final soft-capping of models that have one (Gemma), as their own
    forward does, so losses computed from a body's hidden states match ``model(...)``.
    The logits keep the head's dtype.
    """
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft capping, part of the model's own forward
        logits = torch.tanh(logits / cap) * cap
    return logits


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside peft / DDP / FSDP wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def answer_token_loss(
    decoder: nn.Module,
    batch: DecoderBatch,
    vectors: torch.Tensor,
    *,
    write_layer: int,
    mode: PatchMode,
    reduction: str = "mean",
    layers_path: str | None = None,
) -> torch.Tensor:
    """Cross-entropy of the answer tokens with ``vectors`` patched in.

    Runs the decoder's transformer body, then the LM head only at the positions
    that predict answer tokens: the answer is a few tokens of a ~100-token input,
    so full-sequence logits would waste most of the head's compute and memory.

    Args:
        decoder: Decoder model (peft-wrapped CausalLM).
        batch: Decoder inputs with a label mask.
        vectors: ``[n_placeholders_total, d_model]`` activations.
        write_layer: Block at whose output to patch.
        mode: ``replace`` or ``add``.
        reduction: ``mean`` (per answer token), ``sum``, or ``none`` (per example sums
            and token counts as a ``[batch, 2]`` tensor).
        layers_path: Override for the decoder block search (the one the activations
            were read with), so the write goes to the same block list.
    """
    causal_lm = unwrap_causal_lm(decoder)
    with patch_activations(
        causal_lm, write_layer, batch.placeholder_mask, vectors, mode, layers_path=layers_path
    ):
        hidden = causal_lm.base_model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_for(batch.attention_mask),
            use_cache=False,
        ).last_hidden_state  # [batch, seq, d_model]
    rows = batch.label_mask.nonzero()[:, 0]  # [n_answer_tokens], each token's example
    n_rows = batch.input_ids.shape[0]
    return answer_losses(
        causal_lm, hidden, batch.input_ids, batch.label_mask, rows, n_rows, reduction
    )


def answer_losses(
    causal_lm: nn.Module,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    label_mask: torch.Tensor,
    owners: torch.Tensor,
    n_owners: int,
    reduction: str,
) -> torch.Tensor:
    """Cross-entropy of the answer tokens from the body's last hidden states.

    The LM head runs only at the positions that predict an answer token (one step
    before it; an answer never starts a row or a packed branch, so the shift stays
    inside its prompt).

    Args:
        causal_lm: The unwrapped CausalLM (for its head).
        hidden: ``[rows, seq, d_model]`` last hidden states.
        input_ids: ``[rows, seq]`` the ids, answers included.
        label_mask: ``[rows, seq]`` True on answer tokens.
        owners: ``[n_answer_tokens]`` the prompt each answer token belongs to, in
            row-major order.
        n_owners: Number of prompts.
        reduction: ``mean``, ``sum`` or ``none`` (per prompt sums and token counts,
            ``[n_owners, 2]``).
    """
    predicts = torch.zeros_like(label_mask)
    predicts[:, :-1] = label_mask[:, 1:]
    logits = lm_head_logits(causal_lm, hidden[predicts]).float()  # [n_answer, vocab]
    targets = input_ids[label_mask]  # [n_answer], same row-major order
    if reduction != "none":
        return F.cross_entropy(logits, targets, reduction=reduction)
    token_losses = F.cross_entropy(logits, targets, reduction="none")
    sums = torch.zeros(n_owners, device=logits.device).index_add_(0, owners, token_losses)
    counts = torch.zeros_like(sums).index_add_(0, owners, torch.ones_like(token_losses))
    return torch.stack([sums, counts], dim=-1)


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
    """The decoder folder (see :func:`decoder_folder`) and its spec, checked for adapters.

    Raises:
        LatentQAError: The folder is missing, has no ``latentqa.json``, or lacks the
            safetensors adapter files.
    """
    folder = decoder_folder(target, decoder)
    if not folder.is_dir():
        raise LatentQAError(f"decoder folder {folder} does not exist")
    spec = DecoderSpec.load(folder)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise LatentQAError(
            f"{folder} lacks {', '.join(missing)}: pass a folder written by `latentqa train` "
            "(adapters are read from safetensors only)"
        )
    return folder, spec


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message, or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_decoder(
    target: str = EMBEDDED_MODEL,
    decoder: str | Path | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    adapter_name: str = "default",
    trainable: str | None = None,
) -> tuple[TargetHandle, DecoderSpec, Path]:
    """Load the target once and attach a trained decoder's adapters to it (frozen).

    Args:
        target: Model spec of the target (see :func:`latentqa.models.load_model`).
        decoder: A folder written by ``latentqa train``; ``None``: the decoder shipped
            for the embedded model.
        device: ``auto``, ``cpu``, ``cuda[:N]``.
        dtype: The frozen weights' dtype.
        adapter_name: The peft name of the decoder's adapter.
        trainable: Passed to the handle (see :attr:`TargetHandle.trainable`).

    Returns:
        The handle (a peft model, with the ``layers_path`` the decoder was trained
        with), the decoder's spec and its folder.

    Raises:
        LatentQAError: Missing or malformed decoder folder, or a decoder trained on
            another target.
    """
    from peft import PeftModel

    folder, spec = open_decoder_folder(str(target), decoder)
    layers_path = spec.train_config.get("layers_path")
    model, tokenizer = load_model(target, device=device, dtype=dtype)
    spec.check_target(model, len(find_decoder_layers(model, layers_path)))
    try:
        peft_model = PeftModel.from_pretrained(
            model, str(folder), adapter_name=adapter_name, is_trainable=False
        )
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise LatentQAError(
            f"could not load the adapter in {folder}: {first_line(error)}"
        ) from error
    handle = TargetHandle.resolve(peft_model, tokenizer, layers_path, trainable=trainable)
    return handle, spec, folder
