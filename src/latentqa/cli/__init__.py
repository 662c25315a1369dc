"""The ``latentqa`` command: a thin layer of argument parsing over the Python API.

Each subcommand lives in its own module exposing ``register(subparsers)``; the
module adds its parser and sets ``func`` to a callable taking the parsed args.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from latentqa.errors import LatentQAError

# Modules under latentqa.cli, in the order their subcommands appear in --help.
SUBCOMMAND_MODULES = ["demo", "read", "serve", "train", "steer", "data", "eval", "layers"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentqa",
        description=(
            "Read a language model's activations in plain English: train a decoder "
            "(Latent Interpretation Tuning), ask it questions, and steer models with it."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"latentqa.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except LatentQAError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
