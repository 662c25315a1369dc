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

Target: LIT moves the mean compound further in the intended direction than the
steering vector, with perplexity no more than 1.5x the unsteered model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from latentqa.configs import config_to_dict
from latentqa.data.sources import load_user_prompts
from latentqa.errors import LatentQAError
from latentqa.steer.evaluation import (
    Log,
    load_steerable,
    mean,
    run_lit,
    split_items,
    vector_settings,
    vector_steered,
)
from latentqa.steer.generate import generate_texts, perplexity, reply_logprobs
from latentqa.steer.model import SteerableModel
from latentqa.steer.vector import steering_vector, tune_setting

if TYPE_CHECKING:
    from latentqa.evals.all import SuiteContext

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
class SentimentEvalConfig:
    """Options of ``latentqa eval sentiment``. Unknown options are errors."""

    target: str = "smollm2-135m"
    """Target model to steer."""
    decoder: str | None = None
    """Decoder folder; default: the decoder shipped for the target."""
    n_prompts: int = 50
    """Held-out neutral prompts to generate on."""
    n_tune_prompts: int = 8
    """Separate prompts on which the steering vector's coefficient is tuned."""
    n_vector_prompts: int = 32
    """Separate prompts whose activations define the steering vector."""
    n_train_prompts: int = 128
    """Separate prompts the LIT steering reads the target on."""
    steps: int = 40
    """LIT steering steps per direction."""
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
    vector_layers: list[int] | None = None
    """Candidate layers for the steering vector (tuned with the coefficient); default:
    a third of the depth."""
    coefficients: list[float] | None = None
    """Candidate steering-vector coefficients; default: 1, 2, 4, 8, 16."""
    max_ppl_ratio: float = 1.5
    """Fluency limit in tuning and in the target check: perplexity / unsteered."""
    max_new_tokens: int = 40
    """Reply length."""
    seed: int = 0
    """Seed for the prompt split and the LoRA initialisation."""
    out: str | None = None
    """Folder to keep the LIT adapters in (not kept when unset)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    dtype: str = "float32"
    """Frozen weights' dtype."""


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
    steerable: SteerableModel, prompts: list[str], replies: list[str], direction: str | None
) -> dict[str, object]:
    scores = vader_scores(replies)
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


