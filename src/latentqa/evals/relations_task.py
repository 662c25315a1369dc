"""``latentqa eval relations`` as the registry sees it: options, command and suite runner
(the evaluation is :mod:`latentqa.evals.relations`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latentqa.errors import LatentQAError
from latentqa.evals.registry import Evaluation, Log
from latentqa.evals.relations import evaluate_relations, sweep_layers
from latentqa.evals.relations_data import find_relation_data
from latentqa.evals.relations_report import plot_per_relation, relations_markdown
from latentqa.models import EMBEDDED_MODEL

if TYPE_CHECKING:
    from latentqa.evals.registry import SuiteContext


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


def run(config: EvalRelationsConfig, log: Log) -> dict[str, Any]:
    """Run ``latentqa eval relations``: every option is checked before any model loads
    (the layer sweep runs after the main evaluation).

    Raises:
        LatentQAError: A malformed ``--layer-decoder``, a missing data folder, a layer
            or decoder that cannot be used, or an output folder that cannot be written.
    """
    from latentqa.decoder.folder import decoder_folder, preflight_decoder
    from latentqa.outdir import check_output_folder
    from latentqa.reader import Reader

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
        if int(layer) not in (config.layers or ()):
            raise LatentQAError(f"--layer-decoder {layer}={folder}: add {layer} to --layers")
        preflight_decoder(config.target, folder, layers=[int(layer)], device=config.device)
    if config.layers or config.out:
        check_output_folder(config.out, "--out")
    reader = Reader.load(config.target, config.decoder, device=config.device)
    options = dict(n=config.n, seed=config.seed, max_new_tokens=config.max_new_tokens, log=log)
    result = evaluate_relations(reader, data, **options)
    if config.layers:
        readers = {int(k): Reader.load(config.target, v, device=config.device) for k, v in pairs}
        out = config.out or "."
        result.update(
            sweep_layers(reader, data, config.layers, out, layer_readers=readers, **options)
        )
    return result


def report(result: dict[str, Any], config: EvalRelationsConfig, log: Log) -> str:
    """Draw the per-relation PNG into ``--out`` (if given); return the tables."""
    if config.out:
        plots = result.setdefault("plots", [])
        plots.append(plot_per_relation(result, config.out))
        log(f"wrote {', '.join(str(Path(config.out) / p) for p in plots)}")
    return relations_markdown(result)


def run_in_suite(ctx: SuiteContext) -> dict[str, Any]:
    """``latentqa eval all``'s entry point: the evaluation, the layer sweep with
    ``--layers`` and the per-relation plot."""
    from latentqa.decoder.folder import open_decoder_folder

    # Find the facts before any model loads: without them the task is skipped at once.
    folder, spec = open_decoder_folder(ctx.target, ctx.decoder_for("relations"))
    data = find_relation_data(ctx.data.get("relations"), folder, spec)
    reader = ctx.reader("relations")
    result = evaluate_relations(reader, data, n=ctx.n, seed=ctx.seed, log=ctx.log)
    if ctx.layers:
        result.update(
            sweep_layers(reader, data, ctx.layers, ctx.out, n=ctx.n, seed=ctx.seed, log=ctx.log)
        )
    result.setdefault("plots", []).append(plot_per_relation(result, ctx.out))
    result["markdown"] = relations_markdown(result)
    return result


EVALUATION = Evaluation(
    name="relations",
    help="read country relations (capital, currency, ...) from subject tokens",
    description="Facts about held-out countries (never trained on) and a held-out "
    "relation, read from the target's activations on the country's name: the decoder, "
    "the same decoder with zeroed and shuffled activations, Patchscope and a linear "
    "probe, on the same items (exact and fuzzy accuracy). With no option: the shipped "
    "relations decoder on the held-out countries it ships with.",
    config=EvalRelationsConfig,
    run=run,
    report=report,
    suite=run_in_suite,
    default_decoder="shipped:relations",
    headline="accuracy",
)
