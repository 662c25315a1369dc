"""``latentqa train``: Latent Interpretation Tuning of a decoder."""

from __future__ import annotations

import argparse
import json

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.train.config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a decoder that reads a target model's activations (LIT)",
        description=(
            "Fine-tune a LoRA copy of the target to answer questions about the target's "
            "activations patched into its hidden states. Writes the adapter, latentqa.json, "
            "metrics.jsonl (held-out loss with real / zeroed / shuffled activations) and "
            "loss.png to --out. Works under torchrun / accelerate launch for several GPUs."
        ),
    )
    add_config_arguments(parser, TrainConfig)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --out"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="start over in a non-empty --out (a finished or unfinished run, other files): "
        "its checkpoints and metrics are replaced, then its adapter and latentqa.json",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from latentqa.train.trainer import train

    config = config_from_args(TrainConfig, args)
    result = train(config, resume=args.resume, force=args.force, progress=not args.no_progress)
    print(json.dumps({"out": str(result.out), "steps": result.steps, **result.final_metrics}))
    return 0
