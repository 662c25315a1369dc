"""``latentqa eval``: evaluations with baselines, as a markdown table or JSON.

``system-prompt`` and the steering evaluations (``sentiment``, ``crows-pairs``,
``audit``) are parsed here; ``relations`` in :mod:`latentqa.cli.eval_relations` and
``all`` in :mod:`latentqa.cli.eval_all`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.models import EMBEDDED_MODEL

STEERING_TASKS = {
    "sentiment": (
        "latentqa.evals.sentiment",
        "steer toward positive / negative replies: LIT vs prompting vs a steering vector",
        "Generate on held-out neutral prompts and score with VADER (mean compound, share "
        "with the intended polarity) and fluency (perplexity under the unsteered model).",
    ),
    "crows-pairs": (
        "latentqa.evals.crows_pairs",
        "debias: share of CrowS-Pairs rows where the model prefers the stereotype",
        "Stereotypical share before and after debiasing (LIT, prompting, steering "
        "vector), and perplexity on neutral text (TruthfulQA answers).",
    ),
    "audit": (
        "latentqa.evals.audit",
        "elicit hidden behaviours (French, rhyme, pirate) described only in a control",
        "How often each behaviour appears before and after LIT steering, against "
        "prompting, by automatic checks.",
    ),
}
"""Task -> (module exposing ``EVALUATION``, help, description)."""


@dataclasses.dataclass
class EvalSystemPromptConfig:
    """Options of ``latentqa eval system-prompt``."""

    data: str | None = None
    """dataset folder: train/ + heldout/ from `latentqa data build`, or one folder in the
    LatentQA release layout (system.json + qa.json; the probe trains on its train/ subfolder
    if any, else on a seeded half of its labels). Default: the held-out set shipped in the
    package (177 system behaviours of 59 labels the built-in dataset's train split never
    contains)"""
    target: str = EMBEDDED_MODEL
    """target model"""
    decoder: str | None = None
    """decoder folder (default: the shipped decoder)"""
    n: int | None = None
    """evaluate at most N items"""
    seed: int = 0
    """seed for options and shuffling"""
    layers: list[int] | None = dataclasses.field(default=None, metadata={"metavar": "LAYERS"})
    """also sweep these read layers (multiple choice) and plot them"""
    out: str | None = None
    """folder for the per-layer PNG and JSON"""
    open: bool = True
    """generate open answers (--no-open skips them)"""
    methods: list[str] | None = dataclasses.field(default=None, metadata={"metavar": "METHOD"})
    """run only these methods (lit lit_zeroed lit_shuffled no_system_prompt base_patchscope
    linear_probe black_box; default: all)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a decoder against baselines on the same items",
        description=(
            "Evaluations print a markdown table, or with --json a JSON object as the last line."
        ),
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK")
    system = tasks.add_parser(
        "system-prompt",
        help="uncover hidden system prompts of held-out behaviours (multiple choice, open)",
        description=(
            "Held-out system-prompt behaviours: multiple choice among 5 answers to the same "
            "question (chance 20%), the same calibrated against zeroed activations (chance "
            "20%), yes/no questions about the gold answer and another behaviour's (chance "
            "50%) and open answers judged by sentence embeddings (chance 50%), for the "
            "decoder and for baselines: zeroed / shuffled activations, the same user turn "
            "without its system prompt, the untrained base model with the same patching, a "
            "ridge probe, and the target as a black box. Runs out of the box on the held-out "
            "set shipped in the package."
        ),
    )
    add_config_arguments(system, EvalSystemPromptConfig)
    system.add_argument(
        "--json", action="store_true", help="print the result as one JSON line last"
    )
    system.set_defaults(func=run_system_prompt)
    from latentqa.cli.eval_all import add_all_task
    from latentqa.cli.eval_control import add_control_reading_task
    from latentqa.cli.eval_relations import add_relations_task

    add_relations_task(tasks)
    add_control_reading_task(tasks)
    add_all_task(tasks)
    add_steering_tasks(tasks)
    parser.set_defaults(func=lambda _args: parser.print_help() or 1)


