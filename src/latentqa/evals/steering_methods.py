"""Shared pieces of the control evaluations (sentiment, CrowS-Pairs, auditing)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from latentqa.errors import LatentQAError
from latentqa.steer.config import SteerConfig
from latentqa.steer.model import SteerableModel
from latentqa.steer.qa_pairs import QAPair
from latentqa.steer.trainer import train_steering
from latentqa.steer.vector import add_vector

T = TypeVar("T")
Log = Callable[[str], None]


def split_items(items: Sequence[T], sizes: Sequence[int | None], seed: int) -> list[list[T]]:
    """Disjoint random slices of ``items`` of the given sizes (``None``: all that remain).

    Raises:
        LatentQAError: There are fewer items than the sizes ask for.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    needed = sum(size for size in sizes if size is not None)
    if needed > len(items) or any(size is not None and size < 1 for size in sizes):
        raise LatentQAError(
            f"asked for {needed} items in slices of {list(sizes)} but only {len(items)} exist"
        )
    slices, cursor = [], 0
    for size in sizes:
        end = len(order) if size is None else cursor + size
        slices.append([items[i] for i in sorted(order[cursor:end])])
        cursor = end
    return slices


def eval_steer_config(options: Any, name: str) -> SteerConfig:
    """A :class:`SteerConfig` from an evaluation config's shared steering fields."""
    out = str(Path(options.out) / name) if options.out else name
    return SteerConfig(
        out=out,
        target=options.target,
        decoder=options.decoder,
        layers=options.layers,
        read_layers=options.read_layers,
        read=getattr(options, "read", "auto"),
        steps=options.steps,
        lr=options.lr,
        batch_size=options.batch_size,
        lora_r=options.lora_r,
        lora_alpha=2 * options.lora_r,
        seed=options.seed,
        device=options.device,
        dtype=options.dtype,
    )


def run_lit(
    steerable: SteerableModel,
    pairs: Sequence[QAPair],
    prompts: Sequence[str],
    options: Any,
    name: str,
    *,
    progress: bool = False,
    log: Log | None = None,
    replies: Sequence[str] | None = None,
) -> dict[str, float]:
    """Train a fresh steering adapter for one control; save it under ``options.out/name``.

    ``replies`` (one per prompt) are what the decoder reads when steering reads replies.

    Returns:
        ``{"initial_loss", "final_loss"}`` of the decoder's control loss.
    """
    config = eval_steer_config(options, name)
    if log:
        log(f"LIT steering '{name}': {config.steps} steps on {len(prompts)} prompts")
    records = train_steering(steerable, pairs, prompts, config, progress=progress, replies=replies)
    if options.out:
        steerable.save_steering(config.out)
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (Path(config.out) / "metrics.jsonl").write_text(lines)
    return {"initial_loss": records[0]["loss"], "final_loss": records[-1]["loss"]}


def load_steerable(options: Any) -> SteerableModel:
    """Load the target with its decoder adapter from an evaluation config."""
    return SteerableModel.load(
        options.target, options.decoder, device=options.device, dtype=options.dtype
    )  # decoder None: steering_decoder's choice


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean (NaN when empty)."""
    return sum(values) / len(values) if values else float("nan")


@contextmanager
def vector_steered(
    steerable: SteerableModel, layer: int, vector: torch.Tensor, coefficient: float
) -> Iterator[nn.Module]:
    """The unsteered target with ``coefficient * vector`` added at block ``layer``."""
    with (
        steerable.unsteered() as model,
        add_vector(model, layer, vector, coefficient, blocks=steerable.blocks),
    ):
        yield model


def vector_settings(
    layers: Sequence[int], coefficients: Sequence[float]
) -> list[tuple[int, float]]:
    """Every (layer, coefficient) pair, mildest coefficient first."""
    return sorted(
        ((layer, float(c)) for layer in layers for c in coefficients),
        key=lambda setting: (abs(setting[1]), setting[0]),
    )
