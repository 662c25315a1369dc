"""``latentqa eval``: evaluations with baselines, as a markdown table or JSON.

One subcommand per evaluation of :mod:`latentqa.evals.registry`, in its order, then
``all`` (:data:`latentqa.evals.all.ALL`): each gets its options from its config dataclass,
plus ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.evals.registry import Evaluation


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval`` and one subcommand per evaluation."""
    from latentqa.evals.all import ALL
    from latentqa.evals.registry import evaluations

    parser = subparsers.add_parser(
        "eval",
        help="evaluate a decoder against baselines on the same items",
        description=(
            "Evaluations print a markdown table, or with --json a JSON object as the last line."
        ),
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    for evaluation in (*evaluations(), ALL):
        add_evaluation(tasks, evaluation)
    parser.set_defaults(func=lambda _args: parser.print_help() or 1)


def add_evaluation(tasks: argparse._SubParsersAction, evaluation: Evaluation) -> None:
    """Add ``evaluation`` as a subcommand: its config's options and ``--json``."""
    parser = tasks.add_parser(
        evaluation.name, help=evaluation.help, description=evaluation.description
    )
    add_config_arguments(parser, evaluation.config)
    parser.add_argument("--json", action="store_true", help=evaluation.json_help)
    parser.set_defaults(func=lambda args: run_evaluation(evaluation, args))


def run_evaluation(evaluation: Evaluation, args: argparse.Namespace) -> int:
    """Run one evaluation's command: its report (markdown, files under its output folder),
    then with ``--json`` the result as the last line.

    Returns:
        The evaluation's exit status (``eval all``: 1 when an evaluation failed).
    """
    config = config_from_args(evaluation.config, args)
    result = evaluation.run(config, _stderr)
    print(evaluation.report(result, config, _stderr))
    if args.json:
        print(json.dumps(result, default=str))
    return evaluation.status(result)
