"""Typed dataclass configs: field docs from attribute docstrings, strict loading.

Each config field is documented by the string literal that follows it in the
class body. :func:`field_docs` reads those from the source so that the CLI's
``--help`` and the Python docs share one text, and :func:`config_from_dict`
refuses unknown options instead of silently ignoring a typo.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import json
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from latentqa.errors import LatentQAError

T = TypeVar("T")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring written under it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # the class definition's statements
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of the dataclass fields."""
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple type hint, converting ints to floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(name, value, option)
            except LatentQAError:
                continue
        raise LatentQAError(f"option {name!r} has the wrong type: {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise LatentQAError(f"option {name!r} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(name, v, item) for v in value]
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise LatentQAError(f"option {name!r} must be one of {choices}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise LatentQAError(f"option {name!r} must be {hint.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build a config, rejecting unknown options and values of the wrong type."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise LatentQAError(
            f"unknown option(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid options: {', '.join(sorted(fields))}"
        )
    hints = field_types(cls)
    try:
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})
    except TypeError as error:  # a required option is missing
        raise LatentQAError(f"{cls.__name__}: {error}") from None


def config_from_file(cls: type[T], path: str | Path) -> T:
    """Load a config from a JSON file (unknown keys are errors)."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LatentQAError(f"config file {path} does not exist") from None
    except OSError as error:
        raise LatentQAError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise LatentQAError(f"config file {path} is not UTF-8: it must be UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise LatentQAError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise LatentQAError(f"config file {path} must hold a JSON object")
    return config_from_dict(cls, values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config."""
    return dataclasses.asdict(config)
