"""Control by steering: train the target's LoRA so that the frozen decoder gives the control.

:func:`train_steering` runs the loop: each step reads the steered target on a batch of
ordinary prompts (or replies, see :mod:`latentqa.steer.encoding`) and descends the
decoder's answer loss on the control (:func:`latentqa.steer.loss.steering_loss`), the
steering adapter's weights being the only trainable ones. :func:`steer` is the whole
command: check, load, train, then save the adapter with its metrics, summary and plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentqa.chat import EncodedDialog
from latentqa.decoder.folder import ADAPTER_FILES, preflight_decoder
from latentqa.decoder.packing import cpu_attention
from latentqa.errors import LatentQAError
from latentqa.layers import check_layers, resolve_read_layers
from latentqa.plots import line_chart
from latentqa.schedule import example_order, lr_lambda
from latentqa.steer.config import SteerConfig
from latentqa.steer.encoding import encode_steering_items, steering_reads
from latentqa.steer.loss import steering_loss
from latentqa.steer.model import STEER_ADAPTER, SteerableModel, steering_decoder
from latentqa.steer.prompts import load_prompts
from latentqa.steer.qa_pairs import QAPair, combine_controls
from latentqa.typed_config import config_to_dict

STEER_FILE = "steer.json"
STEER_FORMAT = "latentqa-steer/1"


def train_steering(
    steerable: SteerableModel,
    pairs: Sequence[QAPair],
    prompts: Sequence[str],
    config: SteerConfig,
    *,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
    replies: Sequence[str] | None = None,
) -> list[dict]:
    """Add a fresh steering adapter to ``steerable`` and train it on the control ``pairs``.

    The decoder reads each prompt, or (``config.read``, see :func:`steering_reads`) the
    reply to it: ``replies`` when given, else the target's own unsteered replies.

    Returns:
        One record per step (``step``, ``loss``, ``lr`` and, with several read-layer
        groups, ``loss_layer_<k>``), after an initial ``kind="initial"`` record: the loss
        before training on the first batch.
    """
    read_layers = resolve_read_layers(
        config.read_layers, steerable.n_layers, steerable.spec.read_layers
    )
    # Encoded before the steering adapter exists: generated replies are the plain target's.
    encoded = encode_steering_items(
        steerable, prompts, steering_reads(steerable, config.read), replies, config.reply_tokens
    )
    layers = steerable.add_steering(
        config.layers,
        r=config.lora_r,
        alpha=config.lora_alpha,
        targets=config.lora_targets,
        seed=config.seed,
    )
    if min(layers) > max(read_layers):
        raise LatentQAError(
            f"steer layers {layers} all lie above the deepest read layer {max(read_layers)}: "
            "they cannot change what the decoder reads"
        )
    if not encoded or not pairs:
        raise LatentQAError("steering needs at least one prompt and one control pair")
    parameters = steerable.steering_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, config.steps, 0.1)
    )
    size = min(config.batch_size, len(encoded))

    def batch_at(step: int) -> list[EncodedDialog]:
        picks = example_order(len(encoded), config.seed, range(step * size, (step + 1) * size))
        return [encoded[i] for i in picks]

    def record_of(step: int, kind: str, loss: float, groups: list[float]) -> dict:
        record = {"step": step, "kind": kind, "loss": loss, "lr": scheduler.get_last_lr()[0]}
        if len(groups) > 1:
            record.update({f"loss_layer_{k}": v for k, v in zip(read_layers, groups, strict=True)})
        if log is not None:
            log(record)
        return record

    kwargs = dict(per_layer_loss=config.per_layer_loss)
    # The math attention kernel: faster than the CPU flash kernel's backward on these
    # short rows (docs/performance.md); torch's own choice on other devices.
    device = torch.device(steerable.device)
    with torch.no_grad(), cpu_attention(device):
        loss, groups = steering_loss(steerable, batch_at(0), pairs, read_layers, **kwargs)
    records = [record_of(0, "initial", float(loss), groups)]
    bar = tqdm(total=config.steps, desc="steer", disable=not progress)
    for step in range(config.steps):
        with cpu_attention(device):
            loss, groups = steering_loss(steerable, batch_at(step), pairs, read_layers, **kwargs)
            loss.backward()
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        records.append(record_of(step + 1, "train", float(loss.detach()), groups))
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    bar.close()
    steerable.use(STEER_ADAPTER)
    return records


@dataclass
class SteerResult:
    """Where the steering adapter went, and how the control's loss moved."""

    out: Path
    """The steering folder."""
    steps: int
    """Optimizer steps run."""
    initial_loss: float
    """The decoder's control loss on the first batch before steering."""
    final_loss: float
    """The loss of the last step."""
    steerable: SteerableModel
    """The model with both adapters, steering active, ready to generate."""


def plot_steering(records: Sequence[dict], path: Path) -> None:
    """Loss curve PNG of a steering run."""
    with line_chart(
        path,
        xlabel="optimizer step",
        ylabel="decoder answer loss (nats/token)",
        title="Steering with the decoder's loss",
    ) as axis:
        steps = [r["step"] for r in records]
        axis.plot(steps, [r["loss"] for r in records], "o-", ms=2, label="control loss")
        for key in sorted({k for r in records for k in r if k.startswith("loss_layer_")}):
            axis.plot(steps, [r.get(key) for r in records], lw=0.8, label=key.replace("_", " "))


def steer(
    config: SteerConfig,
    pairs: Sequence[Sequence[str]] | None = None,
    *,
    progress: bool = True,
    steerable: SteerableModel | None = None,
) -> SteerResult:
    """Steer the target toward a control and save the adapter in ``config.out``.

    Args:
        config: The run's options.
        pairs: Control pairs given directly, added after ``config.control``'s.
        progress: Show a progress bar.
        steerable: An already loaded model with the decoder adapter (else loaded from
            ``config.target`` and ``config.decoder``).

    Returns:
        The output folder, the loss before and after, and the steered model.

    Raises:
        LatentQAError: No control, bad prompts, bad layers, or ``out`` already holds an
            adapter.
    """
    control = combine_controls(config.control, pairs)
    out = Path(config.out).expanduser()
    if any((out / name).exists() for name in ADAPTER_FILES):
        raise LatentQAError(f"{out} already holds a steering adapter; choose another --out")
    prompts = load_prompts(config.prompts, config.max_prompts, config.seed)
    if steerable is None:
        # Layers and the decoder folder are checked before the load, from latentqa.json.
        spec = preflight_decoder(
            config.target,
            steering_decoder(config.target, config.decoder),
            layers=config.read_layers,
            device=config.device,
            dtype=config.dtype,
        )
        check_layers(config.layers, spec.n_layers, "steer layer")
        steerable = SteerableModel.load(
            config.target, config.decoder, device=config.device, dtype=config.dtype
        )
    records = train_steering(steerable, control, prompts, config, progress=progress)
    reads = steering_reads(steerable, config.read)
    steerable.save_steering(out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "format": STEER_FORMAT,
        "target": steerable.target_name,
        "decoder": str(steerable.decoder_path),
        "layers": steerable.steer_layers,
        "read_layers": resolve_read_layers(
            config.read_layers, steerable.n_layers, steerable.spec.read_layers
        ),
        "read": reads,
        "control": [list(pair) for pair in control],
        "n_prompts": len(prompts),
        "initial_loss": records[0]["loss"],
        "final_loss": records[-1]["loss"],
        "config": config_to_dict(config),
    }
    (out / STEER_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    plot_steering(records, out / "loss.png")
    return SteerResult(out, config.steps, records[0]["loss"], records[-1]["loss"], steerable)
