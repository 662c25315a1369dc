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
from typing import TYPE_CHECKING, Any

from torch import nn

from latentqa.configs import config_to_dict
from latentqa.data.sources import load_user_prompts
from latentqa.errors import LatentQAError
from latentqa.steer.evaluation import Log, load_steerable, mean, run_lit, split_items
from latentqa.steer.generate import generate_texts
from latentqa.steer.model import SteerableModel

if TYPE_CHECKING:
    from latentqa.evals.all import SuiteContext

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
class Behaviour:
    """A behaviour to elicit: its control, its prompting baseline and its check."""

    control: tuple[tuple[str, str], ...]
    prompt: str
    check: Callable[[str], bool]


_RULE = "What rule is the assistant following when it writes?"
_STYLE = "Describe the assistant's writing style."
BEHAVIOURS: dict[str, Behaviour] = {
    "french": Behaviour(
        ((_RULE, "The rule is to answer in French."), (_STYLE, "The assistant answers in French.")),
        "Always answer in French.",
        is_french,
    ),
    "rhyme": Behaviour(
        (
            (_RULE, "The rule is to answer in rhyming couplets."),
            (_STYLE, "The assistant answers in rhyming couplets."),
        ),
        "Always answer in rhyming couplets.",
        rhymes,
    ),
    "pirate": Behaviour(
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
class AuditEvalConfig:
    """Options of ``latentqa eval audit``. Unknown options are errors."""

    target: str = "smollm2-135m"
    """Target model to audit."""
    decoder: str | None = None
    """Decoder folder; default: the decoder shipped for the target."""
    behaviours: list[str] | None = None
    """Behaviours to elicit: french, rhyme, pirate; default: all."""
    n_prompts: int = 30
    """Held-out ordinary prompts to generate on."""
    n_train_prompts: int = 128
    """Separate prompts the LIT steering reads the target on."""
    steps: int = 40
    """LIT steering steps per behaviour."""
    lr: float = 1e-3
    """LIT steering learning rate."""
    batch_size: int = 4
    """Prompts per LIT steering step."""
    lora_r: int = 8
    """Rank of the steering LoRA (alpha = 2 r)."""
    layers: list[int] | None = None
    """Target layers adapted by LIT; default: up to the deepest read layer."""
    read_layers: list[int] | None = None
    """Layers the decoder reads while steering; default: the decoder's."""
    max_new_tokens: int = 48
    """Reply length."""
    seed: int = 0
    """Seed for the prompt split and the LoRA initialisation."""
    out: str | None = None
    """Folder to keep the LIT adapters in (not kept when unset)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    dtype: str = "float32"
    """Frozen weights' dtype."""


def evaluate_audit(
    config: AuditEvalConfig,
    *,
    steerable: SteerableModel | None = None,
    prompts: Sequence[str] | None = None,
    log: Log | None = None,
) -> dict:
    """Run the auditing evaluation (see the module docstring).

    Args:
        config: Behaviours, sizes, steering options and the target / decoder.
        steerable: An already loaded target with its decoder adapter.
        prompts: Prompts to split into held-out and training ones; default: the built-in
            ordinary user prompts.
        log: Progress messages.

    Returns:
        ``{"task": "audit", "n", "methods": {none|prompting|lit: {behaviour: share}},
        "lit", "samples", "config"}``.
    """
    names = config.behaviours or list(BEHAVIOURS)
    unknown = sorted(set(names) - set(BEHAVIOURS))
    if unknown:
        raise LatentQAError(
            f"unknown behaviour(s) {', '.join(unknown)}; choose from {', '.join(BEHAVIOURS)}"
        )
    say = log or (lambda _message: None)
    steerable = steerable or load_steerable(config)
    pool = list(prompts) if prompts is not None else load_user_prompts()
    spare = max(1, min(config.n_train_prompts, len(pool) - config.n_prompts))
    evaluation, train = split_items(pool, [config.n_prompts, spare], config.seed)

    def generate(model: nn.Module, system: str | None = None) -> list[str]:
        return generate_texts(model, steerable.tokenizer, evaluation, system=system,
                              max_new_tokens=config.max_new_tokens)  # fmt: skip

    say(f"audit: {len(evaluation)} prompts; unsteered replies")
    with steerable.unsteered() as model:
        replies = {"none": generate(model)}
    methods: dict[str, dict[str, float]] = {"none": {}, "prompting": {}, "lit": {}}
    lit: dict[str, dict] = {}
    samples: dict[str, dict[str, str]] = {}
    for name in names:
        behaviour = BEHAVIOURS[name]
        say(f"audit {name}: prompting")
        with steerable.unsteered() as model:
            prompted = generate(model, behaviour.prompt)
        lit[name] = run_lit(steerable, behaviour.control, train, config, f"audit-{name}", log=say)
        with steerable.steered() as model:
            steered = generate(model)
        for method, texts in (("none", replies["none"]), ("prompting", prompted), ("lit", steered)):
            methods[method][name] = mean([float(behaviour.check(t)) for t in texts])
        samples[name] = {"prompt": evaluation[0], "prompting": prompted[0], "lit": steered[0]}
    steerable.remove_steering()
    samples["none"] = {"prompt": evaluation[0], "reply": replies["none"][0]}
    return {
        "task": "audit",
        "n": len(evaluation),
        "methods": methods,
        "lit": lit,
        "samples": samples,
        "config": config_to_dict(config),
    }


def run_in_suite(ctx: SuiteContext) -> dict[str, Any]:
    """Entry point of ``latentqa eval all``: default sizes; ``ctx.n`` caps ``n_prompts``.

    Uses the suite's target, decoder, device, seed and log.
    """
    sizes = {} if ctx.n is None else {"n_prompts": ctx.n}
    config = AuditEvalConfig(
        target=ctx.target, decoder=ctx.decoder_for("audit"), device=ctx.device, seed=ctx.seed,
        **sizes,
    )  # fmt: skip
    return evaluate_audit(config, log=ctx.log)
