"""``latentqa eval sentiment``: steer a model toward positive and toward negative replies.

Replies to held-out neutral prompts (|VADER compound| of the prompt below 0.3) are
generated greedily and scored with VADER. Per method: the mean compound score, the
share of replies with the intended polarity (compound above 0.05 / below -0.05, VADER's
usual cut-offs), and fluency: the per-token perplexity of the replies under the
unsteered model, and its ratio to the unsteered replies' perplexity. Methods, on the
same prompts in the same run:

- ``none``: the unsteered target;
- ``prompting``: a system prompt asking for very positive / negative answers;
- ``vector``: a steering vector (RepE / ActAdd style): the mean activation difference
  between the prompts under a positive and under a negative instruction, added at a
  layer with a coefficient tuned on separate prompts (best intended shift among the
  settings whose perplexity stays within ``max_ppl_ratio`` of unsteered);
- ``lit``: LIT steering, the target's LoRA trained with the decoder's loss on a
  control saying that the assistant's tone is cheerful / gloomy.

LIT's strength (its adapter's output scale) is tuned like the vector's coefficient, on
the same separate prompts under the same perplexity limit.

Target: LIT moves the mean compound further in the intended direction than prompting
and at least as far as the steering vector, with perplexity no more than 1.5x the
unsteered model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from latentqa.data.sources import load_user_prompts
from latentqa.errors import LatentQAError
from latentqa.evals.steering import (
    SteeringResult,
    SteeringRun,
    SteeringTask,
    VectorEvalOptions,
    run_steering,
    steering_evaluation,
)
from latentqa.evals.steering_methods import Log, load_steerable, mean, split_items
from latentqa.generation import generate_texts, perplexity, reply_logprobs
from latentqa.steer.model import SteerableModel
from latentqa.steer.vector import steering_vector
from latentqa.typed_config import config_to_dict

CONTROLS: dict[str, list[tuple[str, str]]] = {
    "positive": [
        ("What is the emotional tone of the assistant's replies?", "Its replies are cheerful."),
        ("How does the assistant sound when it replies?", "The assistant sounds cheerful."),
    ],
    "negative": [
        ("What is the emotional tone of the assistant's replies?", "Its replies are gloomy."),
        ("How does the assistant sound when it replies?", "The assistant sounds gloomy."),
    ],
}
PROMPTING = {
    "positive": "Answer in a very positive way.",
    "negative": "Answer in a very negative way.",
}
# Contrasting instructions whose activation difference is the steering vector.
VECTOR_INSTRUCTIONS = {
    "positive": "You are extremely positive, happy and enthusiastic about everything.",
    "negative": "You are extremely negative, sad and pessimistic about everything.",
}
SIGN = {"positive": 1.0, "negative": -1.0}
POLARITY_CUTOFF = 0.05


@dataclass
class SentimentEvalConfig(VectorEvalOptions):
    """Options of ``latentqa eval sentiment``. Unknown options are errors."""

    n_prompts: int = 50
    """Held-out neutral prompts to generate on."""
    n_tune_prompts: int = 16
    """Separate prompts on which the steering vector's coefficient and LIT's strength are
    tuned."""
    n_vector_prompts: int = 32
    """Separate prompts whose activations define the steering vector."""
    n_train_prompts: int = 128
    """Separate prompts the LIT steering reads the target on."""
    coefficients: list[float] | None = None
    """Candidate steering-vector coefficients; default: 1, 2, 4, 8, 16."""
    max_new_tokens: int = 40
    """Reply length."""


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound scores in [-1, 1] (needs the ``vaderSentiment`` package)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise LatentQAError(
            "sentiment scoring needs vaderSentiment: pip install vaderSentiment"
        ) from None
    analyzer = SentimentIntensityAnalyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in texts]


def neutral_prompts(limit: float = 0.3) -> list[str]:
    """Built-in user prompts whose own VADER compound is within ``±limit``."""
    prompts = load_user_prompts()
    return [p for p, s in zip(prompts, vader_scores(prompts), strict=True) if abs(s) < limit]


def _metrics(
    steerable: SteerableModel,
    prompts: list[str],
    replies: list[str],
    direction: str | None,
    scores: list[float],
) -> dict[str, object]:
    with steerable.unsteered() as model:
        ppl = perplexity(reply_logprobs(model, steerable.tokenizer, prompts, replies))
    shares = {
        "positive_share": mean([float(s > POLARITY_CUTOFF) for s in scores]),
        "negative_share": mean([float(s < -POLARITY_CUTOFF) for s in scores]),
    }
    return {
        "mean_compound": mean(scores),
        "intended_share": shares[f"{direction}_share"] if direction else None,
        **shares,
        "perplexity": ppl,
    }


def _check(methods: dict[str, dict], max_ratio: float) -> dict[str, object]:
    """Does LIT shift the compound more than prompting and at least as much as the vector,
    within the perplexity limit?"""
    base = float(methods["none"]["mean_compound"])
    checks: dict[str, object] = {}
    for direction, sign in SIGN.items():
        lit = methods[f"lit {direction}"]
        lit_shift = sign * (float(lit["mean_compound"]) - base)
        vector_shift = sign * (float(methods[f"vector {direction}"]["mean_compound"]) - base)
        prompting_shift = sign * (float(methods[f"prompting {direction}"]["mean_compound"]) - base)
        checks[direction] = {
            "lit_shift": lit_shift,
            "vector_shift": vector_shift,
            "prompting_shift": prompting_shift,
            "lit_beats_prompting": lit_shift > prompting_shift,
            "lit_beats_vector": lit_shift >= vector_shift,
            "lit_fluent": float(lit["ppl_ratio"]) <= max_ratio,
        }
    checks["target_met"] = all(
        c["lit_beats_prompting"] and c["lit_beats_vector"] and c["lit_fluent"]
        for c in checks.values()
        if isinstance(c, dict)
    )
    return checks


class SentimentTask(SteeringTask):
    """Replies to neutral prompts, steered toward positive and toward negative."""

    name = "sentiment"
    directions = tuple(SIGN)
    default_coefficients = (1.0, 2.0, 4.0, 8.0, 16.0)
    options: SentimentEvalConfig

    def __init__(
        self, steerable: SteerableModel, options: SentimentEvalConfig, prompts: Sequence[str]
    ) -> None:
        super().__init__(steerable, options)
        pool = list(prompts)
        sizes = [options.n_prompts, options.n_tune_prompts, options.n_vector_prompts]
        spare = max(1, min(options.n_train_prompts, len(pool) - sum(sizes)))
        self.evaluation, self.tune, self.vector_prompts, self.train = split_items(
            pool, [*sizes, spare], options.seed
        )
        self.limit = float("inf")

    def _generate(self, model: nn.Module, items: list[str], system: str | None = None) -> list[str]:
        return generate_texts(
            model,
            self.steerable.tokenizer,
            items,
            system=system,
            max_new_tokens=self.options.max_new_tokens,
        )

    def _tune_ppl(self, texts: list[str]) -> float:
        with self.steerable.unsteered() as model:
            return perplexity(reply_logprobs(model, self.steerable.tokenizer, self.tune, texts))

    def measure(self, model: nn.Module, direction: str | None, prompted: bool = False) -> Any:
        system = PROMPTING[direction] if prompted and direction else None
        return self._generate(model, self.evaluation, system)

    def prepare(self) -> None:
        with self.steerable.unsteered() as model:
            tune_replies = self._generate(model, self.tune)
        self.limit = self.options.max_ppl_ratio * self._tune_ppl(tune_replies)

    def vectors(self, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Per layer, mean activation under the positive minus the negative instruction."""
        dialogs = {
            side: [
                [{"role": "system", "content": text}, {"role": "user", "content": p}]
                for p in self.vector_prompts
            ]
            for side, text in VECTOR_INSTRUCTIONS.items()
        }
        with self.steerable.unsteered() as model:
            return {
                layer: steering_vector(
                    model,
                    self.steerable.tokenizer,
                    dialogs["positive"],
                    dialogs["negative"],
                    layer,
                    n_masked=1,
                    blocks=self.steerable.blocks,
                )
                for layer in layers
            }

    def sign(self, direction: str | None) -> float:
        return SIGN[str(direction)]

    def tune_measure(self, model: nn.Module) -> list[str]:
        return self._generate(model, self.tune)

    def tune_score(self, measured: list[str], direction: str | None) -> tuple[float, bool]:
        return self.sign(direction) * mean(vader_scores(measured)), self._tune_ppl(
            measured
        ) <= self.limit

    def control(self, direction: str | None) -> list[tuple[str, str]]:
        return CONTROLS[str(direction)]

    def lit_name(self, direction: str | None) -> str:
        return f"sentiment-{direction}"

    def lit_prompts(self) -> list[str]:
        return self.train

    def result(self, run: SteeringRun) -> SteeringResult:
        order = ["none"] + [
            f"{m} {d}" for d in self.directions for m in ("prompting", "vector", "lit")
        ]
        replies = {name: run.measured[name] for name in order}
        methods = {}
        per_item = {name: vader_scores(texts) for name, texts in replies.items()}
        for name, texts in replies.items():
            direction = name.split()[-1] if " " in name else None
            methods[name] = _metrics(
                self.steerable, self.evaluation, texts, direction, per_item[name]
            )
        for values in methods.values():
            values["ppl_ratio"] = float(values["perplexity"]) / float(methods["none"]["perplexity"])
        samples = {
            name: [
                {"prompt": p, "reply": r}
                for p, r in zip(self.evaluation[:3], texts[:3], strict=False)
            ]
            for name, texts in replies.items()
        }
        return SteeringResult(
            task="sentiment",
            n=len(self.evaluation),
            methods=methods,
            checks=_check(methods, self.options.max_ppl_ratio),
            vector=dict(run.vector),
            lit=dict(run.lit),
            samples=samples,
            per_item=per_item,
            config=config_to_dict(self.options),
        )


