"""``latentqa read``: ask a trained decoder questions about a target's activations on dialogs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latentqa.errors import LatentQAError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "read",
        help="ask a decoder questions about the target's activations on a dialog",
        description=(
            "Run the target on a dialog (its system prompt masked, as in training), patch the "
            "activations of the rest into the decoder and print its answers to each question. "
            "The dialog is read once for all questions."
        ),
    )
    parser.add_argument("--system", default=None, help="system prompt (hidden from the decoder)")
    parser.add_argument("--user", default=None, help="user message")
    parser.add_argument("--assistant", default=None, help="assistant reply (optional)")
    parser.add_argument(
        "--dialogs",
        default=None,
        metavar="FILE.json",
        help="a JSON list of dialogs, each a list of {role, content} messages",
    )
    parser.add_argument(
        "-q", "--question", dest="questions", action="append", required=True,
        help="a question about the activations (repeat for several)",
    )  # fmt: skip
    parser.add_argument("--layer", type=int, default=None, help="read this target layer instead")
    parser.add_argument(
        "--target", default="smollm2-135m", help="target model spec (default: %(default)s)"
    )
    parser.add_argument(
        "--decoder", default=None, help="decoder folder from `latentqa train` (default: shipped)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--save-control",
        default=None,
        metavar="FILE.json",
        help="save the questions and decoded answers as a control for `latentqa steer`",
    )
    parser.set_defaults(func=run)


def dialogs_from_args(args: argparse.Namespace) -> list[list[dict[str, str]]]:
    """The dialogs to read: from ``--dialogs`` or from ``--system/--user/--assistant``."""
    single = [args.system, args.user, args.assistant]
    if args.dialogs is not None:
        if any(part is not None for part in single):
            raise LatentQAError("pass either --dialogs or --system/--user/--assistant, not both")
        path = Path(args.dialogs)
        try:
            data: Any = json.loads(path.read_text())
        except OSError as error:
            raise LatentQAError(f"cannot read {path}: {error.strerror or error}") from None
        except json.JSONDecodeError as error:
            raise LatentQAError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(data, list) or not data or not all(isinstance(d, list) for d in data):
            raise LatentQAError(
                f"{path} must hold a non-empty JSON list of dialogs (message lists)"
            )
        return data
    if args.user is None:
        raise LatentQAError("pass --user (and optionally --system, --assistant) or --dialogs")
    roles = ("system", "user", "assistant")
    return [
        [{"role": r, "content": c} for r, c in zip(roles, single, strict=True) if c is not None]
    ]


def run(args: argparse.Namespace) -> int:
    from latentqa.reader import Reader

    dialogs = dialogs_from_args(args)
    reader = Reader.load(args.target, args.decoder, device=args.device, dtype=args.dtype)
    answers = reader.ask_many(dialogs, args.questions, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, layer=args.layer)  # fmt: skip
    if args.save_control:
        from latentqa.steer.control import save_control

        pairs = [(q, a) for row in answers for q, a in zip(args.questions, row, strict=True)]
        save_control(args.save_control, [q for q, _ in pairs], [a for _, a in pairs])
    results = [
        {
            "dialog": dialog,
            "answers": [
                {"question": q, "answer": a} for q, a in zip(args.questions, row, strict=True)
            ],
        }
        for dialog, row in zip(dialogs, answers, strict=True)
    ]
    if args.json:
        report = {
            "target": args.target,
            "decoder": str(reader.decoder_path),
            "read_layers": reader.spec.read_layers if args.layer is None else [args.layer],
            "results": results,
        }
        print(json.dumps(report))
        return 0
    for index, result in enumerate(results):
        if len(results) > 1:
            print(f"dialog {index + 1}:")
        for message in result["dialog"]:
            print(f"  {message['role']}: {message['content']}")
        for item in result["answers"]:
            print(f"Q: {item['question']}")
            print(f"A: {item['answer']}")
        if index < len(results) - 1:
            print()
    return 0
