"""Controls: the question-answer pairs that the frozen decoder should give about the target.

A control file is a JSON list whose items are ``[question, answer]`` pairs or
``{"question": ..., "answer": ...}`` objects, for example::

    [["What is the emotional tone of the assistant's replies?", "Its replies are cheerful."],
     {"question": "How does the assistant sound when it replies?",
      "answer": "The assistant sounds cheerful."}]

:func:`save_control` writes the decoder's own answers about a dialog in this format,
so that a reading can be replayed as a control.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.json_files import read_json

QAPair = tuple[str, str]
"""One ``(question, answer)`` pair of a control."""


def _pair(item: Any, where: str) -> QAPair:
    if isinstance(item, dict):
        extra = sorted(set(item) - {"question", "answer"})
        if extra:
            raise LatentQAError(f"{where} has unknown key(s) {', '.join(extra)}")
        question, answer = item.get("question"), item.get("answer")
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        question, answer = item
    else:
        raise LatentQAError(
            f"{where} must be a [question, answer] pair or a {{question, answer}} object, "
            f"got {json.dumps(item)[:60]}"
        )
    for name, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise LatentQAError(f"{where} needs a non-empty string {name}, got {value!r:.60}")
    return " ".join(question.split()), answer.strip()


def parse_control(data: Any, source: str = "the control") -> list[QAPair]:
    """Validate a control given as Python data (the parsed JSON) and return its pairs.

    Args:
        data: A non-empty list of ``[question, answer]`` pairs or
            ``{"question", "answer"}`` objects.
        source: Named in error messages (e.g. the file name).

    Raises:
        LatentQAError: Not a non-empty list, or an item that is not a pair of non-empty
            strings.
    """
    if not isinstance(data, list) or not data:
        raise LatentQAError(f"{source} must be a non-empty JSON list of [question, answer] pairs")
    return [_pair(item, f"{source}, item {index}") for index, item in enumerate(data)]


def load_control(path: str | Path) -> list[QAPair]:
    """Read a control file (see the module docstring) and return its pairs.

    Raises:
        LatentQAError: The file is missing, not UTF-8 JSON, or not a valid control.
    """
    path = Path(path).expanduser()
    return parse_control(read_json(path, "control file"), str(path))


def combine_controls(
    path: str | Path | None = None, pairs: Sequence[Sequence[str]] | None = None
) -> list[QAPair]:
    """The pairs of a control file followed by pairs given directly (e.g. ``--qa Q A``).

    Raises:
        LatentQAError: Neither source gives a pair, or a pair is malformed.
    """
    combined = load_control(path) if path is not None else []
    if pairs:
        combined += parse_control([list(pair) for pair in pairs], "--qa")
    if not combined:
        raise LatentQAError("give a control: --control FILE.json and/or --qa QUESTION ANSWER")
    return combined


def save_control(path: str | Path, questions: Sequence[str], answers: Sequence[str]) -> Path:
    """Write questions and their answers (e.g. a decoder's reading) as a control file.

    Args:
        path: The JSON file to write (its folder is created).
        questions: The questions asked.
        answers: One answer per question.

    Returns:
        The path written.

    Raises:
        LatentQAError: Counts differ, or a question or answer is empty.
    """
    if len(questions) != len(answers):
        raise LatentQAError(f"{len(questions)} questions but {len(answers)} answers")
    pairs = parse_control([[q, a] for q, a in zip(questions, answers, strict=True)], "reading")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([list(pair) for pair in pairs], indent=2) + "\n")
    return path