def _vectors(
    steerable: SteerableModel, prompts: Sequence[str], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Per layer, mean activation under the positive minus the negative instruction."""
    dialogs = {
        side: [[{"role": "system", "content": text}, {"role": "user", "content": p}]
               for p in prompts]
        for side, text in VECTOR_INSTRUCTIONS.items()
    }  # fmt: skip
    with steerable.unsteered() as model:
        return {
            layer: steering_vector(
                model,
                steerable.tokenizer,
                dialogs["positive"],
                dialogs["negative"],
                layer,
                n_masked=1,
                layers_path=steerable.layers_path,
            )
            for layer in layers
        }


def _check(methods: dict[str, dict], max_ratio: float) -> dict[str, object]:
    """Does LIT shift the compound more than the vector, within the perplexity limit?"""
    base = float(methods["none"]["mean_compound"])
    checks: dict[str, object] = {}
    for direction, sign in SIGN.items():
        lit = methods[f"lit {direction}"]
        lit_shift = sign * (float(lit["mean_compound"]) - base)
        vector_shift = sign * (float(methods[f"vector {direction}"]["mean_compound"]) - base)
        checks[direction] = {
            "lit_shift": lit_shift,
            "vector_shift": vector_shift,
            "lit_beats_vector": lit_shift > vector_shift,
            "lit_fluent": float(lit["ppl_ratio"]) <= max_ratio,
        }
    checks["target_met"] = all(
        c["lit_beats_vector"] and c["lit_fluent"] for c in checks.values() if isinstance(c, dict)
    )
    return checks


def evaluate_sentiment(
    config: SentimentEvalConfig,
    *,
    steerable: SteerableModel | None = None,
    prompts: Sequence[str] | None = None,
    log: Log | None = None,
) -> dict:
    """Run the sentiment evaluation (see the module docstring).

    Args:
        config: Sizes, steering options and the target / decoder.
        steerable: An already loaded target with its decoder adapter.
        prompts: Neutral prompts to draw every split from; default: :func:`neutral_prompts`.
        log: Progress messages.

    Returns:
        ``{"task": "sentiment", "n", "methods": {name: metrics}, "checks", "vector",
        "lit", "samples", "config"}``.
    """
    say = log or (lambda _message: None)
    steerable = steerable or load_steerable(config)
    tokenizer = steerable.tokenizer
    pool = list(prompts) if prompts is not None else neutral_prompts()
    sizes = [config.n_prompts, config.n_tune_prompts, config.n_vector_prompts]
    spare = max(1, min(config.n_train_prompts, len(pool) - sum(sizes)))
    evaluation, tune, vector_prompts, train = split_items(pool, [*sizes, spare], config.seed)

    def generate(model: nn.Module, items: list[str], system: str | None = None) -> list[str]:
        return generate_texts(model, tokenizer, items, system=system,
                              max_new_tokens=config.max_new_tokens)  # fmt: skip

    def tune_ppl(texts: list[str]) -> float:
        with steerable.unsteered() as model:
            return perplexity(reply_logprobs(model, tokenizer, tune, texts))

    say(f"sentiment: {len(evaluation)} prompts; unsteered replies, steering vectors")
    with steerable.unsteered() as model:
        replies = {"none": generate(model, evaluation)}
        tune_replies = generate(model, tune)
    limit = config.max_ppl_ratio * tune_ppl(tune_replies)  # (not nested: adapters toggle)
    layers = config.vector_layers or [steerable.n_layers // 3]
    vectors = _vectors(steerable, vector_prompts, layers)
    settings = vector_settings(layers, config.coefficients or [1.0, 2.0, 4.0, 8.0, 16.0])
    chosen: dict[str, dict] = {}
    lit: dict[str, dict] = {}
    for direction, sign in SIGN.items():
        with steerable.unsteered() as model:
            replies[f"prompting {direction}"] = generate(model, evaluation, PROMPTING[direction])

        def trial(setting: tuple[int, float], sign: float = sign) -> tuple[float, bool]:
            layer, c = setting
            with vector_steered(steerable, layer, vectors[layer], sign * c) as model:
                texts = generate(model, tune)
            return sign * mean(vader_scores(texts)), tune_ppl(texts) <= limit

        say(f"sentiment {direction}: tuning the steering vector over {len(settings)} settings")
        (layer, c), trials = tune_setting(trial, settings)
        chosen[direction] = {"layer": layer, "coefficient": c,
                             "trials": [[*s, score, ok] for s, score, ok in trials]}  # fmt: skip
        with vector_steered(steerable, layer, vectors[layer], sign * c) as model:
            replies[f"vector {direction}"] = generate(model, evaluation)
        lit[direction] = run_lit(steerable, CONTROLS[direction], train, config,
                                 f"sentiment-{direction}", log=say)  # fmt: skip
        with steerable.steered() as model:
            replies[f"lit {direction}"] = generate(model, evaluation)
    steerable.remove_steering()
    methods = {}
    for name, texts in replies.items():
        direction = name.split()[-1] if " " in name else None
        methods[name] = _metrics(steerable, evaluation, texts, direction)
    for values in methods.values():
        values["ppl_ratio"] = float(values["perplexity"]) / float(methods["none"]["perplexity"])
    samples = {name: [{"prompt": p, "reply": r} for p, r in zip(evaluation[:3], texts[:3],
                                                                strict=False)]
               for name, texts in replies.items()}  # fmt: skip
    return {
        "task": "sentiment",
        "n": len(evaluation),
        "methods": methods,
        "checks": _check(methods, config.max_ppl_ratio),
        "vector": chosen,
        "lit": lit,
        "samples": samples,
        "config": config_to_dict(config),
    }


def run_in_suite(ctx: SuiteContext) -> dict[str, Any]:
    """Entry point of ``latentqa eval all``: default sizes; ``ctx.n`` caps ``n_prompts``.

    Uses the suite's target, decoder, device, seed and log.
    """
    sizes = {} if ctx.n is None else {"n_prompts": ctx.n}
    config = SentimentEvalConfig(
        target=ctx.target, decoder=ctx.decoder_for("sentiment"), device=ctx.device, seed=ctx.seed,
        **sizes,
    )  # fmt: skip
    return evaluate_sentiment(config, log=ctx.log)
