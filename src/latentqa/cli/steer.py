"""``latentqa steer``: steer the target toward a control with the decoder's loss."""

from __future__ import annotations

import argparse
import itertools
import json
import textwrap

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.steer.config import SteerConfig

SAMPLE_PROMPTS = (
    "Hi! How are you doing today?",
    "What should I cook for dinner tonight?",
    "Tell me something interesting about octopuses.",
)


def side_by_side(before: str, after: str, width: int = 48) -> str:
    """Two wrapped columns, ``before`` left and ``after`` right, under a header."""
    left = textwrap.wrap(before, width) or [""]
    right = textwrap.wrap(after, width) or [""]
    rows = [("before steering", "after steering"), ("-" * width, "-" * width)]
    rows += itertools.zip_longest(left, right, fillvalue="")
    return "\n".join(f"  {a:<{width}} | {b}" for a, b in rows)


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
        "--qa",
        nargs=2,
        action="append",
        default=None,
        metavar=("QUESTION", "ANSWER"),
        help="a control pair (repeat for several; added after --control's pairs)",
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="print completions of sample prompts before and after steering, side by side",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=40, help="length of --generate completions"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_steer)


def run_steer(args: argparse.Namespace) -> int:
    from latentqa.generation import generate_texts
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
            before = generate_texts(
                model, steerable.tokenizer, prompts, max_new_tokens=args.max_new_tokens
            )
        with steerable.steered() as model:
            after = generate_texts(
                model, steerable.tokenizer, prompts, max_new_tokens=args.max_new_tokens
            )
        for prompt, old, new in zip(prompts, before, after, strict=True):
            print(f"user: {prompt}")
            print(side_by_side(old, new))
            print()
    print(json.dumps(summary))
    return 0
