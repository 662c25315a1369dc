"""``latentqa layers``: the decoder layers found in a model and their activation norms."""

from __future__ import annotations

import argparse
import dataclasses
import json

from latentqa.cli.options import add_config_arguments, add_model_alias, config_from_args
from latentqa.models import EMBEDDED_MODEL

SAMPLE_DIALOG = [
    {"role": "system", "content": "You are a pirate captain who answers every question at sea."},
    {"role": "user", "content": "What should I pack for a weekend trip?"},
]


@dataclasses.dataclass
class LayersConfig:
    """Options of ``latentqa layers``."""

    target: str = dataclasses.field(default=EMBEDDED_MODEL, metadata={"metavar": "SPEC"})
    """model spec"""
    layers_path: str | None = None
    """dotted path of the block list, to override the search"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N"""
    dtype: str = "float32"
    """float32, bfloat16, or auto (bfloat16 where this machine runs it at least as fast as
    float32: a CUDA device that supports it, or a CPU whose bfloat16 matmuls measure at
    least as fast; else float32); the output states the dtype used"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "layers",
        help="list a model's decoder layers and per-layer activation norms on a sample dialog",
        description=(
            "Find the decoder block list by searching the module tree, run the model on a "
            "sample dialog (system prompt masked, as the decoder would read it) and print "
            "the mean residual-stream norm of the read span at every layer."
        ),
    )
    add_config_arguments(parser, LayersConfig)
    add_model_alias(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from latentqa.capture import read_activations
    from latentqa.chat import encode_dialog
    from latentqa.layers import find_decoder_layers
    from latentqa.models import load_model, resolve_device, resolve_dtype

    config = config_from_args(LayersConfig, args)
    dtype = resolve_dtype(config.dtype, resolve_device(config.device))
    model, tokenizer = load_model(config.target, device=config.device, dtype=dtype)
    layers = find_decoder_layers(model, config.layers_path)
    every = list(range(len(layers)))
    with torch.no_grad():
        (span,) = read_activations(
            model, tokenizer, [SAMPLE_DIALOG], every, n_masked=1, blocks=layers
        )
    norms = span.float().norm(dim=-1).mean(dim=-1).tolist()  # [n_layers]
    encoded = encode_dialog(tokenizer, SAMPLE_DIALOG, 1)
    report = {
        "model": config.target,
        "architecture": type(model).__name__,
        "layers_path": layers.path,
        "n_layers": len(layers),
        "block": type(layers[0]).__name__,
        "dtype": str(dtype).removeprefix("torch."),
        "hidden_size": span.shape[-1],
        "read_tokens": encoded.read_length,
        "masked_tokens": encoded.read_start,
        "mean_norms": [round(n, 3) for n in norms],
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['architecture']}: {len(layers)} x {report['block']} at '{layers.path}', "
        f"hidden size {report['hidden_size']}"
    )
    chosen = " (chosen by --dtype auto)" if config.dtype.strip().lower() == "auto" else ""
    print(f"weights in {report['dtype']}{chosen} on {next(model.parameters()).device}")
    print(
        f"sample dialog: {encoded.read_start} system-prompt tokens masked, "
        f"{encoded.read_length} tokens read"
    )
    top = max(norms)
    for index, norm in enumerate(norms):
        bar = "#" * max(1, round(40 * norm / top))
        print(f"layer {index:3d}  mean norm {norm:9.2f}  {bar}")
    return 0
