"""Reading the JSON files users hand to latentqa, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError


def read_json(path: Path) -> Any:
    """The JSON value in ``path``; every failure is one line naming the file and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LatentQAError(f"{path}: cannot read ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise LatentQAError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}): "
            "the file must be UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LatentQAError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error


def type_name(value: Any) -> str:
    """How a JSON value's type reads in an error message ("an object", "a list", ...)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
