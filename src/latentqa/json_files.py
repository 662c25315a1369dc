"""Reading the files users hand to latentqa (JSON and plain text), with one-line errors;
writing JSON atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError


def _named(path: str | Path, kind: str) -> str:
    """The file as messages name it: ``"config file run.json"``, or the path alone."""
    return f"{kind} {path}" if kind else str(path)


def read_text(path: str | Path, kind: str = "", *, expected: str = "UTF-8 text") -> str:
    """The UTF-8 text of ``path``; every failure is one line naming the file and the fix.

    Args:
        path: The file to read.
        kind: What the file is, named before its path in messages (e.g. ``"config file"``);
            empty: the path alone.
        expected: What the file must be, told when it is not UTF-8 (e.g. ``"UTF-8 JSON"``).

    Raises:
        LatentQAError: The file does not exist, cannot be read or is not UTF-8.
    """
    name = _named(path, kind)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LatentQAError(f"{name} does not exist") from None
    except OSError as error:
        raise LatentQAError(f"cannot read {name}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise LatentQAError(
            f"{name} is not UTF-8 ({error.reason} at byte {error.start}): it must be {expected}"
        ) from None


def read_json(path: str | Path, kind: str = "") -> Any:
    """The JSON value in ``path``; every failure is one line naming the file and the fix.

    Args:
        path: The file to read.
        kind: What the file is, named before its path in messages (e.g. ``"control file"``);
            empty: the path alone.

    Raises:
        LatentQAError: The file does not exist, cannot be read, is not UTF-8 or is not JSON.
    """
    text = read_text(path, kind, expected="UTF-8 JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LatentQAError(
            f"{_named(path, kind)} is not valid JSON: {error.msg} "
            f"at line {error.lineno}, column {error.colno}"
        ) from None


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


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``.NAME.tmpPID`` beside it and a rename, so a
    reader (or an interrupted run) never sees half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
