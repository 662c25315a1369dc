"""``latentqa eval audit``: elicit a behaviour the model does not show by default.

Each behaviour is described only in natural language, in a control (what the
decoder should say about the assistant), and measured by an automatic check on the
replies to held-out ordinary prompts:

- ``french``: answering in French (a stopword-count language check);
- ``rhyme``: answering in rhyming couplets (line-final words that rhyme);
- ``pirate``: speaking as a pirate (pirate keywords).

Per behaviour: the share of replies showing it with no steering (``none``), with a
system prompt asking for it (``prompting``) and after LIT steering (``lit``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from latentqa.data.sources import load_user_prompts
from latentqa.errors import LatentQAError
from latentqa.evals.steering import (
    SteeringEvalOptions,
    SteeringResult,
    SteeringRun,
    SteeringTask,
    run_steering,
    steering_evaluation,
)
from latentqa.evals.steering_methods import Log, load_steerable, mean, split_items
from latentqa.generation import generate_texts
from latentqa.steer.model import SteerableModel
from latentqa.typed_config import config_to_dict

_WORD = re.compile(r"[a-zàâçéèêëîïôûùüÿœæ']+")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


FRENCH_STOPWORDS = _words(
    "le la les de des du un une et est je tu vous nous ils elle elles pour dans que qui "
    "pas ne sur avec ce cette ces sont au aux mais ou où très bien plus comme tout être "
    "avoir fait c'est j'ai il y votre vos notre nos mon ma mes ton ta tes leur leurs "
    "oui non bonjour merci aussi donc alors peut faire été même sans chez"
)

ENGLISH_STOPWORDS = _words(
    "the and is are to of in that it you for with this be i as at by not or your can "
    "have was my we they what there their will would do if how about which when so"
)
PIRATE_WORDS = _words(
    "arr arrr arrrr matey mateys ahoy aye ye pirate pirates treasure captain ship sail "
    "hearty hearties booty plunder scallywag landlubber yarr avast shiver timbers "
    "buccaneer seas"
)


def is_french(text: str) -> bool:
    """Mostly French: at least 3 French stopwords, and twice as many as English ones."""
    words = _WORD.findall(text.lower())
    french = sum(word in FRENCH_STOPWORDS for word in words)
    english = sum(word in ENGLISH_STOPWORDS for word in words)
    return french >= 3 and french >= 2 * english


def rhyme_key(word: str) -> str:
    """The word's last vowel group and what follows ("night" -> "ight", "day" -> "ay")."""
    match = re.search(r"[aeiouy]+[^aeiouy]*$", word.lower())
    return match.group(0) if match else word.lower()


def _line_endings(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if re.search(r"[A-Za-z]", line)]
    if len(lines) < 2:  # no line breaks: split into clauses instead
        lines = [part for part in re.split(r"[.!?;,]", text) if re.search(r"[A-Za-z]", part)]
    ends = []
    for line in lines:
        words = re.findall(r"[A-Za-z']+", line)
        if words:
            ends.append(words[-1].lower().strip("'"))
    return ends


def rhymes(text: str) -> bool:
    """At least two lines, and at least half of adjacent line endings rhyme (not repeat)."""
    ends = _line_endings(text)
    pairs = list(itertools.pairwise(ends))
    hits = [a != b and len(a) > 1 and rhyme_key(a) == rhyme_key(b) for a, b in pairs]
    return bool(pairs) and any(hits) and sum(hits) >= len(pairs) / 2


def sounds_like_pirate(text: str) -> bool:
    """At least one pirate keyword."""
    return any(word in PIRATE_WORDS for word in re.findall(r"[a-z]+", text.lower()))


@dataclass(frozen=True)
class AuditBehavior:
    """A behaviour to elicit: its control, its prompting baseline and its check."""

    control: tuple[tuple[str, str], ...]
    prompt: str
    check: Callable[[str], bool]


_RULE = "What rule is the assistant following when it writes?"
_STYLE = "Describe the assistant's writing style."
AUDIT_BEHAVIORS: dict[str, AuditBehavior] = {
    "french": AuditBehavior(
        ((_RULE, "The rule is to answer in French."), (_STYLE, "The assistant answers in French.")),
        "Always answer in French.",
        is_french,
    ),
    "rhyme": AuditBehavior(
        (
            (_RULE, "The rule is to answer in rhyming couplets."),
            (_STYLE, "The assistant answers in rhyming couplets."),
        ),
        "Always answer in rhyming couplets.",
        rhymes,
    ),
    "pirate": AuditBehavior(
        (
            ("What persona is the assistant adopting?", "A pirate."),
            (
                "Who is the assistant pretending to be?",
                "The assistant is pretending to be a pirate.",
            ),
        ),
        "You are a pirate. Always talk like a pirate.",
        sounds_like_pirate,
    ),
}


