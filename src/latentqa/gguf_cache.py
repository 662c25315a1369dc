"""The float32 cache of dequantized GGUF models: where it lives and how it is written.

GGUF files are dequantized by transformers on every load, which takes tens of seconds.
:mod:`latentqa.models` does that once per file and keeps the weights here as an
ordinary transformers folder, so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Bump when the cached folder layout changes, so old caches are ignored rather than misread.
_CACHE_FORMAT = 1
# Written last into a cache folder; its presence marks the folder as complete.
_CACHE_MARKER = "latentqa_cache.json"
# Temporary folders older than this were left by a killed writer and can be removed.
_STALE_TMP_SECONDS = 3600


def cache_root() -> pathlib.Path:
    """Folder where latentqa keeps dequantized models.

    Returns:
        ``$LATENTQA_CACHE`` if set, else ``$XDG_CACHE_HOME/latentqa``, else
        ``~/.cache/latentqa``. The folder is not created here.
    """
    if os.environ.get("LATENTQA_CACHE"):
        return pathlib.Path(os.environ["LATENTQA_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "latentqa"
    return pathlib.Path.home() / ".cache" / "latentqa"


def _gguf_cache_dir(gguf: pathlib.Path) -> pathlib.Path:
    """Cache folder for a GGUF file: readable stem plus a hash of path, size and mtime."""
    resolved = gguf.resolve()
    stat = resolved.stat()
    identity = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|v{_CACHE_FORMAT}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", resolved.stem)[:60]
    return cache_root() / f"{stem}-{digest}"


def _is_complete(folder: pathlib.Path) -> bool:
    return (folder / _CACHE_MARKER).is_file()


def write_gguf_cache(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: pathlib.Path,
    *,
    source: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Atomically write ``model`` and ``tokenizer`` as a plain transformers folder.

    ``save_pretrained`` refuses GGUF-loaded models, so the state dict and a config
    without ``quantization_config`` are written by hand. Everything goes into a
    temporary sibling folder that is renamed into place at the end, so an interrupted
    write never leaves a partial ``folder``. If another process finishes first, its
    folder is kept and ours discarded.

    Args:
        model: The model to save (weights are written in their current dtype).
        tokenizer: Its tokenizer.
        folder: Final cache folder; its parent is created if needed.
        source: Extra facts recorded in the completion marker (e.g. the GGUF path).

    Returns:
        ``folder``, complete.
    """
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(_deduplicated_state_dict(model), str(tmp / "model.safetensors"), {"format": "pt"})
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"format": _CACHE_FORMAT, "created": time.time(), **(source or {})}
        (tmp / _CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            # A concurrent writer renamed its folder into place first: use theirs.
            if not _is_complete(folder):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _deduplicated_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """State dict safe for safetensors: tied copies dropped, other shared storage cloned.

    safetensors refuses tensors that share memory. A tied weight (e.g. ``lm_head``
    tied to ``embed_tokens``) is dropped because transformers re-ties it on load from
    the config; any other sharing is broken by cloning, which is always correct.
    """
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(
        model, "_tied_weights_keys", None
    )
    tied_targets = set(tied or ())
    seen: set[tuple[int, int, torch.dtype]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype)
        if key in seen and name in tied_targets:
            continue
        tensors[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
        seen.add(key)
    return tensors


def _remove_stale_tmp(folder: pathlib.Path) -> None:
    """Delete temporary folders that killed writers left next to ``folder``."""
    now = time.time()
    for leftover in folder.parent.glob(f".{folder.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)


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
