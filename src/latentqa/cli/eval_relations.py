"""``latentqa eval relations``: options and the command (the evaluation is in
:mod:`latentqa.evals.relations`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.errors import LatentQAError
from latentqa.models import EMBEDDED_MODEL


@dataclasses.dataclass
class EvalRelationsConfig:
    """Options of ``latentqa eval relations``."""

    data: str | None = None
    """folder from `latentqa data build --task relations` (default: the held-out facts
    beside the decoder or in the folder it was trained on)"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str = "shipped:relations"
    """decoder folder trained on relation data, or shipped:relations"""
    n: int | None = None
    """at most N items per relation"""
    seed: int = 0
    """random seed"""
    layers: list[int] | None = dataclasses.field(default=None, metadata={"metavar": "LAYERS"})
    """also sweep these read layers: accuracy per layer of LIT, Patchscope and the probe,
    plotted as PNGs into --out (LIT reads a layer with its --layer-decoder, else with
    --decoder)"""
    layer_decoder: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "LAYER=DIR"}
    )
    """a decoder trained on LAYER, for the sweep (repeatable)"""
    out: str | None = None
    """folder for the PNGs: accuracy per relation, and per layer with --layers (default
    with --layers: the current folder)"""
    max_new_tokens: int = 24
    """most tokens per generated answer"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def add_relations_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval relations`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "relations",
        help="read country relations (capital, currency, ...) from subject tokens",
        description="Facts about held-out countries (never trained on) and a held-out "
        "relation, read from the target's activations on the country's name: the decoder, "
        "the same decoder with zeroed and shuffled activations, Patchscope and a linear "
        "probe, on the same items (exact and fuzzy accuracy). With no option: the shipped "
        "relations decoder on the held-out countries it ships with.",
    )
    add_config_arguments(p, EvalRelationsConfig)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run_relations)


def run_relations(args: argparse.Namespace) -> int:
    """Run ``latentqa eval relations``; prints the tables (and JSON with ``--json``)."""
    from latentqa.decoder.folder import decoder_folder, preflight_decoder
    from latentqa.evals.relations import (
        evaluate_relations,
        plot_per_relation,
        relations_markdown,
        sweep_layers,
    )
    from latentqa.evals.relations_data import find_relation_data
    from latentqa.outdir import check_output_folder
    from latentqa.reader import Reader

    config = config_from_args(EvalRelationsConfig, args)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    # Every option is checked before any load: the sweep runs after the main evaluation.
    pairs = [item.split("=", 1) for item in config.layer_decoder]
    if any(len(pair) != 2 or not pair[0].lstrip("-").isdigit() for pair in pairs):
        raise LatentQAError("--layer-decoder takes LAYER=DIR, e.g. 9=runs/rel-l9")
    if pairs and not config.layers:
        raise LatentQAError("--layer-decoder is used by the sweep only: add --layers")
    if config.data is not None and not Path(config.data).is_dir():
        raise LatentQAError(f"--data {config.data} does not exist or is not a folder")
    spec = preflight_decoder(
        config.target, config.decoder, layers=config.layers, device=config.device
    )
    data = find_relation_data(config.data, decoder_folder(config.target, config.decoder), spec)
    for layer, folder in pairs:
        if int(layer) not in config.layers:
            raise LatentQAError(f"--layer-decoder {layer}={folder}: add {layer} to --layers")
        preflight_decoder(config.target, folder, layers=[int(layer)], device=config.device)
    if config.layers or config.out:
        check_output_folder(config.out, "--out")
    reader = Reader.load(config.target, config.decoder, device=config.device)
    result = evaluate_relations(
        reader,
        data,
        n=config.n,
        seed=config.seed,
        max_new_tokens=config.max_new_tokens,
        log=log,
    )
    if config.layers:
        readers = {int(k): Reader.load(config.target, v, device=config.device) for k, v in pairs}
        result.update(
            sweep_layers(
                reader,
                data,
                config.layers,
                config.out or ".",
                layer_readers=readers,
                n=config.n,
                seed=config.seed,
                max_new_tokens=config.max_new_tokens,
                log=log,
            )
        )
    if config.out:
        plots = result.setdefault("plots", [])
        plots.append(plot_per_relation(result, config.out))
        log(f"wrote {', '.join(str(Path(config.out) / p) for p in plots)}")
    print(relations_markdown(result))
    if args.json:
        print(json.dumps(result))
    return 0
