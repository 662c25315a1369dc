"""``latentqa eval control-reading``: options and the command (the evaluation is in
:mod:`latentqa.evals.control_reading`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.models import EMBEDDED_MODEL


@dataclasses.dataclass
class EvalControlReadingConfig:
    """Options of ``latentqa eval control-reading``."""

    data: str | None = None
    """folder from `latentqa data build --task control` (default: built afresh with seed 0,
    the split shipped:control was trained on)"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str = "shipped:control"
    """decoder folder trained on control data, or shipped:control"""
    n: int = 120
    """held-out items per question"""
    n_probe: int = 400
    """training items per question for the linear probe"""
    seed: int = 0
    """random seed"""
    out: str | None = None
    """folder for control_reading.png and control_reading.json"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def add_control_reading_task(tasks: argparse._SubParsersAction) -> None:
    """Add ``latentqa eval control-reading`` to the ``eval`` subparsers."""
    p = tasks.add_parser(
        "control-reading",
        help="does the steering decoder read tone and stereotypes from a reply?",
        description="Held-out replies (mood prompts and StereoSet groups never trained "
        "on): valence (2 options), tone (9 options) and stereotype (2 options), chosen by "
        "the decoder's likelihood, beside the same decoder with zeroed and shuffled "
        "activations and a linear probe. With no option: shipped:control.",
    )
    add_config_arguments(p, EvalControlReadingConfig)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run_control_reading)


def run_control_reading(args: argparse.Namespace) -> int:
    """Run ``latentqa eval control-reading``; prints the table (and JSON with ``--json``)."""
    from pathlib import Path

    from latentqa.decoder.folder import preflight_decoder
    from latentqa.evals.control_reading import (
        CHANCE,
        evaluate_control_reading,
        plot_control_reading,
    )
    from latentqa.evals.report import markdown_table
    from latentqa.outdir import check_output_folder
    from latentqa.reader import Reader

    config = config_from_args(EvalControlReadingConfig, args)
    preflight_decoder(config.target, config.decoder, device=config.device)
    check_output_folder(config.out, "--out")
    reader = Reader.load(config.target, config.decoder, device=config.device)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    result = evaluate_control_reading(
        reader, config.data, n=config.n, n_probe=config.n_probe, seed=config.seed, log=log
    )
    print(markdown_table(result, chance=CHANCE))
    if config.out:
        plot_control_reading(result, config.out)
        (Path(config.out) / "control_reading.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
    return 0
