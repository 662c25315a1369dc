"""``latentqa eval all``: options and the command (the suite is in :mod:`latentqa.evals.all`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL


@dataclasses.dataclass
class EvalAllConfig:
    """Options of ``latentqa eval all``."""

    out: str
    """report folder"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str | None = None
    """default decoder folder or shipped:NAME (default: shipped)"""
    task_decoder: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "TASK=DIR"}
    )
    """decoder for one task, e.g. relations=runs/rel (repeatable; for the embedded target,
    relations reads with shipped:relations unless given)"""
    data: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "TASK=DIR"}
    )
    """data folder for one task, e.g. system-prompt=data/ (repeatable)"""
    tasks: list[str] | None = dataclasses.field(default=None, metadata={"metavar": "TASKS"})
    """only these evaluations"""
    layers: list[int] | None = dataclasses.field(default=None, metadata={"metavar": "LAYERS"})
    """also sweep these layers"""
    n: int | None = None
    """item cap for each evaluation"""
    seed: int = 0
    """random seed"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def add_all_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval all`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "all",
        help="run every available evaluation; write report.md and results.json",
        description="Run every evaluation that exists (missing ones are listed as skipped) "
        "and write OUT/report.md with all tables and plots and OUT/results.json.",
    )
    add_config_arguments(p, EvalAllConfig)
    p.add_argument("--json", action="store_true", help="print results.json as one line last")
    p.set_defaults(func=run_all_command)


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in items]
    if any(len(pair) != 2 or not all(pair) for pair in pairs):
        raise LatentQAError(f"{flag} takes TASK=DIR, e.g. relations=runs/rel")
    return dict(pairs)


def run_all_command(args: argparse.Namespace) -> int:
    """Run ``latentqa eval all``; exit status 1 when an evaluation failed."""
    from latentqa.evals.all import SuiteContext, run_suite
    from latentqa.layers import check_layers
    from latentqa.models import model_shape, resolve_device
    from latentqa.outdir import check_output_folder

    config = config_from_args(EvalAllConfig, args)
    out = Path(config.out)
    # Before any model loads: a bad --layers would otherwise fail after each main evaluation.
    resolve_device(config.device)
    check_output_folder(out, "--out")
    shape = model_shape(config.target)
    check_layers(config.layers, shape[0] if shape else None, "read layer")
    ctx = SuiteContext(
        out=out,
        target=config.target,
        decoder=config.decoder,
        decoders=_pairs(config.task_decoder, "--task-decoder"),
        data=_pairs(config.data, "--data"),
        device=config.device,
        n=config.n,
        seed=config.seed,
        layers=config.layers,
    )
    suite = run_suite(ctx, config.tasks)
    ran, skipped = ", ".join(suite["tasks"]) or "none", ", ".join(suite["skipped"]) or "none"
    print(f"wrote {out / 'report.md'} and results.json (ran: {ran}; skipped: {skipped})")
    if args.json:
        print(json.dumps(suite, default=str))
    return 1 if suite["failed"] else 0
