"""The output folder of a LIT run: whether it may be written, resumed or replaced.

``latentqa train --out DIR`` writes into DIR as it goes (metrics, checkpoints), so
the folder is judged before the model loads: a missing or empty folder, or one
holding only an activation cache, starts a run; a folder with a checkpoint needs
``--resume`` (continue) or ``--force`` (start over); any other non-empty folder (a
finished decoder whose checkpoints were deleted, the user's own files) needs
``--force``. Nothing is written or removed before training is ready to start, and
the final adapter and ``latentqa.json`` replace the old ones file by file with
``os.replace``, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.decoder.folder import SPEC_FILE, DecoderSpec
from latentqa.errors import LatentQAError
from latentqa.outdir import is_empty, replace_entry
from latentqa.train.checkpoint import (
    Checkpoint,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temps,
)
from latentqa.typed_config import config_to_dict

if TYPE_CHECKING:
    from latentqa.train.config import TrainConfig
    from latentqa.train.prepare import PreparedData

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
_RESTARTABLE = {"activation-cache", CHECKPOINTS}
"""Entries a fresh run may find: a cache keyed by its contents, checkpoints without any."""
_STAGING = ".decoder.tmp"


def check_flags(*, resume: bool, force: bool) -> None:
    """``--resume`` and ``--force`` ask for opposite things."""
    if resume and force:
        raise LatentQAError("--resume continues the run in --out, --force replaces it: pass one")


def open_run(out: Path, fingerprint: str, *, resume: bool, force: bool) -> Checkpoint | None:
    """Judge ``out`` before anything loads; the checkpoint to resume from, if any.

    Args:
        out: The run's output folder.
        fingerprint: :func:`latentqa.train.prepare.config_fingerprint` of this run.
        resume: Continue the run in ``out`` from its latest checkpoint.
        force: Start over in a non-empty ``out`` (its checkpoints and metrics are
            replaced once training starts; other files stay unless the decoder
            overwrites them).

    Returns:
        The loaded checkpoint with ``resume``, else ``None``.

    Raises:
        LatentQAError: Both flags; ``out`` is a file; ``--resume`` without a readable
            checkpoint of the same options, or with a damaged metrics.jsonl; a
            non-empty ``out`` without either flag.
    """
    checkpoints = out / CHECKPOINTS
    check_flags(resume=resume, force=force)
    if out.exists() and not out.is_dir():
        raise LatentQAError(f"--out {out} is a file; name a folder")
    if resume:
        if checkpoints.is_dir():
            remove_stale_temps(checkpoints)
        found = latest_checkpoint(checkpoints)
        if found is None:
            raise LatentQAError(
                f"--resume: no checkpoint in {checkpoints}; run without --resume to start afresh"
            )
        checkpoint = load_checkpoint(found)
        if checkpoint.state.config_fingerprint != fingerprint:
            raise LatentQAError(
                f"--resume: the options differ from the run in {out} (data, model, layers, "
                "LoRA or batch); use the same options or a new --out"
            )
        read_metrics(out / METRICS)  # a damaged line fails now, not after the load
        return checkpoint
    if force or is_empty(out):
        return None
    found = latest_checkpoint(checkpoints)
    if found is not None:
        raise LatentQAError(
            f"--out {out} already holds a run ({found.name}); pass --resume to continue it, "
            "or --force to start over (its checkpoints and metrics are replaced)"
        )
    names = {p.name for p in out.iterdir() if not p.name.startswith(_STAGING)}
    foreign = sorted(names - _RESTARTABLE)
    if checkpoints.is_dir() and (checkpoint_dirs(checkpoints) or (checkpoints / "latest").exists()):
        foreign.append(f"{CHECKPOINTS}/")
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise LatentQAError(
            f"--out {out} is not empty ({shown}) and holds no run to resume; choose a new "
            "folder, or pass --force to write the decoder, metrics and checkpoints there"
        )
    return None


def start_writing(out: Path, *, resume_step: int | None, force: bool) -> None:
    """Prepare ``out`` once training is ready to start (main process only).

    A resumed run drops the metric lines logged after its checkpoint; a fresh run
    starts an empty log; ``force`` also removes the checkpoints of the run it replaces
    (they would mix with the new ones).
    """
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob(f"{_STAGING}*"):
        shutil.rmtree(leftover, ignore_errors=True)  # a final write cut short by a kill
    if force and (out / CHECKPOINTS).is_dir():
        shutil.rmtree(out / CHECKPOINTS)
    metrics = out / METRICS
    if resume_step is not None:
        kept = [line for step, line in read_metrics(metrics) if step <= resume_step]
    elif metrics.exists():
        kept = []
    else:
        return
    tmp = metrics.with_name(f".{METRICS}.tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, metrics)


def read_metrics(path: Path) -> list[tuple[int, str]]:
    """``(step, line)`` of each record in a run's metrics.jsonl (none when it is missing).

    A last line without its newline is what a kill in the middle of a write leaves:
    it is dropped. Any other line must be a JSON object with an integer ``step``.

    Raises:
        LatentQAError: The file is unreadable or a line is not a metrics record.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise LatentQAError(f"cannot read {path}: {error.strerror or error}") from None
    lines = data.split(b"\n")
    lines.pop()  # empty after the final newline, or a torn last line
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
            step = record.get("step") if isinstance(record, dict) else None
        except ValueError:
            step = None
        if not isinstance(step, int) or isinstance(step, bool):
            raise LatentQAError(
                f"{path} line {number} is not a metrics record ({raw[:40]!r}); "
                "delete that line to resume"
            )
        records.append((step, line))
    return records


