"""``latentqa data replies`` and ``latentqa data user-turns``: a folder made from another.

Both read a folder in the release layout and write a new one beside it, so that a
decoder trains on the evaluation's form: the target's own replies (set B) or ordinary
user turns under the hidden prompts (set A).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL

__all__ = ["FOLDER_COMMANDS", "register_folder_commands", "run_folder_command"]

FOLDER_COMMANDS = ("replies", "user-turns")
"""The ``latentqa data`` subcommands this module owns."""


def register_folder_commands(commands: Any) -> None:
    """Add ``replies`` and ``user-turns`` to the ``latentqa data`` subparsers."""
    replies = commands.add_parser(
        "replies",
        help="add the target's own replies under the hidden system prompts (set B's form)",
        description=(
            "Give every system behaviour of a folder (LatentQA release layout: system.json, "
            "qa.json optional) the target's greedy reply to its system prompt and user turn, "
            "written to OUT/system.json (qa.json copied). A decoder trained on OUT reads "
            "the user turn and that reply, as `eval system-prompt --set replies` does. "
            "Replies are cached in OUT/completions-cache.jsonl: a stopped run continues."
        ),
    )
    replies.add_argument("--data", required=True, type=Path, help="input folder (system.json)")
    replies.add_argument("--out", required=True, type=Path, help="output folder")
    replies.add_argument("--target", default=EMBEDDED_MODEL, help="target model that replies")
    replies.add_argument(
        "--max-new-tokens", type=int, default=48, help="most tokens per reply (set B: 48)"
    )
    replies.add_argument("--batch-size", type=int, default=16, help="generation batch")
    replies.add_argument(
        "--limit", type=int, default=None, help="keep at most N behaviours (a seeded sample)"
    )
    replies.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    replies.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    turns = commands.add_parser(
        "user-turns",
        help="re-pair hidden system prompts with ordinary user turns (set A's form)",
        description=(
            "Give every system behaviour of a folder (release layout) user turns drawn "
            "from another folder's ordinary ones, written to OUT/system.json (qa.json "
            "copied). The release's user turns were written for their prompts and often "
            "say what the behaviour is about; `eval system-prompt` asks about user turns "
            "that do not, so a decoder must read the prompt's imprint. Draw the turns "
            "from a training split (DATA/train of `data build`), never a held-out one."
        ),
    )
    turns.add_argument("--data", required=True, type=Path, help="input folder (system.json)")
    pool_help = "folder whose system behaviours' user turns are drawn (e.g. DATA/train)"
    turns.add_argument("--users-from", required=True, type=Path, help=pool_help)
    turns.add_argument("--out", required=True, type=Path, help="output folder")
    per_help = "behaviours written per input behaviour, each with another user turn"
    turns.add_argument("--per-behavior", type=int, default=1, help=per_help)
    turns.add_argument("--seed", type=int, default=0, help="seed of the draws")


def run_folder_command(args: argparse.Namespace) -> int:
    """Run ``latentqa data replies`` or ``user-turns``; returns the exit status."""
    if args.data_command == "replies":
        return _replies(args)
    return _user_turns(args)


def _replies(args: argparse.Namespace) -> int:
    from latentqa.data.derived_folder import require_system_json
    from latentqa.data.replies import make_generate
    from latentqa.data.system_replies import add_replies, describe
    from latentqa.models import load_model

    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise LatentQAError("--max-new-tokens and --batch-size must be positive")
    require_system_json(args.data)  # before the model loads
    start = time.perf_counter()
    model, tokenizer = load_model(args.target, device=args.device, dtype="float32")
    generate = make_generate(
        model, tokenizer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    generator_id = f"{args.target}|max_new_tokens={args.max_new_tokens}"
    summary = add_replies(
        args.data, args.out, generate, generator_id, limit=args.limit, seed=args.seed
    )
    print(f"{describe(summary, args.out)} in {time.perf_counter() - start:.1f} s")
    return 0


def _user_turns(args: argparse.Namespace) -> int:
    from latentqa.data.user_turns import swap_user_turns

    done = swap_user_turns(
        args.data, args.users_from, args.out, per_behavior=args.per_behavior, seed=args.seed
    )
    pool = done["user_turns"]
    print(f"wrote {args.out / 'system.json'}: {done['behaviors']} behaviours ({pool} user turns)")
    return 0
