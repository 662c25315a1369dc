"""Command-line options generated from a typed config dataclass.

Each field becomes ``--field-name`` with the field's docstring as its help, so
``--help`` and the Python API never drift apart. Values given on the command
line override a ``--config FILE.json``; unknown keys in that file are errors.

A field's ``metadata`` may set ``metavar`` (the value's name in ``--help``) and, for a
``list[...]`` field, ``repeatable=True``: the option then takes one value and may be
given several times (``--data a=x --data b=y``) instead of several values at once; and
``group``, the title of the ``--help`` section the option is listed in.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any

from latentqa.typed_config import config_from_dict, field_docs, field_types, read_config_file


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
    groups: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        hint = _unwrap_optional(field_types(cls)[field.name])
        title = field.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = parser if title is None else groups[title]
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        has_factory = field.default_factory is not dataclasses.MISSING
        help_text = docs.get(field.name, "")
        if default is not None:
            help_text += f" (default: {default})"
        elif field.default is dataclasses.MISSING and not has_factory:
            help_text += " (required)"
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "default": argparse.SUPPRESS,
            "help": help_text,
        }
        origin = typing.get_origin(hint)
        metavar = field.metadata.get("metavar")
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            (item,) = typing.get_args(hint)
            if typing.get_origin(item) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(item))
            else:
                kwargs["type"] = item
            many = {"action": "append"} if field.metadata.get("repeatable") else {"nargs": "+"}
            kwargs.update(many, metavar=metavar or "X")
        elif origin is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        else:
            kwargs["type"] = hint
            kwargs["metavar"] = metavar or field.name.upper()
        target.add_argument(flag, **kwargs)
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


def add_model_alias(parser: Any) -> None:
    """Add ``--model`` as a hidden, deprecated alias of a config's ``--target`` option.

    ``--model`` was the option's name in ``latentqa layers`` and ``latentqa data build``;
    old commands keep working.
    """
    parser.add_argument(
        "--model",
        dest="target",
        default=argparse.SUPPRESS,
        metavar="SPEC",
        action=_DeprecatedAlias,
        new="--target",
        help=argparse.SUPPRESS,
    )
