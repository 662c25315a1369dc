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
import math
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from latentqa.errors import LatentQAError
from latentqa.json_files import read_json

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
        others = [option for option in options if option is not type(None)]
        if len(others) == 1:  # Optional[X]: X's own message ("must be one of ...")
            return _coerce(name, value, others[0])
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
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in values]
    if missing:
        flags = " and ".join(_flag(name) for name in missing)
        raise LatentQAError(
            f"missing required option(s) {', '.join(missing)}: pass {flags} "
            "(or put them in the --config file)"
        )
    hints = field_types(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options of a JSON config file, unchecked against any config class.

    A file may hold only some options (e.g. hyperparameters) when the rest come from the
    command line, so required options are checked after the two are merged.

    Raises:
        LatentQAError: The file is missing, unreadable, not UTF-8, not JSON or not an object.
    """
    values = read_json(path, "config file")
    if not isinstance(values, dict):
        raise LatentQAError(f"config file {path} must hold a JSON object")
    return values


def config_from_file(cls: type[T], path: str | Path) -> T:
    """Load a config from a JSON file (unknown keys are errors)."""
    return config_from_dict(cls, read_config_file(path))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require_int(name: str, value: int | None, minimum: int, *, optional: bool = False) -> None:
    """Raise a one-line error unless ``value`` is at least ``minimum`` (or ``None`` if optional).

    Raises:
        LatentQAError: Naming the option, the value and what to set instead.
    """
    if value is None and optional:
        return
    if value is None or value < minimum:
        raise LatentQAError(
            f"{name} must be at least {minimum}, got {value}: set {_flag(name)} to "
            f"{minimum} or more"
        )


def require_number(
    name: str,
    value: float,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a one-line error unless ``value`` is finite and within the given bounds.

    Args:
        name: The option, named in the message.
        value: Its value; NaN and infinities are always refused.
        low: Lower bound, included unless ``low_open``.
        high: Upper bound (``None``: none), included unless ``high_open``.
        low_open: Exclude ``low`` itself.
        high_open: Exclude ``high`` itself.

    Raises:
        LatentQAError: Naming the option, the value and the range to choose from.
    """
    fits = math.isfinite(value) and (value > low if low_open else value >= low)
    if high is not None:
        fits = fits and (value < high if high_open else value <= high)
    if fits:
        return
    if high is not None:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        rule, wanted = f"be in {span}", f"a number in {span}"
    elif low == 0 and low_open:
        rule, wanted = "be positive", "a finite number above 0"
    elif low == 0:
        rule, wanted = "not be negative", "a finite number, 0 or more"
    else:
        bound = f"{'above' if low_open else 'at least'} {low:g}"
        rule, wanted = f"be {bound}", f"a finite number {bound}"
    raise LatentQAError(f"{name} must {rule}, got {value}: set {_flag(name)} to {wanted}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready dict of a config."""
    return dataclasses.asdict(config)