def evaluate_sentiment(
    config: SentimentEvalConfig,
    *,
    steerable: SteerableModel | None = None,
    prompts: Sequence[str] | None = None,
    log: Log | None = None,
) -> SteeringResult:
    """Run the sentiment evaluation (see the module docstring).

    Args:
        config: Sizes, steering options and the target / decoder.
        steerable: An already loaded target with its decoder adapter.
        prompts: Neutral prompts to draw every split from; default: :func:`neutral_prompts`.
        log: Progress messages.

    Returns:
        Methods ``none``, ``prompting|vector|lit positive|negative``, with the checks,
        the tuned vectors, the LIT losses and samples.
    """
    pool = list(prompts) if prompts is not None else neutral_prompts()
    task = SentimentTask(steerable or load_steerable(config), config, pool)
    if log:
        log(f"sentiment: {len(task.evaluation)} prompts; unsteered replies, steering vectors")
    return run_steering(task, log)


EVALUATION = steering_evaluation(
    name="sentiment",
    help="steer toward positive / negative replies: LIT vs prompting vs a steering vector",
    description=(
        "Generate on held-out neutral prompts and score with VADER (mean compound, share "
        "with the intended polarity) and fluency (perplexity under the unsteered model)."
    ),
    config=SentimentEvalConfig,
    evaluate=evaluate_sentiment,
    size="n_prompts",
)