def write_atomically(out: Path, write: Callable[[Path], None], last: str) -> None:
    """Let ``write`` fill a staging folder in ``out``, then move each entry into ``out``.

    Every file is replaced whole (``os.replace``); ``last`` (``latentqa.json``, which
    marks a decoder folder) moves after the adapter it describes.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=out))
    try:
        write(staging)
        for entry in sorted(staging.iterdir(), key=lambda p: (p.name == last, p.name)):
            replace_entry(entry, out / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_decoder(
    decoder: Any,
    config: TrainConfig,
    read_layers: list[int],
    n_layers: int,
    data: PreparedData,
    metrics: dict[str, float],
    stats: tuple[list[float], list[float]] | None = None,
    projector: Any = None,
) -> None:
    """Save the adapter (safetensors), the projector if any and latentqa.json into
    ``config.out``.

    Each file is replaced whole (see :func:`write_atomically`).

    Args:
        decoder: The trained peft model.
        config: The run's options (recorded in latentqa.json).
        read_layers: The target blocks read.
        n_layers: The target's number of blocks.
        data: The prepared data (its counts are recorded).
        metrics: The final held-out losses.
        stats: Standardization mean and std, if the run standardized.
        projector: The trained :class:`~latentqa.decoder.projector.Projector`, if any
            (saved as ``projector.safetensors``).
    """
    hidden = decoder.get_base_model().config.hidden_size
    spec = DecoderSpec(
        target=config.target,
        read_layers=read_layers,
        write_layer=config.write_layer,
        mode=config.mode,
        max_read_tokens=config.max_read_tokens,
        pool=config.read_pool,
        vector_mean=stats[0] if stats else None,
        vector_std=stats[1] if stats else None,
        projector=config.projector,
        prompt_order=config.prompt_order,
        lora_from=config.lora_from,
        read_contrast=config.read_contrast,
        hidden_size=hidden,
        n_layers=n_layers,
        extra={
            "train_config": config_to_dict(config),
            # as given they are relative to the training's folder; these are absolute
            "extra_data_paths": [str(Path(f).resolve()) for f in config.extra_data or []],
            "n_train_examples": len(data.train),
            "n_train_labels": data.n_train_labels,
            "task_counts": data.task_counts,
            "n_dropped_lookalikes": data.n_dropped_lookalikes,
            "reads": data.reads,
            "n_eval_labels": data.n_eval_labels,
            "final_metrics": metrics,
        },
    )

    def write(folder: Path) -> None:
        decoder.save_pretrained(folder, safe_serialization=True)
        if projector is not None:
            projector.save(folder)
        spec.save(folder)

    write_atomically(Path(config.out), write, last=SPEC_FILE)
