"""Command-line options generated from a typed config dataclass.

Each field becomes ``--field-name`` with the field's docstring as its help, so
``--help`` and the Python API never drift apart. Values given on the command
line override a ``--config FILE.json``; unknown keys in that file are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from latentqa.configs import config_from_dict, field_docs, field_types, read_config_file
from latentqa.models import EMBEDDED_MODEL


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of ``cls`` (all optional: defaults live in the config)."""
    docs: dict[str, str] = {}
    # Base classes first: a field redefined in a subclass takes the subclass's text.
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    for field in dataclasses.fields(cls):
        hint = _unwrap_optional(field_types(cls)[field.name])
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = docs.get(field.name, "")
        if default is not None and default is not dataclasses.MISSING:
            help_text += f" (default: {default})"
        elif field.default is dataclasses.MISSING:
            help_text += " (required)"
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kwargs.update(nargs="+", type=typing.get_args(hint)[0], metavar="X")
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        else:
            kwargs["type"] = hint
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--config",
        dest="config_file",
        default=None,
        help="JSON file of options (command-line options override it; unknown keys are errors)",
    )


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from a ``--config`` file plus the options given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if getattr(args, "config_file", None):
        # Merged before the config is built: the file may hold only hyperparameters while
        # required options (data, out) come from the command line.
        given = {**read_config_file(args.config_file), **given}
    return config_from_dict(cls, given)


class _DeprecatedAlias(argparse.Action):
    """Store the value like the new option, with a warning naming it."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        print(f"warning: {option} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_target_argument(parser: Any, help_text: str) -> None:
    """Add ``--target`` (default: the embedded model), and ``--model`` as a hidden alias.

    ``--model`` was the option's name in ``latentqa layers`` and ``latentqa data build``;
    old commands keep working.
    """
    parser.add_argument(
        "--target",
        default=EMBEDDED_MODEL,
        metavar="SPEC",
        help=f"{help_text} (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        dest="target",
        default=argparse.SUPPRESS,
        metavar="SPEC",
        action=_DeprecatedAlias,
        new="--target",
        help=argparse.SUPPRESS,
    )
