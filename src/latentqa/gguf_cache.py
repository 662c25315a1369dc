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
import time
import uuid
from typing import TYPE_CHECKING, Any

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
