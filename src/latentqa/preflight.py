"""Cheap checks of a command's inputs, run before any model loads.

Loading a model takes seconds to minutes, so a mistyped path, a layer the model does
not have or a missing checkpoint must fail before it, in one line. Everything here
reads small files only: folders' existence, JSON files, a model's config
(``AutoConfig`` from a local folder or the local hub cache) or a GGUF file's metadata
header, never weights. Where a check cannot be made cheaply (a hub id that is not
cached, custom model code, ``layers_path``), it is left to the load, as before.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from latentqa.errors import LatentQAError

if TYPE_CHECKING:
    from latentqa.decoder import DecoderSpec
    from latentqa.train.config import TrainConfig

__all__ = [
    "check_layers",
    "check_output_folder",
    "check_questions",
    "gguf_shape",
    "model_shape",
    "preflight_decoder",
    "preflight_read",
    "preflight_train",
]


def check_questions(questions: str | Sequence[str]) -> list[str]:
    """The questions as a list, refusing none or an empty one.

    Raises:
        LatentQAError: No question, or one that is not a non-empty string.
    """
    items = [questions] if isinstance(questions, str) else list(questions)
    if not items or not all(isinstance(q, str) and q.strip() for q in items):
        raise LatentQAError(f"ask at least one question, as non-empty strings; got {items!r:.80}")
    return items


def check_layers(layers: Sequence[int] | None, n_layers: int | None, what: str) -> None:
    """Refuse layers outside a model of ``n_layers`` blocks (no check when it is unknown).

    Raises:
        LatentQAError: A layer is out of range (see :func:`latentqa.layers.check_layer_index`).
    """
    from latentqa.layers import check_layer_index

    if n_layers is not None:
        for layer in layers or ():
            check_layer_index(layer, n_layers, what)


def check_output_folder(path: str | Path | None, flag: str) -> None:
    """Refuse an output folder that exists as a file (it would fail after the work is done).

    Raises:
        LatentQAError: ``path`` exists and is not a folder.
    """
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise LatentQAError(f"{flag} {path} is a file, not a folder: choose a folder")


def _check_folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise LatentQAError(f"{what} {folder} does not exist or is not a folder")
    return folder


def _check_device_dtype(device: str, dtype: str) -> None:
    from latentqa.models import resolve_device, resolve_dtype

    resolve_device(device)
    if str(dtype).strip().lower() != "auto":
        resolve_dtype(dtype)


# GGUF metadata value types (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
# fixed-size scalars by struct format, and the two variable-size types.
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _unpack(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _gguf_value(handle: BinaryIO, kind: int) -> Any:
    """Read one metadata value; arrays (the tokenizer's vocabulary) are skipped."""
    if kind in _GGUF_SCALARS:
        return _unpack(handle, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return handle.read(_unpack(handle, "<Q")).decode("utf-8")
    if kind == _GGUF_ARRAY:
        item, count = _unpack(handle, "<I"), _unpack(handle, "<Q")
        if item in _GGUF_SCALARS:
            handle.seek(struct.calcsize(_GGUF_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                _gguf_value(handle, item)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")


def gguf_shape(path: str | Path) -> tuple[int, int] | None:
    """``(decoder blocks, hidden size)`` from a GGUF file's metadata header.

    Only the header is read (the ``gguf`` package's reader also maps every tensor,
    which takes seconds). ``None`` when the file is not a GGUF v2+ file or lacks the
    ``<architecture>.block_count`` / ``embedding_length`` keys.
    """
    values: dict[str, Any] = {}
    try:
        with Path(path).open("rb") as handle:
            if handle.read(4) != b"GGUF" or _unpack(handle, "<I") < 2:
                return None
            _unpack(handle, "<Q")  # tensor count
            for _ in range(_unpack(handle, "<Q")):
                key = handle.read(_unpack(handle, "<Q")).decode("utf-8")
                values[key] = _gguf_value(handle, _unpack(handle, "<I"))
                arch = values.get("general.architecture")
                blocks = values.get(f"{arch}.block_count")
                width = values.get(f"{arch}.embedding_length")
                if isinstance(blocks, int) and isinstance(width, int):
                    return blocks, width
    except (OSError, ValueError, struct.error):
        return None  # unreadable here: the load reports it properly
    return None


def _config_shape(source: str, trust_remote_code: bool) -> tuple[int, int] | None:
    from transformers import AutoConfig

    try:
        # local_files_only: a check never reaches the network (a hub id is looked up in
        # the local cache only).
        config = AutoConfig.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception:  # any failure here is reported better by the load itself
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    blocks = getattr(text, "num_hidden_layers", None)
    width = getattr(text, "hidden_size", None)
    if isinstance(blocks, int) and isinstance(width, int) and blocks > 0:
        return blocks, width
    return None


def model_shape(target: str, *, trust_remote_code: bool = False) -> tuple[int, int] | None:
    """``(decoder blocks, hidden size)`` of ``target`` from its config, without its weights.

    Args:
        target: A model spec as :func:`latentqa.models.load_model` takes it.
        trust_remote_code: Whether a folder's custom config code may run.

    Returns:
        The shape, or ``None`` when it cannot be read cheaply (a hub id not in the local
        cache, a config transformers does not know); the load checks it then.

    Raises:
        LatentQAError: ``target`` names nothing loadable (a missing path, a folder
            without config.json, a file that is not .gguf).
    """
    # The same resolution and cache lookup as load_model, so both see the same model.
    from latentqa.gguf_cache import _gguf_cache_dir, _is_complete
    from latentqa.models import _classify_spec

    kind, where = _classify_spec(target)
    if kind == "gguf":
        cached = _gguf_cache_dir(Path(where))
        if _is_complete(cached):
            return _config_shape(str(cached), trust_remote_code)
        return gguf_shape(where)
    return _config_shape(str(where), trust_remote_code)


def preflight_train(config: TrainConfig, *, resume: bool = False) -> None:
    """Everything ``latentqa train`` can check before loading the target.

    Options' values, device and dtype, the data folders and files (parsed, kinds
    included), ``--resume`` having a checkpoint, the output folder, and read / write
    layers against the target's config.

    Raises:
        LatentQAError: The first problem found, in one line.
    """
    from latentqa.data.format import load_latentqa
    from latentqa.train.checkpoint import latest_checkpoint
    from latentqa.train.prepare import data_folders

    config.validate()
    _check_device_dtype(config.device, config.dtype)
    check_output_folder(config.out, "--out")
    check_output_folder(config.cache_dir, "--cache-dir")
    checkpoints = Path(config.out) / "checkpoints"
    if resume and latest_checkpoint(checkpoints) is None:
        raise LatentQAError(
            f"--resume: no checkpoint in {checkpoints}; run without --resume to start afresh"
        )
    train_folder, eval_folder = data_folders(config)
    load_latentqa(train_folder, config.kinds)
    for folder in config.extra_data or []:
        load_latentqa(_check_folder(folder, "--extra-data folder"), config.kinds, require_qa=False)
    if eval_folder is not None:
        load_latentqa(_check_folder(eval_folder, "--eval-data folder"), config.kinds)
    shape = model_shape(config.target, trust_remote_code=config.trust_remote_code)
    if shape is not None and config.layers_path is None:
        check_layers(config.read_layers, shape[0], "read layer")
        check_layers([config.write_layer], shape[0], "write layer")


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
    from latentqa.reader import open_decoder_folder

    _check_device_dtype(device, dtype)
    folder, spec = open_decoder_folder(str(target), decoder)
    layers_path = spec.train_config.get("layers_path")
    shape = model_shape(str(target))
    if shape is not None and layers_path is None and shape != (spec.n_layers, spec.hidden_size):
        raise LatentQAError(
            f"decoder {folder} was trained on {spec.target!r} ({spec.n_layers} layers, hidden "
            f"size {spec.hidden_size}) but {target!r} has {shape[0]} layers, hidden size "
            f"{shape[1]}: pass the matching target"
        )
    check_layers(layers, spec.n_layers, "read layer")
    return spec


def preflight_read(
    dialogs: Sequence[Any],
    questions: Sequence[str],
    *,
    target: str,
    decoder: str | Path | None,
    layer: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    device: str = "auto",
    dtype: str = "float32",
) -> DecoderSpec:
    """Everything ``latentqa read`` can check before loading the target and decoder.

    Returns:
        The decoder's spec.

    Raises:
        LatentQAError: A malformed dialog (roles, no user turn), no or an empty question,
            a bad number, or what :func:`preflight_decoder` refuses.
    """
    from latentqa.chat import validate_dialog

    for index, dialog in enumerate(dialogs):
        try:
            validate_dialog(dialog)
        except LatentQAError as error:
            where = f"dialog {index + 1}: " if len(dialogs) > 1 else ""
            raise LatentQAError(f"{where}{error}") from None
    check_questions(questions)
    if max_new_tokens < 1:
        raise LatentQAError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise LatentQAError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    layers = None if layer is None else [layer]
    return preflight_decoder(target, decoder, layers=layers, device=device, dtype=dtype)
