"""Turn a :class:`TrainConfig` into models, examples and evaluation items."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from latentqa.chat import EncodedDialog, encode_dialog
from latentqa.configs import config_to_dict
from latentqa.data.format import LatentQADataset, load_latentqa
from latentqa.data.relations import subject_span
from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index, find_decoder_layers
from latentqa.train.config import TrainConfig
from latentqa.train.evaluate import EvalItem

# Options whose change makes a checkpoint meaningless to resume from.
_FINGERPRINT_KEYS = (
    "data", "target", "kinds", "read_layers", "write_layer", "mode", "max_read_tokens",
    "lora_r", "lora_alpha", "lora_targets", "batch_size", "grad_accum", "seed", "max_examples",
)  # fmt: skip


def data_folders(config: TrainConfig) -> tuple[Path, Path | None]:
    """Training folder and held-out folder (``train/`` and ``heldout/`` when present)."""
    root = Path(config.data)
    if not root.exists():
        raise LatentQAError(
            f"data folder {root} does not exist; build one with `latentqa data build`"
        )
    train = root / "train" if (root / "train").is_dir() else root
    if config.eval_data is not None:
        return train, Path(config.eval_data)
    heldout = root / "heldout"
    return train, heldout if heldout.is_dir() else None


def resolve_read_layers(config: TrainConfig, n_layers: int) -> list[int]:
    """Default read layer: half depth (the paper read 15 of 32)."""
    layers = config.read_layers if config.read_layers is not None else [n_layers // 2]
    return [check_layer_index(layer, n_layers, "read layer") for layer in layers]


def config_fingerprint(config: TrainConfig) -> str:
    values = config_to_dict(config)
    subset = {key: values[key] for key in _FINGERPRINT_KEYS}
    return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PreparedData:
    """Encoded dialogs and the examples / evaluation items that refer to them."""

    dialogs: list[EncodedDialog]
    """Every distinct dialog, training ones first."""
    train: list[tuple[int, str, str]]
    """Training examples: (dialog index, question, answer)."""
    eval_items: list[EvalItem]
    """Fixed held-out sample."""
    n_train_labels: int
    n_eval_labels: int


def _encode_all(
    dataset: LatentQADataset,
    tokenizer: PreTrainedTokenizerBase,
    dialogs: list[EncodedDialog],
    index_of: dict[tuple[str, str], int],
) -> list[tuple[int, str, str, str]]:
    examples = []
    for example in dataset.examples():
        behavior = example.behavior
        key = (behavior.kind, json.dumps(behavior.dialog()), behavior.read_text)
        if key not in index_of:
            index_of[key] = len(dialogs)
            if behavior.read_text:  # read only this text's tokens (e.g. a relation's subject)
                encoded = subject_span(tokenizer, behavior.dialog(), behavior.read_text)
            else:
                encoded = encode_dialog(tokenizer, behavior.dialog(), behavior.n_masked_messages)
            dialogs.append(encoded)
        examples.append((index_of[key], behavior.label, example.question, example.answer))
    return examples


def prepare_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, encode and sample the training and held-out data."""
    train_folder, eval_folder = data_folders(config)
    train_set = load_latentqa(train_folder, config.kinds)
    dialogs: list[EncodedDialog] = []
    index_of: dict[tuple[str, str], int] = {}
    train = _encode_all(train_set, tokenizer, dialogs, index_of)
    if not train:
        raise LatentQAError(f"no training examples in {train_folder}")
    generator = torch.Generator().manual_seed(config.seed)
    if config.max_examples is not None and config.max_examples < len(train):
        keep = torch.randperm(len(train), generator=generator)[: config.max_examples]
        train = [train[i] for i in sorted(keep.tolist())]
    eval_items: list[EvalItem] = []
    n_eval_labels = 0
    if eval_folder is not None:
        eval_set = load_latentqa(eval_folder, config.kinds)
        overlap = set(eval_set.labels) & set(train_set.labels)
        if overlap:
            raise LatentQAError(
                f"{len(overlap)} held-out labels also appear in training data "
                f"(e.g. {sorted(overlap)[0]!r}): the evaluation would not be held out"
            )
        held = _encode_all(eval_set, tokenizer, dialogs, index_of)
        pick = torch.randperm(len(held), generator=generator)[: config.eval_examples].tolist()
        eval_items = [EvalItem(held[i][0], held[i][1], held[i][2], held[i][3]) for i in pick]
        n_eval_labels = len(eval_set.labels)
    return PreparedData(
        dialogs=dialogs,
        train=[(d, q, a) for d, _, q, a in train],
        eval_items=eval_items,
        n_train_labels=len(train_set.labels),
        n_eval_labels=n_eval_labels,
    )


def auto_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware runs it faster than float32, else float32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        # avx512_bf16 alone runs bf16 matmuls at about half the float32 speed (measured:
        # 82 vs 160 GFLOP/s); only AMX tiles make bf16 the faster choice on a CPU.
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        try:
            return torch.bfloat16 if amx is not None and amx() else torch.float32
        except RuntimeError:
            return torch.float32
    return torch.float32


def add_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Wrap ``model`` with trainable float32 LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)
    peft_model = get_peft_model(model, lora)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return peft_model


def n_decoder_layers(model: nn.Module, layers_path: str | None) -> int:
    return len(find_decoder_layers(model, layers_path))
