"""Load datasets in the public LatentQA release format.

A dataset folder holds up to four behaviour files, one per *kind* (``system.json``,
``control.json``, ``stimulus.json``, ``stimulus_completion.json``), and ``qa.json``.
Each behaviour file is a JSON list of objects with a ``label`` and some string fields
(a missing field means empty); ``qa.json`` maps each label to a list of
``[question, answer]`` pairs. Every (behaviour, QA pair) combination is one example:
the decoder reads the target model's activations on the behaviour's dialog and learns
to answer the question.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from latentqa.errors import LatentQAError
from latentqa.json_files import read_json, type_name

__all__ = [
    "FIELDS",
    "KINDS",
    "REQUIRED_FIELDS",
    "Behavior",
    "LatentQADataset",
    "QAExample",
    "load_latentqa",
]

KINDS: tuple[str, ...] = ("system", "control", "stimulus", "stimulus_completion")
"""The behaviour kinds, each stored in ``<kind>.json``."""

FIELDS: tuple[str, ...] = (
    "system",
    "control_user",
    "control_thought",
    "control_model",
    "stimulus_user",
    "stimulus_thought",
    "stimulus_model",
    "read_text",
)
"""The optional string fields of a behaviour item (besides ``label``)."""

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "system": ("system", "stimulus_user"),
    "control": ("control_user",),
    "stimulus": ("control_user", "control_model", "stimulus_user"),
    "stimulus_completion": ("control_user", "control_model", "stimulus_user", "stimulus_model"),
}
"""Fields that must be non-empty for a behaviour of each kind to form its dialog."""

_MASKED_MESSAGES = {"system": 1, "control": 0, "stimulus": 2, "stimulus_completion": 2}

# How many offending labels an error message names before saying "and N more".
_NAMED_IN_ERRORS = 5


@dataclass(frozen=True)
class Behavior:
    """One behaviour item: a dialog in which the assistant was steered by a control.

    The ``*_thought`` fields hold a reasoning model's hidden reasoning in the public
    release. They are kept for completeness but never enter :meth:`dialog`: the target
    models this project embeds are not reasoning models, so their chat templates have
    no place for such text and it would be an input the target never produces itself.

    Attributes:
        label: The behaviour label; keys the QA pairs in ``qa.json``.
        kind: One of :data:`KINDS`.
        system: The system prompt (``system`` kind).
        control_user: The user turn that instructs the assistant.
        control_model: The assistant's reply acknowledging the control.
        stimulus_user: A later, ordinary user turn.
        stimulus_model: The assistant's reply to the stimulus.
        control_thought: Reasoning text for the control reply (ignored).
        stimulus_thought: Reasoning text for the stimulus reply (ignored).
    """

    label: str
    kind: str
    system: str = ""
    control_user: str = ""
    control_model: str = ""
    stimulus_user: str = ""
    stimulus_model: str = ""
    control_thought: str = ""
    stimulus_thought: str = ""
    read_text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LatentQAError(f"unknown behaviour kind {self.kind!r}; expected one of {KINDS}")

    def dialog(self) -> list[dict[str, str]]:
        """The chat messages the target model reads for this behaviour.

        Returns:
            ``system``: ``[system, user=stimulus_user]``, then ``assistant=stimulus_model``
            when the item has one (``latentqa data replies``); ``control``:
            ``[user=control_user]``; ``stimulus``: ``[user=control_user,
            assistant=control_model, user=stimulus_user]``; ``stimulus_completion``: the
            stimulus messages plus ``assistant=stimulus_model``. Each message is a
            ``{"role": ..., "content": ...}`` dict; a generation prompt follows when the
            dialog ends with a user turn.
        """
        if self.kind == "system":
            messages = [_message("system", self.system), _message("user", self.stimulus_user)]
            if self.stimulus_model:  # the target's own reply (set B's form; data replies)
                messages.append(_message("assistant", self.stimulus_model))
            return messages
        if self.kind == "control":
            return [_message("user", self.control_user)]
        messages = [
            _message("user", self.control_user),
            _message("assistant", self.control_model),
            _message("user", self.stimulus_user),
        ]
        if self.kind == "stimulus_completion":
            messages.append(_message("assistant", self.stimulus_model))
        return messages

    @property
    def n_masked_messages(self) -> int:
        """How many leading messages of :meth:`dialog` the decoder must not see.

        These are the system prompt or the control turn (user instruction and the
        assistant's acknowledgement): their activations are masked so that the decoder
        has to read the control's influence from later tokens instead of copying the
        instruction text. ``system``: 1, ``control``: 0, ``stimulus`` and
        ``stimulus_completion``: 2.
        """
        return _MASKED_MESSAGES[self.kind]

    def to_json(self) -> dict[str, str]:
        """The item as stored in ``<kind>.json``: ``label`` plus non-empty fields."""
        item = {"label": self.label}
        for name in FIELDS:
            value = getattr(self, name)
            if value:
                item[name] = value
        return item


@dataclass(frozen=True)
class QAExample:
    """One training or evaluation example: a behaviour and a question about it.

    Attributes:
        behavior: The behaviour whose dialog the target model reads.
        question: The question the decoder is asked.
        answer: The gold answer.
    """

    behavior: Behavior
    question: str
    answer: str


@dataclass(frozen=True)
class LatentQADataset:
    """Behaviours and the QA pairs of their labels.

    Attributes:
        behaviors: The behaviour items, in file order, kinds in :data:`KINDS` order.
        qa: For each label used by a behaviour, its ``(question, answer)`` pairs.
    """

    behaviors: tuple[Behavior, ...]
    qa: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The distinct behaviour labels, in order of first appearance."""
        return list(dict.fromkeys(b.label for b in self.behaviors))

    @property
    def kinds(self) -> list[str]:
        """The kinds that have at least one behaviour, in :data:`KINDS` order."""
        present = {b.kind for b in self.behaviors}
        return [kind for kind in KINDS if kind in present]

    def examples(self) -> list[QAExample]:
        """Every (behaviour, QA pair) combination.

        Returns:
            The examples, grouped by behaviour in dataset order, then QA pair order.
        """
        return [
            QAExample(behavior, question, answer)
            for behavior in self.behaviors
            for question, answer in self.qa.get(behavior.label, ())
        ]

    def __len__(self) -> int:
        """The number of examples (behaviours times their labels' QA pairs)."""
        return sum(len(self.qa.get(b.label, ())) for b in self.behaviors)

    def counts(self) -> dict[str, dict[str, int]]:
        """Behaviour and example counts per kind, plus a ``"total"`` entry.

        Returns:
            ``{kind: {"behaviors": n, "examples": n, "labels": n}}`` for each present
            kind and ``"total"``.
        """
        result: dict[str, dict[str, int]] = {}
        for kind in [*self.kinds, "total"]:
            chosen = [b for b in self.behaviors if kind in ("total", b.kind)]
            result[kind] = {
                "behaviors": len(chosen),
                "examples": sum(len(self.qa.get(b.label, ())) for b in chosen),
                "labels": len({b.label for b in chosen}),
            }
        return result

    def select_labels(self, labels: Iterable[str]) -> LatentQADataset:
        """The sub-dataset of the behaviours whose label is in ``labels``."""
        wanted = set(labels)
        behaviors = tuple(b for b in self.behaviors if b.label in wanted)
        qa = {label: pairs for label, pairs in self.qa.items() if label in wanted}
        return LatentQADataset(behaviors, qa)

    def split_by_label(
        self, heldout_fraction: float, seed: int = 0
    ) -> tuple[LatentQADataset, LatentQADataset]:
        """Split into train and held-out parts whose labels are disjoint.

        Args:
            heldout_fraction: Share of the labels that go to the held-out part, in
                ``[0, 1)``; rounded to a whole number of labels, at least one when the
                fraction is positive and there are two or more labels.
            seed: Seed of the shuffle that picks the held-out labels.

        Returns:
            ``(train, heldout)``.

        Raises:
            LatentQAError: The fraction is outside ``[0, 1)``.
        """
        if not 0.0 <= heldout_fraction < 1.0:
            raise LatentQAError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
        ordered = sorted(self.labels)
        count = round(len(ordered) * heldout_fraction)
        if heldout_fraction > 0 and len(ordered) >= 2:
            count = min(max(count, 1), len(ordered) - 1)
        random.Random(f"heldout:{seed}").shuffle(ordered)
        heldout = set(ordered[:count])
        train_labels = [label for label in self.labels if label not in heldout]
        return self.select_labels(train_labels), self.select_labels(heldout)


def load_latentqa(
    folder: str | Path, kinds: Iterable[str] | None = None, *, require_qa: bool = True
) -> LatentQADataset:
    """Load a dataset folder in the public LatentQA format.

    Args:
        folder: Folder holding ``qa.json`` and any of the ``<kind>.json`` files.
        kinds: Kinds to load (default: every kind whose file exists). A kind named here
            whose file is missing is an error.
        require_qa: With ``False``, ``qa.json`` may be missing and labels may lack QA
            pairs (the public release's training ``system.json`` ships without its QA);
            the caller derives questions from the behaviours themselves.

    Returns:
        The dataset; ``qa`` keeps only the labels its behaviours use.

    Raises:
        LatentQAError: The folder, ``qa.json`` or every behaviour file is missing; a
            file is not valid JSON or has the wrong structure; a behaviour's label has
            no QA pairs; or the dataset is empty.
    """
    root = Path(folder)
    if not root.is_dir():
        raise LatentQAError(f"dataset folder {root} does not exist or is not a folder")
    if kinds is None:
        chosen = [kind for kind in KINDS if (root / f"{kind}.json").is_file()]
        if not chosen:
            names = ", ".join(f"{kind}.json" for kind in KINDS)
            raise LatentQAError(f"{root}: no behaviour files (expected any of {names})")
    else:
        chosen = list(dict.fromkeys(kinds))
        unknown = [kind for kind in chosen if kind not in KINDS]
        if unknown:
            raise LatentQAError(f"unknown behaviour kind(s) {unknown}; expected any of {KINDS}")
        missing = [f"{kind}.json" for kind in chosen if not (root / f"{kind}.json").is_file()]
        if missing:
            raise LatentQAError(f"{root}: missing behaviour file(s) {', '.join(missing)}")
        if not chosen:
            raise LatentQAError("no behaviour kinds requested")
    qa_path = root / "qa.json"
    if not qa_path.is_file() and require_qa:
        raise LatentQAError(f"{qa_path}: file missing (every dataset needs its QA pairs)")

    behaviors: list[Behavior] = []
    for kind in [k for k in KINDS if k in chosen]:
        behaviors.extend(_parse_behaviors(root / f"{kind}.json", kind))
    qa = _parse_qa(qa_path) if qa_path.is_file() else {}

    used = list(dict.fromkeys(b.label for b in behaviors))
    lacking = [label for label in used if not qa.get(label)]
    if lacking and require_qa:
        raise LatentQAError(
            f"{qa_path}: no QA pairs for {len(lacking)} behaviour label(s): {_name_few(lacking)}"
        )
    if not behaviors:
        files = ", ".join(f"{kind}.json" for kind in chosen)
        raise LatentQAError(f"{root}: empty dataset (no behaviours in {files})")
    return LatentQADataset(tuple(behaviors), {label: qa[label] for label in used if label in qa})


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def _name_few(labels: Sequence[str]) -> str:
    named = ", ".join(repr(label) for label in labels[:_NAMED_IN_ERRORS])
    rest = len(labels) - _NAMED_IN_ERRORS
    return f"{named} and {rest} more" if rest > 0 else named


def _parse_behaviors(path: Path, kind: str) -> list[Behavior]:
    data = read_json(path)
    if not isinstance(data, list):
        raise LatentQAError(
            f"{path}: top level must be a JSON list of behaviours, got {type_name(data)}"
        )
    behaviors = []
    for index, item in enumerate(data):
        where = f"{path}: item {index}"
        if not isinstance(item, dict):
            raise LatentQAError(f"{where} must be a JSON object, got {type_name(item)}")
        label = item.get("label")
        if label is None:
            raise LatentQAError(f"{where} has no 'label'")
        if not isinstance(label, str) or not label.strip():
            raise LatentQAError(f"{where} has a 'label' that is not a non-empty string")
        values: dict[str, str] = {}
        for name in FIELDS:
            value = item.get(name, "")
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise LatentQAError(
                    f"{where} (label {label!r}): field {name!r} must be a string, "
                    f"got {type_name(value)}"
                )
            values[name] = value
        empty = [name for name in REQUIRED_FIELDS[kind] if not values[name].strip()]
        if empty:
            raise LatentQAError(
                f"{where} (label {label!r}): a {kind} behaviour needs non-empty "
                f"{', '.join(repr(name) for name in empty)}"
            )
        behaviors.append(Behavior(label=label, kind=kind, **values))
    return behaviors


def _parse_qa(path: Path) -> dict[str, tuple[tuple[str, str], ...]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise LatentQAError(
            f"{path}: top level must be a JSON object mapping labels to QA pairs, "
            f"got {type_name(data)}"
        )
    qa: dict[str, tuple[tuple[str, str], ...]] = {}
    for label, pairs in data.items():
        if not isinstance(pairs, list):
            raise LatentQAError(
                f"{path}: label {label!r} must map to a list of [question, answer] pairs, "
                f"got {type_name(pairs)}"
            )
        parsed = []
        for index, pair in enumerate(pairs):
            if (
                not isinstance(pair, list | tuple)
                or len(pair) != 2
                or not all(isinstance(text, str) for text in pair)
            ):
                raise LatentQAError(
                    f"{path}: label {label!r}, pair {index} must be [question, answer] "
                    "(two strings)"
                )
            parsed.append((pair[0], pair[1]))
        qa[label] = tuple(parsed)
    return qa
