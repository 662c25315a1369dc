"""A training folder derived from another one (``latentqa data replies`` / ``user-turns``).

Both commands read a folder in the public release layout and write a new ``system.json``
beside a copy of its ``qa.json``; the checks and the write live here once.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from latentqa.errors import LatentQAError
from latentqa.json_files import write_json_atomic

__all__ = ["check_derived", "require_system_json", "write_derived"]


def require_system_json(folder: Path) -> None:
    """Raises LatentQAError unless ``folder`` holds a ``system.json``."""
    if not (folder / "system.json").is_file():
        raise LatentQAError(f"{folder}: no system.json (a folder in the LatentQA release layout)")


def check_derived(source: Path, target: Path) -> None:
    """The input folder has a ``system.json`` and the output folder is another one.

    Raises:
        LatentQAError: Naming what is wrong.
    """
    require_system_json(source)
    if target.resolve() == source.resolve():
        raise LatentQAError("--out must be another folder than --data (the input stays as it is)")


def write_derived(source: Path, target: Path, items: Sequence[dict[str, str]]) -> None:
    """``target/system.json`` (atomically) and a copy of ``source/qa.json`` if it has one."""
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / "system.json", list(items))
    if (source / "qa.json").is_file():
        shutil.copyfile(source / "qa.json", target / "qa.json")
