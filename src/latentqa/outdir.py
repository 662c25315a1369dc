"""Output folders that never lose a user's work: staged builds renamed into place.

A builder (``latentqa data build``) writes into a temporary sibling of its output
folder and renames it into place at the end, so a failed or killed build leaves the
previous folder as it was. A folder written by the same tool is replaced as a whole;
a foreign one only with ``force``, and then only the entries the build writes.
Temporary siblings carry the writer's process id, so the next build removes those
of dead writers (and puts back a folder whose swap was cut short).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from latentqa.errors import LatentQAError

__all__ = ["check_out_folder", "is_empty", "pid_alive", "replace_entry", "staged_folder"]


def is_empty(folder: Path) -> bool:
    """``folder`` is missing or a folder with no entries."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 probes it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or an id we cannot probe: leave it alone
    return True


def _temp_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def _dead_leftovers(folder: Path) -> Iterator[tuple[Path, str, str]]:
    """``(path, entry name, kind)`` of temporary entries in ``folder`` of dead writers."""
    if not folder.is_dir():
        return
    for path in folder.glob(".*"):
        match = _TEMP.fullmatch(path.name)
        if match and not pid_alive(int(match["pid"])):
            yield path, match["name"], match["kind"]


def _recover(out: Path) -> None:
    """Undo what killed writers left beside ``out`` and inside it.

    An ``.old`` entry is a previous folder moved aside during a swap: if the writer
    died before renaming the new one into place, the entry is missing and the old one
    goes back; otherwise the swap finished and the old copy is deleted. ``.tmp``
    entries are unfinished builds.
    """
    for folder, only in ((out.parent, out.name), (out, None)):
        for path, name, kind in sorted(_dead_leftovers(folder)):
            if only is not None and name != only:
                continue
            if kind == "old" and not (folder / name).exists():
                os.replace(path, folder / name)
            else:
                shutil.rmtree(path, ignore_errors=True)


def check_out_folder(out: Path, *, owned: Callable[[Path], bool], force: bool, what: str) -> bool:
    """Decide, before anything is written, whether a build may write ``out``.

    Args:
        out: The output folder.
        owned: Whether a non-empty ``out`` was written by this tool (then it may be
            replaced as a whole).
        force: Write into a non-empty foreign folder anyway (only the build's entries
            are replaced; other files stay).
        what: What the builder writes, for the message (e.g. ``"a dataset"``).

    Returns:
        True when ``out`` may be replaced as a whole (missing, empty or owned), False
        when only the build's own entries may be replaced (``force`` on a foreign folder).

    Raises:
        LatentQAError: ``out`` is a file, the file system root, or a non-empty folder
            not written by this tool and ``force`` is not set.
    """
    out = Path(os.path.abspath(out))  # "." and "x/.." get a name and a parent
    if out.parent == out:
        raise LatentQAError(f"--out {out} is the root of the file system; name a folder")
    _recover(out)  # a swap cut short by a kill is put back before judging the folder
    if out.exists() and not out.is_dir():
        raise LatentQAError(f"--out {out} is a file; name a folder")
    if is_empty(out) or owned(out):
        return True
    if force:
        return False
    raise LatentQAError(
        f"--out {out} is not empty and does not hold {what} written by latentqa; "
        "choose a new or empty folder, or pass --force to replace the files it writes there"
    )


def replace_entry(source: Path, dest: Path) -> None:
    """Move ``source`` to ``dest``, replacing whatever ``dest`` is.

    A folder at ``dest`` is first moved aside and deleted only after the rename, so
    at every instant ``dest`` holds the old entry or the new one (or, for a killed
    writer, the old one sits beside it under a ``.old`` name that the next build
    puts back).
    """
    if dest.is_dir() and not dest.is_symlink():
        aside = _temp_name(dest, "old")
        os.replace(dest, aside)
        os.replace(source, dest)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if source.is_dir() and (dest.exists() or dest.is_symlink()):
        dest.unlink()  # a file where the build puts a folder: only under --force
    os.replace(source, dest)


@contextmanager
def staged_folder(out: Path, *, whole: bool, keep: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``out``; publish it there when the block ends.

    Args:
        out: The final folder (its parent is created if needed).
        whole: Replace ``out`` as a whole (see :func:`check_out_folder`); otherwise
            move each top-level entry of the build into ``out``, leaving others.
        keep: Entries of ``out`` (e.g. reply caches, written in place so that a killed
            build keeps its progress) carried into the new folder when the build
            wrote none of its own.

    On an exception the temporary folder is deleted and ``out`` is untouched.
    """
    out = Path(os.path.abspath(out))
    if whole and Path.cwd().is_relative_to(out):
        whole = False  # moving the working folder aside would strand the user's shell
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    tmp = _temp_name(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if whole:
            for name in keep:
                if (out / name).exists() and not (tmp / name).exists():
                    os.replace(out / name, tmp / name)
            if out.is_dir() and is_empty(out):
                out.rmdir()  # rename() replaces only empty folders on some systems
            replace_entry(tmp, out)
        else:
            for entry in sorted(tmp.iterdir()):
                replace_entry(entry, out / entry.name)
    finally:
        with suppress(OSError):
            shutil.rmtree(tmp)


def check_output_folder(path: str | Path | None, flag: str) -> None:
    """Refuse an output folder that exists as a file (it would fail after the work is done).

    Raises:
        LatentQAError: ``path`` exists and is not a folder.
    """
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise LatentQAError(f"{flag} {path} is a file, not a folder: choose a folder")
