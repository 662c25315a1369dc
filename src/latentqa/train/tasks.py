"""Training tasks that force the decoder to read, mixed in chosen proportions.

A decoder trained only on open QA about a few hundred behaviours can lower its loss
by memorising their wording and answering from the question's prior. The tasks
here leave no such shortcut:

- ``open``: the dataset's own QA pairs (what LIT trains on by default);
- ``yes_no``: "is this the right answer?" with the true answer or another label's
  answer to the same question, 50/50, so the prior alone scores chance; with
  ``negatives="read"`` each draw is a pair: the true answer asked of its own read
  ("yes") and of another label's read ("no"), in one batch, so the question's text
  cannot tell them apart and the pair's gradients cancel whatever the text alone says;
- ``choice``: the question with the gold answer among 5 answers of other labels to
  the same question, answered by the gold option verbatim (prior: 1 in 5);
- ``reconstruct``: hidden-prefix reconstruction, reproduce the masked system prompt
  or control turn from the activations of the turns after it;
- ``context``: self-supervised context prediction on plain text: read a window of
  1-24 positions and predict the 1-16 tokens just after or just before it.

Every example is a pure function of the seed, so a resumed run sees the same ones.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from latentqa.chat import EncodedDialog
from latentqa.data.format import Behavior
from latentqa.data.instructed import instructed_answer
from latentqa.errors import LatentQAError
from latentqa.questions import (
    CONTEXT_NEXT_QUESTION,
    CONTEXT_PREVIOUS_QUESTION,
    INSTRUCTION_QUESTION,
    NO,
    RECONSTRUCT_QUESTION,
    YES,
    choice_question,
    yes_no_question,
)

TASKS: tuple[str, ...] = ("open", "yes_no", "choice", "reconstruct", "context")
NEGATIVES: tuple[str, ...] = ("answer", "read", "both")
"""How a yes/no task makes its "no": another label's answer, another label's read, or
either (50/50)."""
N_CHOICES = 5
MAX_CHOICE_CHARS = 120
"""Longer answers make the listed options too long to be worth their decoder tokens."""
CONTEXT_WINDOW = (1, 24)
CONTEXT_TOKENS = (1, 16)

KIND_QUESTION = "What kind of instruction is shaping the assistant's replies?"
KEYWORDS_QUESTION = "Which keywords describe the assistant's hidden instructions?"
_KIND_ANSWERS = {"persona": "A persona to adopt.", "goal": "A goal to pursue."}


def parse_task_mix(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"open=1,yes_no=2"`` (or a mapping) -> normalised proportions per task.

    Raises:
        LatentQAError: An unknown task, a malformed entry, or no positive weight.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            name, sep, value = part.strip().partition("=")
            if not part.strip():
                continue
            try:
                items.append((name.strip(), float(value) if sep else 1.0))
            except ValueError:
                raise LatentQAError(f"task mix entry {part!r} must look like name=weight") from None
    unknown = [name for name, _ in items if name not in TASKS]
    if unknown:
        raise LatentQAError(f"unknown training task(s) {unknown}; choose from {', '.join(TASKS)}")
    weights = {name: float(weight) for name, weight in items}
    if any(not (w >= 0 and w < float("inf")) for w in weights.values()):
        raise LatentQAError(f"task weights must be finite and non-negative, got {weights}")
    total = sum(weights.values())
    if total <= 0:
        raise LatentQAError("the task mix needs at least one task with a positive weight")
    return {name: weights[name] / total for name in TASKS if weights.get(name, 0) > 0}


def derived_qa(label: str, system_prompt: str = "") -> list[tuple[str, str]]:
    """QA pairs for a release label that ships without answers (``goal-*``, ``persona-*``).

    The label names the behaviour's category and, in a few words, its content
    ("goal-metacognition-problem-solving"): the kind of instruction, and its keywords.
    A system prompt also answers :data:`INSTRUCTION_QUESTION` (what the assistant was
    instructed to do), the question ``eval system-prompt`` asks, in the built-in data's
    form ("It was instructed to act as a pirate."; :func:`instructed_answer`): that
    question then has thousands of distinct behaviours, not the built-in split's few
    hundred. A prompt the rules cannot rewrite leaves the question out; its own words
    answer :data:`RECONSTRUCT_QUESTION` (added by the caller).
    """
    category, _, rest = label.partition("-")
    pairs = []
    if category in _KIND_ANSWERS:
        pairs.append((KIND_QUESTION, _KIND_ANSWERS[category]))
    words = rest.replace("-", " ").strip() if category in _KIND_ANSWERS else ""
    if words:
        pairs.append((KEYWORDS_QUESTION, words[:1].upper() + words[1:] + "."))
    instructed = instructed_answer(system_prompt) if system_prompt.strip() else None
    if instructed:
        pairs.append((INSTRUCTION_QUESTION, instructed))
    return pairs


def masked_text(behavior: Behavior) -> str:
    """The text the decoder must not see: the system prompt, or the control turn."""
    if behavior.kind == "system":
        return behavior.system
    if behavior.kind in ("stimulus", "stimulus_completion"):
        return behavior.control_user
    return ""


@dataclass(frozen=True)
class Fact:
    """One QA pair about one read dialog: the raw material of open, yes/no and choice."""

    dialog: int
    label: str
    question: str
    answer: str
    source: int = 0
    """Which data folder the fact comes from: distractors come from the same one, so that a
    folder's style of answer or of user turn cannot tell a right answer from a wrong one."""


