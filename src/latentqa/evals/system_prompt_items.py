"""Held-out items of ``latentqa eval system-prompt``: dialogs, options and distractors.

Data (:func:`build_items`): a ``latentqa data build`` folder (``train/`` for the probe,
``heldout/`` for the items), a folder in the public release layout (``system.json`` +
``qa.json``; the probe trains on ``train/`` inside it when there is one, else on a
seeded half of its labels), or by default the held-out set shipped in the package
(:data:`SHIPPED_DATA`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from latentqa.data.format import load_latentqa
from latentqa.decoder.contrast import without_system
from latentqa.errors import LatentQAError
from latentqa.package_data import package_file
from latentqa.questions import INSTRUCTION_QUESTION, yes_no_question

QUESTION = INSTRUCTION_QUESTION
N_OPTIONS = 5
SHIPPED_DATA = package_file("latentqa", "resources/heldout/system-prompt")
"""The built-in builder's held-out ``system`` behaviours (release layout) and, in
``train/``, its training ``system`` behaviours for the probe; see its README.md."""
SHIPPED_REPLIES = SHIPPED_DATA / "replies.json"
"""Set B: the embedded target's greedy reply to each shipped held-out dialog, keyed by
:func:`reply_key` (see the folder's README.md for how it was made)."""
ANSWERS = ("instructions", "prompts")
"""What an item's options are: the held-out behaviours' answers to the question
(``instructions``, from ``qa.json``) or their hidden system prompts verbatim (``prompts``)."""
SETS = ("user", "replies")
"""Held-out sets: ``user`` (set A: the user turn alone is read) and ``replies`` (set B:
the user turn and the target's own reply under the hidden prompt)."""


def reply_key(dialog: Dialog) -> str:
    """The key of a dialog's reply in a replies file: a digest of its messages."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in dialog)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_replies(items: list[Item], replies: dict[str, str]) -> list[Item]:
    """Set B from set A: each item's dialog with the target's reply appended.

    Raises:
        LatentQAError: An item's dialog has no reply in ``replies``.
    """
    out = []
    for item in items:
        reply = replies.get(reply_key(item.dialog))
        if reply is None:
            raise LatentQAError(
                "a held-out dialog has no reply in the replies file: regenerate it (see "
                f"{SHIPPED_DATA / 'README.md'}) or pass a generate function"
            )
        dialog = [*item.dialog, {"role": "assistant", "content": reply}]
        out.append(dataclasses.replace(item, dialog=dialog, reply=reply))
    return out


Log = Callable[[str], None]
Dialog = list[dict[str, str]]


@dataclass
class Item:
    """One held-out dialog with its multiple-choice options."""

    label: str
    dialog: Dialog
    question: str
    gold: str
    options: list[str]
    """N_OPTIONS answers to the question, the gold one at ``gold_index``."""
    gold_index: int
    distractor: str
    """Another behaviour's answer: the reference for open-answer wins and the "No." yes/no
    question."""
    reply: str | None = None
    """Set B (``--set replies``): the target's own greedy reply under the hidden prompt,
    the last message of :attr:`dialog` (read with the user turn)."""

    @property
    def user_dialog(self) -> Dialog:
        """The dialog without its leading system message (the ``no_system_prompt`` input:
        the same user turn, and reply if any, with nothing hidden)."""
        return without_system(self.dialog)


def _answers(folder: Path, question: str, answers: str) -> tuple[list, dict[str, str]]:
    """A folder's behaviours that answer ``question``, and ``{key: answer}``: keyed by
    label (answers from ``qa.json``), or by system prompt (``answers="prompts"``: each
    dialog's own hidden prompt, no ``qa.json`` needed)."""
    if answers == "prompts":
        behaviors = load_latentqa(folder, ["system"], require_qa=False).behaviors
        return behaviors, {b.system: b.system.strip() for b in behaviors if b.system.strip()}
    dataset = load_latentqa(folder, ["system"])
    answer_of = {label: dict(pairs).get(question) for label, pairs in dataset.qa.items()}
    answer_of = {k: v for k, v in answer_of.items() if v}
    return [b for b in dataset.behaviors if b.label in answer_of], answer_of


def _is_release_folder(folder: Path, answers: str = "instructions") -> bool:
    if answers == "prompts":
        return (folder / "system.json").is_file()
    return (folder / "system.json").is_file() and (folder / "qa.json").is_file()


def build_items(
    data: str | Path | None = None,
    question: str = QUESTION,
    n: int | None = None,
    seed: int = 0,
    log: Log = lambda _: None,
    answers: str = "instructions",
) -> tuple[list[Item], list[tuple[Dialog, str]]]:
    """Held-out items and the probe's training pairs ``(dialog, answer)``.

    Args:
        data: One of
            (a) a folder with ``train/`` and ``heldout/`` (from ``latentqa data build``):
            items from ``heldout/``, probe pairs from ``train/``;
            (b) a folder in the public release layout (``system.json`` + ``qa.json``):
            items from it; probe pairs from its ``train/`` subfolder when that holds
            ``system.json`` + ``qa.json``, else its labels are split 50/50 by a seeded
            shuffle into probe-training and evaluation labels (said in a log line);
            (c) ``None``: the shipped held-out set, :data:`SHIPPED_DATA` (layout b with
            ``train/``).
        question: The question asked about every item; behaviours without an answer to
            it are left out.
        n: Keep at most this many items (after a seeded shuffle).
        seed: Seed of options, distractors, shuffles and the 50/50 split.
        log: Progress messages.
        answers: ``instructions``: the answers to ``question`` in ``qa.json`` (one per
            label); ``prompts``: each dialog's own hidden system prompt, verbatim (the
            options are then other labels' prompts, and ``qa.json`` is not needed).

    Raises:
        LatentQAError: An unknown folder layout or ``answers``, or fewer than
            ``N_OPTIONS`` distinct held-out answers to ``question``.
    """
    if answers not in ANSWERS:
        raise LatentQAError(f"unknown answers {answers!r}; choose from {', '.join(ANSWERS)}")
    key = (lambda b: b.system) if answers == "prompts" else (lambda b: b.label)
    if data is None:
        root = SHIPPED_DATA
        log(f"data: the held-out set shipped in the package ({root})")
    else:
        root = Path(data)
    if (root / "heldout").is_dir() and (root / "train").is_dir():
        held, held_answers = _answers(root / "heldout", question, answers)
        train, train_answers = _answers(root / "train", question, answers)
    elif _is_release_folder(root, answers):
        held, held_answers = _answers(root, question, answers)
        if _is_release_folder(root / "train", answers):
            train, train_answers = _answers(root / "train", question, answers)
        else:
            labels = sorted({b.label for b in held})
            random.Random(f"probe-split:{seed}").shuffle(labels)
            probe_labels = set(labels[: len(labels) // 2])
            train = [b for b in held if b.label in probe_labels]
            held = [b for b in held if b.label not in probe_labels]
            train_answers = held_answers
            kept = {key(b) for b in held} if answers == "prompts" else None
            held_answers = {
                k: v
                for k, v in held_answers.items()
                if (k in kept if kept is not None else k not in probe_labels)
            }
            log(
                f"{root} has no training split: its labels are split 50/50 (seed {seed}) into "
                f"{len(probe_labels)} for the probe and {len(labels) - len(probe_labels)} to "
                "evaluate"
            )
    else:
        needs = "system.json" if answers == "prompts" else "system.json + qa.json"
        raise LatentQAError(
            f"{root} needs train/ and heldout/ splits (from `latentqa data build`) or "
            f"{needs} (the LatentQA release layout)"
        )
    held = [b for b in held if key(b) in held_answers]
    train = [b for b in train if key(b) in train_answers]
    held_labels = {b.label for b in held} if answers == "prompts" else set(held_answers)
    overlap = {b.label for b in train} & held_labels
    if overlap:
        log(f"leaving {len(overlap)} label(s) that are also evaluated out of the probe's training")
        train = [b for b in train if b.label not in overlap]
    answers_of_label: dict[str, set[str]] = {}
    for b in held:
        answers_of_label.setdefault(b.label, set()).add(held_answers[key(b)])
    distinct = sorted(set(held_answers.values()))
    fewest_others = min((len(set(distinct) - own) for own in answers_of_label.values()), default=0)
    if len(distinct) < N_OPTIONS or fewest_others < N_OPTIONS - 1:
        raise LatentQAError(f"need at least {N_OPTIONS} held-out behaviours answering {question!r}")
    rng = random.Random(seed)
    items = []
    for behavior in held:
        gold = held_answers[key(behavior)]
        # Options and distractors come from other labels only: a label's other prompts
        # (answers="prompts") are other wordings of the same behaviour, not wrong answers.
        own = answers_of_label[behavior.label]
        others = [a for a in distinct if a not in own]
        options = rng.sample(others, N_OPTIONS - 1)
        index = rng.randrange(N_OPTIONS)
        options.insert(index, gold)
        items.append(
            Item(
                behavior.label,
                behavior.dialog(),
                question,
                gold,
                options,
                index,
                rng.choice(others),
            )
        )
    rng.shuffle(items)
    train_pairs = [(b.dialog(), train_answers[key(b)]) for b in train]
    return items[:n] if n else items, train_pairs


def yes_no_questions(items: Sequence[Item]) -> list[tuple[int, str, bool]]:
    """``(item index, question, right answer is yes)``: gold then distractor, per item."""
    return [
        (i, yes_no_question(item.question, candidate), is_gold)
        for i, item in enumerate(items)
        for candidate, is_gold in ((item.gold, True), (item.distractor, False))
    ]
