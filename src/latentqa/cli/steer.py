"""``latentqa steer`` and the control evaluations (``latentqa eval sentiment|crows-pairs|audit``).

``register(subparsers)`` adds the ``steer`` command; ``add_eval_tasks(tasks)`` adds the
three evaluations to the ``eval`` command's task subparsers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.steer.config import SteerConfig

SAMPLE_PROMPTS = (
    "Hi! How are you doing today?",
    "What should I cook for dinner tonight?",
    "Tell me something interesting about octopuses.",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "steer",
        help="steer the target with the decoder's loss toward a control (LIT control)",
        description=(
            "Train LoRA adapters on chosen layers of the target so that the frozen decoder, "
            "reading the target's activations on ordinary prompts, gives the control's "
            "answers to its questions. Writes the adapter (peft, safetensors), steer.json, "
            "metrics.jsonl and loss.png to --out. Load it with "
            "latentqa.steer.load_steered(target, OUT) or peft's PeftModel.from_pretrained."
        ),
    )
    add_config_arguments(parser, SteerConfig)
    parser.add_argument(
        "--qa", nargs=2, action="append", default=None, metavar=("QUESTION", "ANSWER"),
        help="a control pair (repeat for several; added after --control's pairs)",
    )  # fmt: skip
    parser.add_argument(
        "--generate", action="store_true",
        help="print completions of sample prompts before and after steering",
    )  # fmt: skip
    parser.add_argument(
        "--max-new-tokens", type=int, default=40, help="length of --generate completions"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_steer)


def run_steer(args: argparse.Namespace) -> int:
    from latentqa.steer.generate import generate_texts
    from latentqa.steer.trainer import steer

    config = config_from_args(SteerConfig, args)
    result = steer(config, args.qa, progress=not args.no_progress)
    summary = {
        "out": str(result.out),
        "steps": result.steps,
        "initial_loss": result.initial_loss,
        "final_loss": result.final_loss,
        "layers": result.steerable.steer_layers,
    }
    if args.generate:
        steerable = result.steerable
        prompts = list(SAMPLE_PROMPTS)
        with steerable.unsteered() as model:
            before = generate_texts(model, steerable.tokenizer, prompts,
                                    max_new_tokens=args.max_new_tokens)  # fmt: skip
        with steerable.steered() as model:
            after = generate_texts(model, steerable.tokenizer, prompts,
                                   max_new_tokens=args.max_new_tokens)  # fmt: skip
        for prompt, old, new in zip(prompts, before, after, strict=True):
            print(f"user: {prompt}\n  before: {old}\n  after:  {new}\n")
    print(json.dumps(summary))
    return 0


def _eval_runner(evaluate: Callable[..., dict], config_cls: type) -> Callable[..., int]:
    def run(args: argparse.Namespace) -> int:
        from latentqa.evals.report import markdown_table

        config = config_from_args(config_cls, args)
        log = lambda message: print(message, file=sys.stderr)  # noqa: E731
        result = evaluate(config, log=log)
        print(markdown_table(result))
        checks = result.get("checks")
        if checks is not None:
            print(f"\nchecks: {json.dumps(checks)}")
        if args.json:
            print(json.dumps(result))
        return 0

    return run


def add_eval_tasks(tasks: argparse._SubParsersAction) -> None:
    """Add ``sentiment``, ``crows-pairs`` and ``audit`` to ``latentqa eval``'s tasks."""
    from latentqa.evals.audit import AuditEvalConfig, evaluate_audit
    from latentqa.evals.crows_pairs import CrowsPairsEvalConfig, evaluate_crows_pairs
    from latentqa.evals.sentiment import SentimentEvalConfig, evaluate_sentiment

    specs = [
        ("sentiment", SentimentEvalConfig, evaluate_sentiment,
         "steer toward positive / negative replies: LIT vs prompting vs a steering vector",
         "Generate on held-out neutral prompts and score with VADER (mean compound, share "
         "with the intended polarity) and fluency (perplexity under the unsteered model)."),
        ("crows-pairs", CrowsPairsEvalConfig, evaluate_crows_pairs,
         "debias: share of CrowS-Pairs rows where the model prefers the stereotype",
         "Stereotypical share before and after debiasing (LIT, prompting, steering "
         "vector), and perplexity on neutral text (TruthfulQA answers)."),
        ("audit", AuditEvalConfig, evaluate_audit,
         "elicit hidden behaviours (French, rhyme, pirate) described only in a control",
         "How often each behaviour appears before and after LIT steering, against "
         "prompting, by automatic checks."),
    ]  # fmt: skip
    for name, config_cls, evaluate, help_text, description in specs:
        parser = tasks.add_parser(name, help=help_text, description=description)
        add_config_arguments(parser, config_cls)
        parser.add_argument(
            "--json", action="store_true", help="print the result as one JSON line last"
        )
        parser.set_defaults(func=_eval_runner(evaluate, config_cls))