@dataclass(frozen=True)
class TaskExample:
    """A training example: which dialog's activations, the question, the answer, the task."""

    dialog: int
    question: str
    answer: str
    task: str
    pair: int = -1
    """Examples sharing a non-negative id form a contrastive pair (the same question, own
    read -> yes, another label's read -> no) that training keeps in one batch."""


class TaskSampler:
    """Draws examples of each task from facts, masked prompts and plain texts.

    Args:
        facts: QA pairs per read dialog (labels tell which answers are distractors).
        hidden: ``(dialog, masked text)`` pairs for reconstruction.
        texts: Plain texts for context prediction (tokenized lazily).
        tokenizer: The target's tokenizer, to cut context windows at token boundaries.
        seed: Seed of every random choice.
        questions: Only facts asking one of these questions feed open, yes/no and
            choice (all facts when None).
        negatives: One of :data:`NEGATIVES`: how a yes/no "no" is made.

    Raises:
        LatentQAError: ``questions`` names a question no fact asks, or ``negatives`` is
            not one of :data:`NEGATIVES`.
    """

    def __init__(
        self,
        facts: Sequence[Fact],
        hidden: Sequence[tuple[int, str]],
        texts: Sequence[str],
        tokenizer: PreTrainedTokenizerBase,
        seed: int,
        questions: Sequence[str] | None = None,
        negatives: str = "answer",
    ) -> None:
        if negatives not in NEGATIVES:
            raise LatentQAError(f"yes/no negatives {negatives!r}: choose from {NEGATIVES}")
        self.negatives = negatives
        self.n_pairs = 0
        self.facts = list(facts)
        if questions is not None:
            asked = {f.question for f in self.facts}
            unknown = [q for q in questions if q not in asked]
            if unknown:
                raise LatentQAError(
                    f"no training QA pair asks {unknown[0]!r}; questions the data asks: "
                    + "; ".join(sorted(asked)[:8])
                )
            self.facts = [f for f in self.facts if f.question in set(questions)]
        self.hidden = [(d, text) for d, text in hidden if text.strip()]
        self.texts = [t for t in texts if t.strip()]
        self.tokenizer = tokenizer
        self.rng = random.Random(f"{seed}:tasks")
        # question -> label -> answer: other labels' answers are fair distractors.
        self.answers: dict[str, dict[str, str]] = defaultdict(dict)
        # (question, folder) -> (dialog, label) pairs whose read a "no" may borrow.
        self.readers: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
        self.labels: dict[tuple[str, int], set[str]] = defaultdict(set)
        for fact in self.facts:
            self.answers[fact.question].setdefault(fact.label, fact.answer)
            self.readers[fact.question, fact.source].append((fact.dialog, fact.label))
            self.labels[fact.question, fact.source].add(fact.label)
        self.sources = sorted({fact.source for fact in self.facts})
        # (question, folder or -1 for all) -> its distinct answers (each label's), sorted.
        # A label may be in several folders (a replies folder shares its source's labels),
        # so each folder lists the labels it holds, not the folder a label was first seen in.
        self.distinct: dict[tuple[str, int], list[str]] = {
            (question, source): sorted(
                {self.answers[question][label] for label in self.labels[question, source]}
            )
            for question, source in self.labels
        }
        for question, by_label in self.answers.items():
            self.distinct[question, -1] = sorted(set(by_label.values()))
        self.contested = [f for f in self.facts if len(self.answers[f.question]) > 1]
        self.short = [
            f
            for f in self.contested
            if len(f.answer) <= MAX_CHOICE_CHARS and len(self.answers[f.question]) >= N_CHOICES
        ]
        self.context_dialogs: list[EncodedDialog] = []
        """Plain-text windows made for context prediction (appended to the dialogs)."""

    def available(self) -> dict[str, bool]:
        return {
            "open": bool(self.facts),
            "yes_no": bool(self.contested),
            "choice": bool(self.short),
            "reconstruct": bool(self.hidden),
            "context": bool(self.texts),
        }

    def _other_answers(self, fact: Fact, count: int, need: int | None = None) -> list[str]:
        """Up to ``count`` distinct answers to the question other than ``fact``'s, from
        ``fact``'s folder where it has ``need`` (default ``count``) of them, else from
        every folder."""
        pool = self.distinct[fact.question, fact.source]
        if len(pool) - 1 < (count if need is None else need):
            pool = self.distinct[fact.question, -1]
        picks = self.rng.sample(pool, min(len(pool), count + 1))
        return [a for a in picks if a != fact.answer][:count]

    def _other_reader(self, fact: Fact) -> int | None:
        """A dialog of another label (of ``fact``'s folder where it has one) whose own
        answer to the question is not ``fact``'s."""
        readers = self.readers[fact.question, fact.source]
        if len(self.labels[fact.question, fact.source]) < 2:  # no other label in its folder
            readers = [r for source in self.sources for r in self.readers[fact.question, source]]
        for _ in range(8):  # almost always the first draw: few labels share an answer
            dialog, label = self.rng.choice(readers)
            if label != fact.label and self.answers[fact.question][label] != fact.answer:
                return dialog
        return None

    def draw(self, task: str, context_offset: int) -> list[TaskExample]:
        """One draw of ``task``: an example, a contrastive pair, or none (draw again).

        Context windows get dialog ids from ``context_offset``.
        """
        rng = self.rng
        if task == "open":
            f = rng.choice(self.facts)
            return [TaskExample(f.dialog, f.question, f.answer, task)]
        if task == "yes_no":
            f = rng.choice(self.contested)
            asked = yes_no_question(f.question, f.answer)
            if self.negatives == "read" or (self.negatives == "both" and rng.random() < 0.5):
                dialog = self._other_reader(f)
                if dialog is None:
                    return []
                self.n_pairs += 1
                return [
                    TaskExample(f.dialog, asked, YES, task, self.n_pairs - 1),
                    TaskExample(dialog, asked, NO, task, self.n_pairs - 1),
                ]
            if rng.random() < 0.5:
                return [TaskExample(f.dialog, asked, YES, task)]
            (other,) = self._other_answers(f, 1) or [None]
            if other is None:
                return []
            return [TaskExample(f.dialog, yes_no_question(f.question, other), NO, task)]
        if task == "choice":
            f = rng.choice(self.short)
            others = self._other_answers(f, 4 * N_CHOICES, need=N_CHOICES - 1)
            options = [a for a in others if len(a) <= MAX_CHOICE_CHARS][: N_CHOICES - 1]
            options.append(f.answer)
            rng.shuffle(options)
            return [TaskExample(f.dialog, choice_question(f.question, options), f.answer, task)]
        if task == "reconstruct":
            dialog, text = rng.choice(self.hidden)
            return [TaskExample(dialog, RECONSTRUCT_QUESTION, text, task)]
        if task == "context":
            example = self._context(context_offset)
            return [] if example is None else [example]
        raise LatentQAError(f"unknown task {task!r}")

    def _context(self, offset: int) -> TaskExample | None:
        rng = self.rng
        ids = self.tokenizer(rng.choice(self.texts), add_special_tokens=True)["input_ids"]
        width = rng.randint(*CONTEXT_WINDOW)
        count = rng.randint(*CONTEXT_TOKENS)
        if len(ids) < width + 2:
            return None
        count = min(count, len(ids) - width - 1)
        if rng.random() < 0.5:  # predict what follows the window
            end = rng.randint(width, len(ids) - count)
            start, answer_ids, question = end - width, ids[end : end + count], CONTEXT_NEXT_QUESTION
        else:  # predict what precedes it: the window has attended to those tokens
            start = rng.randint(count, len(ids) - width)
            end, answer_ids = start + width, ids[start - count : start]
            question = CONTEXT_PREVIOUS_QUESTION
        answer = self.tokenizer.decode(answer_ids, skip_special_tokens=True).strip()
        if not answer:
            return None
        text = self.tokenizer.decode(ids[:end])
        self.context_dialogs.append(EncodedDialog(list(ids[:end]), start, text))
        dialog = offset + len(self.context_dialogs) - 1
        return TaskExample(dialog, question, answer, "context")

    def sample(self, mix: Mapping[str, float], n: int, context_offset: int) -> list[TaskExample]:
        """``n`` examples with tasks drawn in the proportions of ``mix``.

        Raises:
            LatentQAError: A task in the mix has no material in the loaded data.
        """
        missing = [task for task in mix if not self.available()[task]]
        if missing:
            raise LatentQAError(
                f"the data has nothing for task(s) {missing}: yes_no and choice need "
                "several labels answering the same question, reconstruct needs masked "
                "system prompts or control turns, context needs text"
            )
        names, weights = list(mix), [mix[name] for name in mix]
        examples: list[TaskExample] = []
        while len(examples) < n:
            task = self.rng.choices(names, weights)[0]
            examples += self.draw(task, context_offset)
        return examples[:n]
