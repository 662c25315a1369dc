"""``latentqa read``: ask a trained decoder questions about a target's activations on dialogs."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.decoder.folder import DecoderSpec, preflight_decoder
from latentqa.errors import LatentQAError
from latentqa.json_files import read_json
from latentqa.models import EMBEDDED_MODEL
from latentqa.questions import check_questions

if TYPE_CHECKING:
    from latentqa.picks import Choice
    from latentqa.scoring import Answer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "read",
        help="ask a decoder questions about the target's activations on a dialog",
        description=(
            "Run the target on a dialog (its system prompt masked, as in training), patch the "
            "activations of the rest into the decoder and print its answers to each question. "
            "The dialog is read once for all questions. Beside each answer, its evidence: how "
            "much more likely (nats per answer token) the answer is with this dialog's "
            "activations than with 16 reference dialogs' on average; 'read' above the "
            "decoder's threshold, else 'guessed' (it would say that of any dialog)."
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
        "-q",
        "--question",
        dest="questions",
        action="append",
        required=True,
        help="a question about the activations (repeat for several)",
    )
    parser.add_argument(
        "--subject",
        default=None,
        metavar="TEXT",
        help="read only the tokens of TEXT (its last occurrence in the last user turn), not "
        "the whole dialog: for decoders trained on subject tokens, such as "
        '`--decoder shipped:relations` with --user "Tell me about France." --subject France',
    )
    parser.add_argument(
        "--option",
        dest="options",
        action="append",
        default=None,
        metavar="TEXT",
        help="a candidate answer to the first question (repeat, at least two): prints each "
        "dialog's pick among them and, with several dialogs (conversations under one hidden "
        "prompt), the pick pooled over all of them; by yes/no margin for a decoder trained "
        "on yes/no questions",
    )
    parser.add_argument("--layer", type=int, default=None, help="read this target layer instead")
    parser.add_argument(
        "--target", default=EMBEDDED_MODEL, help="target model spec (default: %(default)s)"
    )
    parser.add_argument(
        "--decoder",
        default=None,
        help="decoder folder from `latentqa train`, or a shipped one: shipped:default (the "
        "default: reads hidden instructions from the dialog), shipped:relations (reads "
        "facts about a country from its name's tokens; pass --subject) or shipped:control "
        "(reads the tone of the last assistant reply and whether it relies on a stereotype)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="weights' dtype: float32 (default), bfloat16, or auto (bfloat16 where this "
        "machine runs it at least as fast as float32: a CUDA device that supports it, or a "
        "CPU whose bfloat16 matmuls measure at least as fast; else float32)",
    )
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
        data = read_json(path, "dialogs file")
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


def evidence_tag(answer: Answer) -> str:
    """``[read +1.23 nats/token]`` or ``[guessed -0.02 nats/token]`` for the text output."""
    return f"[{answer.label} {answer.evidence:+.2f} nats/token]"


def evidence_legend(threshold: float) -> str:
    """The one-line legend printed under the text output."""
    return (
        "evidence: how much more likely each answer is with this dialog's activations than "
        "with other dialogs' (16 reference dialogs, on average), in log-likelihood (nats) "
        f"per answer token; 'read' above {threshold:.2f}, else 'guessed': the decoder would "
        "say it of any dialog"
    )


def answer_record(question: str, answer: Answer) -> dict[str, Any]:
    """One answer in ``--json`` output: the text, its evidence and both log-likelihoods."""
    return {
        "question": question,
        "answer": answer.text,
        "evidence": answer.evidence,
        "read": answer.read,
        "logprob_real": answer.logprob_real,
        "logprob_reference": answer.logprob_reference,
        "logprob_zeroed": answer.logprob_zeroed,
    }


def choice_record(choice: Choice) -> dict[str, Any]:
    """The ``--option`` picks in ``--json`` output: scores per dialog, picks, pooled pick."""
    return {
        "options": choice.options,
        "scores": choice.scores,
        "picks": [choice.options[i] for i in choice.picks],
        "pooled_scores": choice.pooled,
        "pooled_pick": choice.options[choice.pooled_pick],
    }


def run(args: argparse.Namespace) -> int:
    from latentqa.chat import check_subject
    from latentqa.reader import Reader

    dialogs = dialogs_from_args(args)
    preflight_read(
        dialogs,
        args.questions,
        target=args.target,
        decoder=args.decoder,
        layer=args.layer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        device=args.device,
        dtype=args.dtype,
    )
    if args.options is not None:
        from latentqa.picks import check_options

        check_options(args.options)
        if args.layer is not None or args.subject is not None:
            raise LatentQAError("--option reads the decoder's own layers: drop --layer/--subject")
    if args.save_control and Path(args.save_control).is_dir():
        raise LatentQAError(f"--save-control {args.save_control} is a folder: name a JSON file")
    if args.subject is not None:
        for index, dialog in enumerate(dialogs):
            try:
                check_subject(dialog, args.subject)
            except LatentQAError as error:
                where = f"dialog {index + 1}: " if len(dialogs) > 1 else ""
                raise LatentQAError(f"{where}{error} (--subject)") from None
    reader = Reader.load(args.target, args.decoder, device=args.device, dtype=args.dtype)
    # --option reads the decoder's own layers, as the answers do: one read serves both.
    reads = reader.read_many(dialogs) if args.options is not None else None
    answers = reader.ask_many(
        dialogs,
        args.questions,
        evidence=True,
        reads=reads,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        layer=args.layer,
        subject=args.subject,
    )
    choice = None
    if args.options is not None:
        from latentqa.picks import choose

        choice = choose(reader, dialogs, args.questions[0], args.options, reads=reads)
    if args.save_control:
        from latentqa.steer.qa_pairs import save_control

        pairs = [(q, a.text) for row in answers for q, a in zip(args.questions, row, strict=True)]
        save_control(args.save_control, [q for q, _ in pairs], [a for _, a in pairs])
    if args.json:
        report = {
            "target": args.target,
            "decoder": str(reader.decoder_path),
            "read_layers": reader.spec.read_layers if args.layer is None else [args.layer],
            "subject": args.subject,
            "evidence_threshold": reader.read_threshold,
            "results": [
                {
                    "dialog": dialog,
                    "answers": [
                        answer_record(q, a) for q, a in zip(args.questions, row, strict=True)
                    ],
                }
                for dialog, row in zip(dialogs, answers, strict=True)
            ],
        }
        if choice is not None:
            report["choice"] = choice_record(choice)
        print(json.dumps(report))
        return 0
    for index, (dialog, row) in enumerate(zip(dialogs, answers, strict=True)):
        if len(dialogs) > 1:
            print(f"dialog {index + 1}:")
        for message in dialog:
            print(f"  {message['role']}: {message['content']}")
        for question, answer in zip(args.questions, row, strict=True):
            print(f"Q: {question}")
            print(f"A: {answer.text}  {evidence_tag(answer)}")
        if choice is not None:
            picked = choice.options[choice.picks[index]]
            print(f"pick among the {len(choice.options)} options: {picked}")
        if index < len(dialogs) - 1:
            print()
    if choice is not None and len(dialogs) > 1:
        best = choice.options[choice.pooled_pick]
        print(f"\npooled over the {len(dialogs)} dialogs (one hidden prompt): {best}")
    print(f"({evidence_legend(reader.read_threshold)})")
    return 0


def preflight_read(
    dialogs: Sequence[Any],
    questions: Sequence[str],
    *,
    target: str,
    decoder: str | Path | None,
    layer: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    device: str = "auto",
    dtype: str = "float32",
) -> DecoderSpec:
    """Everything ``latentqa read`` can check before loading the target and decoder.

    Returns:
        The decoder's spec.

    Raises:
        LatentQAError: A malformed dialog (roles, no user turn), no or an empty question,
            a bad number, or what :func:`preflight_decoder` refuses.
    """
    from latentqa.chat import validate_dialog

    for index, dialog in enumerate(dialogs):
        try:
            validate_dialog(dialog)
        except LatentQAError as error:
            where = f"dialog {index + 1}: " if len(dialogs) > 1 else ""
            raise LatentQAError(f"{where}{error}") from None
    check_questions(questions)
    if max_new_tokens < 1:
        raise LatentQAError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise LatentQAError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    layers = None if layer is None else [layer]
    return preflight_decoder(target, decoder, layers=layers, device=device, dtype=dtype)
