"""``latentqa eval all``: options and the command (the suite is in :mod:`latentqa.evals.all`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL


def add_all_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval all`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "all",
        help="run every available evaluation; write report.md and results.json",
        description="Run every evaluation that exists (missing ones are listed as skipped) "
        "and write OUT/report.md with all tables and plots and OUT/results.json.",
    )
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--target", default=EMBEDDED_MODEL, help="target model (default %(default)s)")
    p.add_argument("--decoder", default=None, help="default decoder folder (default: shipped)")
    p.add_argument(
        "--task-decoder",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="decoder for one task, e.g. relations=runs/rel (repeatable)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="TASK=DIR",
        help="data folder for one task, e.g. system-prompt=data/ (repeatable)",
    )
    p.add_argument("--tasks", nargs="+", default=None, help="only these evaluations")
    p.add_argument("--layers", type=int, nargs="+", default=None, help="also sweep these layers")
    p.add_argument("--n", type=int, default=None, help="item cap for each evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
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
    from latentqa.models import resolve_device
    from latentqa.preflight import check_layers, check_output_folder, model_shape

    # Before any model loads: a bad --layers would otherwise fail after each main evaluation.
    resolve_device(args.device)
    check_output_folder(args.out, "--out")
    shape = model_shape(args.target)
    check_layers(args.layers, shape[0] if shape else None, "read layer")
    ctx = SuiteContext(
        out=args.out,
        target=args.target,
        decoder=args.decoder,
        decoders=_pairs(args.task_decoder, "--task-decoder"),
        data=_pairs(args.data, "--data"),
        device=args.device,
        n=args.n,
        seed=args.seed,
        layers=args.layers,
    )
    suite = run_suite(ctx, args.tasks)
    ran, skipped = ", ".join(suite["tasks"]) or "none", ", ".join(suite["skipped"]) or "none"
    print(f"wrote {args.out / 'report.md'} and results.json (ran: {ran}; skipped: {skipped})")
    if args.json:
        print(json.dumps(suite, default=str))
    return 1 if suite["failed"] else 0
