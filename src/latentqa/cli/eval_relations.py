"""``latentqa eval relations``: options and the command (the evaluation is in
:mod:`latentqa.evals.relations`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL


def add_relations_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval relations`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "relations",
        help="read country relations (capital, currency, ...) from subject tokens",
        description="Held-out subjects and a held-out relation: the decoder, zeroed and "
        "shuffled activations, Patchscope and a linear probe, exact and fuzzy accuracy.",
    )
    p.add_argument(
        "--data", required=True, help="folder from `latentqa data build --task relations`"
    )
    p.add_argument("--target", default=EMBEDDED_MODEL, help="target model (default: %(default)s)")
    p.add_argument("--decoder", default=None, help="decoder folder trained on relation data")
    p.add_argument("--n", type=int, default=None, help="at most N items per relation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="also sweep these layers")
    p.add_argument(
        "--layer-decoder",
        action="append",
        default=[],
        metavar="LAYER=DIR",
        help="a decoder trained on LAYER, for the sweep (repeatable)",
    )
    p.add_argument("--out", default=None, help="folder for the per-layer PNGs and JSON")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run_relations)


def run_relations(args: argparse.Namespace) -> int:
    """Run ``latentqa eval relations``; prints the tables (and JSON with ``--json``)."""
    from latentqa.evals.relations import evaluate_relations, relations_markdown, sweep_layers
    from latentqa.preflight import check_output_folder, preflight_decoder
    from latentqa.reader import Reader

    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    # Every option is checked before any load: the sweep runs after the main evaluation.
    pairs = [item.split("=", 1) for item in args.layer_decoder]
    if any(len(pair) != 2 or not pair[0].lstrip("-").isdigit() for pair in pairs):
        raise LatentQAError("--layer-decoder takes LAYER=DIR, e.g. 9=runs/rel-l9")
    if pairs and not args.layers:
        raise LatentQAError("--layer-decoder is used by the sweep only: add --layers")
    if not Path(args.data).is_dir():
        raise LatentQAError(f"--data {args.data} does not exist or is not a folder")
    preflight_decoder(args.target, args.decoder, layers=args.layers, device=args.device)
    for layer, folder in pairs:
        if int(layer) not in args.layers:
            raise LatentQAError(f"--layer-decoder {layer}={folder}: add {layer} to --layers")
        preflight_decoder(args.target, folder, layers=[int(layer)], device=args.device)
    if args.layers:
        check_output_folder(args.out, "--out")
    reader = Reader.load(args.target, args.decoder, device=args.device)
    result = evaluate_relations(
        reader, args.data, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens, log=log
    )
    if args.layers:
        readers = {int(k): Reader.load(args.target, v, device=args.device) for k, v in pairs}
        result.update(
            sweep_layers(
                reader,
                args.data,
                args.layers,
                args.out or ".",
                layer_readers=readers,
                n=args.n,
                seed=args.seed,
                max_new_tokens=args.max_new_tokens,
                log=log,
            )
        )
    print(relations_markdown(result))
    if args.json:
        print(json.dumps(result))
    return 0
