"""Devices and dtypes by name: ``auto`` picks CUDA over the CPU, and bfloat16 where it is
at least as fast as float32 on the device the weights go to."""

from __future__ import annotations

import functools
import time

import torch

from latentqa.errors import LatentQAError

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a ``torch.device``, checking that it is usable.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), or any torch device name
            such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``, or a ``torch.device``.

    Returns:
        The resolved device.

    Raises:
        LatentQAError: The name is not a device, or names an accelerator this machine lacks.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as error:
        raise LatentQAError(
            f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise LatentQAError(
                f"device {str(resolved)!r} requested but CUDA is not available here; "
                "use --device cpu or 'auto'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise LatentQAError(
                f"device {str(resolved)!r} requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    return resolved


def resolve_dtype(
    dtype: str | torch.dtype = "float32", device: str | torch.device = "auto"
) -> torch.dtype:
    """Turn a dtype name into a floating-point ``torch.dtype``.

    Args:
        dtype: ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``,
            ``"float16"``/``"fp16"``/``"half"`` (case-insensitive, an optional
            ``"torch."`` prefix is allowed), ``"auto"`` (:func:`auto_dtype` for
            ``device``), or a floating-point ``torch.dtype``.
        device: The device the weights go to (for ``"auto"``; see :func:`resolve_device`).

    Returns:
        The resolved dtype.

    Raises:
        LatentQAError: The name is unknown or the dtype is not floating point.
    """
    choices = "float32 (fp32), bfloat16 (bf16), float16 (fp16), auto"
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise LatentQAError(f"dtype {dtype} is not floating point; choose {choices}")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key == "auto":
        return auto_dtype(resolve_device(device))
    if key not in _DTYPES:
        raise LatentQAError(f"unknown dtype {dtype!r}; choose {choices}")
    return _DTYPES[key]


def auto_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where ``device`` runs it at least as fast as float32, else float32.

    CUDA: bfloat16 where the device supports it. CPU: bfloat16 where a short matmul
    measurement (:func:`cpu_bfloat16_is_fast`, once per process) finds it at least as
    fast; CPUs differ widely (with AMX or AVX-512 bf16 instructions and a recent torch,
    several times faster; without, much slower). Anything else: float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bfloat16_is_fast() else torch.float32
    return torch.float32


@functools.cache
def cpu_bfloat16_is_fast(size: int = 512, repeats: int = 5) -> bool:
    """Whether a ``size`` x ``size`` matmul runs at least as fast in bfloat16 as in float32
    on this CPU, with torch's current threads (best of ``repeats``; about 0.05 s on a
    2-core machine). Cached: one measurement per process."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def best(dtype: torch.dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        torch.mm(x, y)  # warm-up: kernel selection, packing buffers
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        return best(torch.bfloat16) <= best(torch.float32)
    except RuntimeError:  # no bfloat16 matmul on this build
        return False


def check_device_dtype(device: str, dtype: str) -> None:
    """Raise :class:`LatentQAError` for a bad device or dtype name (``auto`` is not
    measured here)."""
    resolve_device(device)
    if str(dtype).strip().lower() != "auto":
        resolve_dtype(dtype)
