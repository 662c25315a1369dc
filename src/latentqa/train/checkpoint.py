"""Atomic training checkpoints: adapter, optimizer, scheduler, RNG and data position.

A checkpoint is a folder ``step-NNNNNNN`` written under a temporary name and
renamed into place, then ``latest`` (a one-line file) is replaced atomically. A
run killed at any instant leaves either the previous checkpoint or the new one,
never half of one. Tensors are stored with safetensors / ``torch.load(weights_only=True)``
so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from latentqa.errors import LatentQAError

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "optimizer.pt"
TRAINER_FILE = "trainer_state.json"
LATEST = "latest"


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly."""

    step: int
    """Optimizer steps completed (the data position follows from it and the seed)."""
    config_fingerprint: str
    """Hash of the options that must not change across a resume."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    folder: Path,
    state: TrainerState,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-N`` under ``folder`` atomically and prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state.step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in adapter.items()}, tmp / ADAPTER_FILE
        )
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / STATE_FILE,
        )
        python_rng = random.getstate()
        trainer = {"step": state.step, "config_fingerprint": state.config_fingerprint}
        trainer["python_rng"] = [python_rng[0], list(python_rng[1]), python_rng[2]]
        (tmp / TRAINER_FILE).write_text(json.dumps(trainer))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _atomic_write_text(folder / LATEST, final.name + "\n")
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.startswith("."))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint named by ``latest``, or ``None`` when there is none."""
    pointer = folder / LATEST
    if not pointer.is_file():
        return None
    path = folder / pointer.read_text().strip()
    return path if (path / TRAINER_FILE).is_file() else None


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    state: TrainerState
    adapter: dict[str, torch.Tensor]
    tensors: dict[str, Any]
    python_rng: list


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint`."""
    try:
        trainer = json.loads((path / TRAINER_FILE).read_text())
        adapter = load_file(str(path / ADAPTER_FILE))
        tensors = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except (OSError, json.JSONDecodeError, RuntimeError) as error:
        raise LatentQAError(
            f"checkpoint {path} is unreadable ({error}); delete it to restart"
        ) from None
    state = TrainerState(trainer["step"], trainer["config_fingerprint"])
    return Checkpoint(path, state, adapter, tensors, trainer["python_rng"])


def restore_rng(checkpoint: Checkpoint) -> None:
    """Put the RNGs back as they were when the checkpoint was written."""
    torch.set_rng_state(checkpoint.tensors["torch_rng"])
    if checkpoint.tensors["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint.tensors["cuda_rng"])
    version, internal, gauss = checkpoint.python_rng
    random.setstate((version, tuple(internal), gauss))
