"""Atomic training checkpoints: adapter, optimizer, scheduler, RNG and data position.

A checkpoint is a folder ``step-NNNNNNN`` written under a temporary name and
renamed into place, then ``latest`` (a one-line file) is replaced atomically. A
run killed at any instant leaves either the previous checkpoint or the new one,
never half of one; the temporary folders of killed writes are removed at the next
save or resume. Tensors are stored with safetensors / ``torch.load(weights_only=True)``
so loading never unpickles arbitrary objects, and a damaged file is a one-line error.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentqa.errors import LatentQAError
from latentqa.json_files import write_text_atomic

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "optimizer.pt"
TRAINER_FILE = "trainer_state.json"
LATEST = "latest"
PROJECTOR_KEY = "latentqa_projector."
"""Prefix of a projector's tensors among a checkpoint's adapter tensors: saved in the
same file, so the two are written, and restored, together and atomically."""
_STEP = re.compile(r"step-\d{7,}")
_UNREADABLE = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError)
"""What reading a damaged or truncated checkpoint file raises (JSON and UTF-8 errors
are ValueErrors)."""


@dataclass
class TrainerState:
    """Where training stands: enough to continue exactly."""

    step: int
    """Optimizer steps completed (the data position follows from it and the seed)."""
    config_fingerprint: str
    """Hash of the options that must not change across a resume."""


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete what killed checkpoint writes left in ``folder``; the paths removed.

    Only one process of one run writes a checkpoint folder, so at a save or a resume
    every temporary ``.step-*`` folder and ``.latest.tmp*`` file is a leftover.
    """
    removed = []
    for path in sorted(folder.glob(".step-*")) + sorted(folder.glob(f".{LATEST}.tmp*")):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def checkpoint_dirs(folder: Path) -> list[Path]:
    """The finished checkpoint folders ``step-N`` under ``folder``, oldest first."""
    found = [p for p in folder.glob("step-*") if _STEP.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    folder: Path,
    state: TrainerState,
    adapter: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-N`` under ``folder`` atomically; keep the ``keep`` newest.

    Raises:
        LatentQAError: ``keep`` is below 1 (keeping every checkpoint silently could fill
            the disk; the newest is always kept, it is the one ``latest`` names).
    """
    if keep < 1:
        raise LatentQAError(f"keep_checkpoints must be at least 1, got {keep}")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    final = folder / f"step-{state.step:07d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp", dir=folder))
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
    write_text_atomic(folder / LATEST, final.name + "\n")
    # The one just written always stays: ``latest`` names it.
    older = [p for p in checkpoint_dirs(folder) if p != final]
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint named by ``latest``, or ``None`` when there is none.

    A ``latest`` that is unreadable or names anything but a ``step-N`` folder here
    counts as none.
    """
    try:
        name = (folder / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    path = folder / name
    return path if _STEP.fullmatch(name) and (path / TRAINER_FILE).is_file() else None


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    state: TrainerState
    adapter: dict[str, torch.Tensor]
    tensors: dict[str, Any]
    python_rng: list


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder written by :func:`save_checkpoint`.

    Raises:
        LatentQAError: A file is missing, truncated or not what it should be (one line
            naming the file and what to do).
    """
    name = TRAINER_FILE
    try:
        trainer = json.loads((path / TRAINER_FILE).read_text(encoding="utf-8"))
        name = ADAPTER_FILE
        adapter = load_file(str(path / ADAPTER_FILE))
        name = STATE_FILE
        tensors = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        name = TRAINER_FILE
        state = TrainerState(int(trainer["step"]), str(trainer["config_fingerprint"]))
        version, internal, _ = trainer["python_rng"]
        name = STATE_FILE
        if not isinstance(tensors, dict):
            raise ValueError(f"holds a {type(tensors).__name__}, not a dict")
        missing = {"optimizer", "scheduler", "torch_rng", "cuda_rng"} - set(tensors)
        if missing or not isinstance(internal, list) or not isinstance(version, int):
            raise ValueError(f"missing {sorted(missing)}" if missing else "bad RNG state")
    except (*_UNREADABLE, KeyError, TypeError) as error:
        raise LatentQAError(_damaged(path, name, error)) from None
    return Checkpoint(path, state, adapter, tensors, trainer["python_rng"])


def _damaged(path: Path, name: str, error: BaseException) -> str:
    """The one-line message for a damaged checkpoint, with the way out."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = f"{type(error).__name__}: {lines[0][:120]}" if lines else type(error).__name__
    older = [p.name for p in checkpoint_dirs(path.parent) if p != path]
    way_out = (
        f"write an older checkpoint's name ({older[-1]}) into {path.parent / LATEST}"
        if older
        else "start over with --force"
    )
    return f"checkpoint {path} is damaged ({name}: {why}); {way_out}"


def restore_rng(checkpoint: Checkpoint) -> None:
    """Put the RNGs back as they were when the checkpoint was written."""
    torch.set_rng_state(checkpoint.tensors["torch_rng"])
    if checkpoint.tensors["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint.tensors["cuda_rng"])
    version, internal, gauss = checkpoint.python_rng
    random.setstate((version, tuple(internal), gauss))


def projector_state(projector: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """A projector's tensors under :data:`PROJECTOR_KEY`, to save with the adapter's."""
    if projector is None:
        return {}
    return {PROJECTOR_KEY + k: v.detach() for k, v in projector.state_dict().items()}


def resume_from(
    checkpoint: Checkpoint,
    decoder: Any,
    optimizer: Any,
    scheduler: Any,
    projector: torch.nn.Module | None = None,
) -> int:
    """Load the adapter (and projector), optimizer, schedule and random state; return the
    step count.

    Args:
        checkpoint: The checkpoint to continue from.
        decoder: The peft model whose adapter is restored.
        optimizer: The run's optimizer (before accelerate prepares it).
        scheduler: The run's learning-rate scheduler.
        projector: The run's projector, restored exactly from the checkpoint's
            :data:`PROJECTOR_KEY` tensors.

    Raises:
        LatentQAError: The checkpoint does not fit this run (other shapes or options).
    """
    from peft.utils import set_peft_model_state_dict

    adapter = dict(checkpoint.adapter)
    own = {
        k[len(PROJECTOR_KEY) :]: adapter.pop(k)
        for k in list(adapter)
        if k.startswith(PROJECTOR_KEY)
    }
    try:
        if (projector is None) != (not own):
            raise ValueError("a projector in only one of the checkpoint and the run")
        if projector is not None:
            projector.load_state_dict(own)  # strict: every tensor, every shape
        set_peft_model_state_dict(decoder, adapter)
        optimizer.load_state_dict(checkpoint.tensors["optimizer"])
        scheduler.load_state_dict(checkpoint.tensors["scheduler"])
        restore_rng(checkpoint)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        why = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        raise LatentQAError(
            f"checkpoint {checkpoint.path} does not fit this run ({why}); start over with --force"
        ) from None
    return checkpoint.state.step