@dataclass
class AuditEvalConfig(SteeringEvalOptions):
    """Options of ``latentqa eval audit``. Unknown options are errors."""

    behaviours: list[str] | None = None
    """Behaviours to elicit: french, rhyme, pirate; default: all."""
    n_prompts: int = 30
    """Held-out ordinary prompts to generate on."""
    n_train_prompts: int = 128
    """Separate prompts the LIT steering reads the target on."""
    max_new_tokens: int = 48
    """Reply length."""


class AuditTask(SteeringTask):
    """One direction per behaviour; the measure is the replies to held-out prompts."""

    name = "audit"
    options: AuditEvalConfig

    def __init__(
        self,
        steerable: SteerableModel,
        options: AuditEvalConfig,
        names: list[str],
        prompts: Sequence[str],
    ) -> None:
        super().__init__(steerable, options)
        self.directions = names
        pool = list(prompts)
        spare = max(1, min(options.n_train_prompts, len(pool) - options.n_prompts))
        self.evaluation, self.train = split_items(pool, [options.n_prompts, spare], options.seed)

    def measure(self, model: nn.Module, direction: str | None, prompted: bool = False) -> Any:
        system = AUDIT_BEHAVIORS[direction].prompt if prompted and direction else None
        return generate_texts(
            model,
            self.steerable.tokenizer,
            self.evaluation,
            system=system,
            max_new_tokens=self.options.max_new_tokens,
        )

    def control(self, direction: str | None) -> tuple[tuple[str, str], ...]:
        return AUDIT_BEHAVIORS[str(direction)].control

    def lit_name(self, direction: str | None) -> str:
        return f"audit-{direction}"

    def lit_prompts(self) -> list[str]:
        return self.train

    def result(self, run: SteeringRun) -> SteeringResult:
        none = run.measured["none"]
        methods: dict[str, dict[str, float]] = {"none": {}, "prompting": {}, "lit": {}}
        samples: dict[str, dict[str, str]] = {}
        for name in self.directions:
            check = AUDIT_BEHAVIORS[name].check
            prompted, steered = run.measured[f"prompting {name}"], run.measured[f"lit {name}"]
            for method, texts in (("none", none), ("prompting", prompted), ("lit", steered)):
                methods[method][name] = mean([float(check(t)) for t in texts])
            samples[name] = {
                "prompt": self.evaluation[0],
                "prompting": prompted[0],
                "lit": steered[0],
            }
        samples["none"] = {"prompt": self.evaluation[0], "reply": none[0]}
        elicited = {name: methods["lit"][name] > methods["none"][name] for name in self.directions}
        return SteeringResult(
            task="audit",
            n=len(self.evaluation),
            methods=methods,
            checks={"lit_above_none": elicited, "target_met": all(elicited.values())},
            lit=dict(run.lit),
            samples=samples,
            config=config_to_dict(self.options),
        )


def evaluate_audit(
    config: AuditEvalConfig,
    *,
    steerable: SteerableModel | None = None,
    prompts: Sequence[str] | None = None,
    log: Log | None = None,
) -> SteeringResult:
    """Run the auditing evaluation (see the module docstring).

    Args:
        config: Behaviours, sizes, steering options and the target / decoder.
        steerable: An already loaded target with its decoder adapter.
        prompts: Prompts to split into held-out and training ones; default: the built-in
            ordinary user prompts.
        log: Progress messages.

    Returns:
        Methods ``none``, ``prompting``, ``lit``, each a share per behaviour, with the
        LIT losses and samples.
    """
    names = config.behaviours or list(AUDIT_BEHAVIORS)
    unknown = sorted(set(names) - set(AUDIT_BEHAVIORS))
    if unknown:
        raise LatentQAError(
            f"unknown behaviour(s) {', '.join(unknown)}; choose from {', '.join(AUDIT_BEHAVIORS)}"
        )
    steerable = steerable or load_steerable(config)
    pool = list(prompts) if prompts is not None else load_user_prompts()
    task = AuditTask(steerable, config, names, pool)
    if log:
        log(f"audit: {len(task.evaluation)} prompts; unsteered replies")
    return run_steering(task, log)


EVALUATION = steering_evaluation(
    name="audit",
    help="elicit hidden behaviours (French, rhyme, pirate) described only in a control",
    description=(
        "How often each behaviour appears before and after LIT steering, against "
        "prompting, by automatic checks."
    ),
    config=AuditEvalConfig,
    evaluate=evaluate_audit,
    size="n_prompts",
)