def run_system_prompt(args: argparse.Namespace) -> int:
    from latentqa.decoder.folder import preflight_decoder
    from latentqa.errors import LatentQAError
    from latentqa.evals.report import markdown_table, plot_per_layer
    from latentqa.evals.system_prompt import CHANCE, METHODS, evaluate_system_prompt
    from latentqa.outdir import check_output_folder
    from latentqa.reader import Reader

    config = config_from_args(EvalSystemPromptConfig, args)
    unknown = sorted(set(config.methods or ()) - set(METHODS))
    if unknown:
        raise LatentQAError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    # Checked before any load: a bad --layers used to fail after the whole main evaluation.
    preflight_decoder(config.target, config.decoder, layers=config.layers, device=config.device)
    if config.data is not None and not Path(config.data).exists():
        raise LatentQAError(f"--data {config.data} does not exist")
    if config.n is not None and config.n < 1:
        raise LatentQAError(f"--n must be at least 1, got {config.n}")
    if config.layers:
        check_output_folder(config.out, "--out")
    reader = Reader.load(config.target, config.decoder, device=config.device)
    spec = reader.spec
    base = None
    if config.methods is None or "base_patchscope" in config.methods:
        base = Reader.base(
            config.target,
            read_layers=spec.read_layers,
            write_layer=spec.write_layer,
            mode=spec.mode,
            max_read_tokens=spec.max_read_tokens,
            pool=spec.pool,
            device=config.device,
        )
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    result = evaluate_system_prompt(
        reader,
        base,
        config.data,
        n=config.n,
        seed=config.seed,
        open_answers=config.open,
        log=log,
        methods=config.methods,
    )
    if config.layers:
        per_layer = {}
        for layer in config.layers:
            swept = evaluate_system_prompt(
                reader,
                base,
                config.data,
                n=config.n,
                seed=config.seed,
                open_answers=False,
                layer=layer,
                black_box=False,
                log=log,
                methods=config.methods,
            )
            per_layer[layer] = swept["methods"]
        result["per_layer"] = per_layer
        out = Path(config.out or ".")
        out.mkdir(parents=True, exist_ok=True)
        plot_per_layer(
            per_layer,
            "mc_accuracy",
            out / "system_prompt_layers.png",
            "System-prompt multiple choice per read layer",
            chance=0.2,
        )
        (out / "system_prompt_layers.json").write_text(json.dumps(per_layer, indent=2))
    print(markdown_table(result, chance=CHANCE))
    if args.json:
        print(json.dumps(result))
    return 0


def add_steering_tasks(tasks: argparse._SubParsersAction) -> None:
    """Add ``sentiment``, ``crows-pairs`` and ``audit`` to ``latentqa eval``'s tasks."""
    for name, (module, help_text, description) in STEERING_TASKS.items():
        evaluation = importlib.import_module(module).EVALUATION
        parser = tasks.add_parser(name, help=help_text, description=description)
        add_config_arguments(parser, evaluation.config)
        parser.add_argument(
            "--json", action="store_true", help="print the result as one JSON line last"
        )
        parser.set_defaults(func=lambda args, evaluation=evaluation: run_steering(evaluation, args))


def run_steering(evaluation: Any, args: argparse.Namespace) -> int:
    """Run one steering evaluation: the table, the checks, and the JSON with ``--json``."""
    from latentqa.evals.report import markdown_table

    config = config_from_args(evaluation.config, args)
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731
    result = evaluation.evaluate(config, log=log).to_json()
    print(markdown_table(result))
    checks = result.get("checks")
    if checks is not None:
        print(f"\nchecks: {json.dumps(checks)}")
    if config.out:
        from latentqa.evals.steering_report import write_steering_outputs

        written = write_steering_outputs(result, config.out)
        print(f"\nwrote {', '.join(written)} and the LIT adapters to {config.out}")
    if args.json:
        print(json.dumps(result))
    return 0
