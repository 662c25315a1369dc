"""Control by steering: train the target's LoRA so that the frozen decoder gives the control.

One step: read the steered target (only the ``"steer"`` adapter active, with
gradients) on a batch of ordinary prompts at the read layer(s), patch those
activations into the decoder (only ``"decoder"`` active), and take the decoder's
cross-entropy on the control's answers to its questions. The gradient flows through
the patched vectors into the steering adapter, the only trainable weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from latentqa.capture import pad_token_id, read_encoded
from latentqa.chat import EncodedDialog, first_token_at, render, subject_span
from latentqa.data.sources import load_user_prompts
from latentqa.decoder.folder import ADAPTER_FILES, preflight_decoder
from latentqa.decoder.inputs import decoder_batch, decoder_inputs
from latentqa.decoder.loss import answer_token_loss
from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index, check_layers
from latentqa.plots import line_chart
from latentqa.steer.config import SteerConfig
from latentqa.steer.generate import generate_texts
from latentqa.steer.model import (
    DECODER_ADAPTER,
    STEER_ADAPTER,
    SteerableModel,
    steering_decoder,
)
from latentqa.steer.qa_pairs import QAPair, combine_controls
from latentqa.train.order import example_order
from latentqa.train.schedule import lr_lambda
from latentqa.typed_config import config_to_dict

STEER_FILE = "steer.json"
STEER_FORMAT = "latentqa-steer/1"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> EncodedDialog:
    """A user prompt rendered with the reply header; the read span starts at its text.

    A default system prompt that some templates insert is not read (the decoder was
    trained on spans after the system prompt).
    """
    text = render(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    at = text.rfind(prompt.strip())
    start = first_token_at(encoded["offset_mapping"], at) if at >= 0 else 0
    return EncodedDialog(list(encoded["input_ids"]), start, text)


def encode_reply(tokenizer: PreTrainedTokenizerBase, prompt: str, reply: str) -> EncodedDialog:
    """A user prompt and the assistant's reply; the read span is the reply's tokens."""
    dialog = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return subject_span(tokenizer, dialog, reply.strip())


def steering_reads(steerable: SteerableModel, read: str = "auto") -> str:
    """``prompt`` or ``reply``: what steering reads; ``auto`` follows the decoder's training
    (``reads`` in its latentqa.json: decoders trained on replies read replies)."""
    if read != "auto":
        return read
    return "reply" if steerable.spec.extra.get("reads") == "reply" else "prompt"


def own_replies(steerable: SteerableModel, prompts: Sequence[str], reply_tokens: int) -> list[str]:
    """The plain target's greedy replies to ``prompts`` (what steering reads with ``reply``)."""
    with steerable.unsteered() as model:
        return generate_texts(model, steerable.tokenizer, prompts, max_new_tokens=reply_tokens)


def encode_steering_items(
    steerable: SteerableModel,
    prompts: Sequence[str],
    read: str,
    replies: Sequence[str] | None = None,
    reply_tokens: int = 32,
) -> list[EncodedDialog]:
    """Encode what steering reads: each prompt, or each prompt's reply.

    Args:
        steerable: The target (its unsteered state writes missing replies).
        prompts: User prompts.
        read: ``prompt`` or ``reply`` (see :func:`steering_reads`).
        replies: With ``reply``: the reply to each prompt; ``None``: the unsteered
            target's greedy replies, generated here.
        reply_tokens: Length of generated replies.
    """
    if read == "prompt":
        return [encode_prompt(steerable.tokenizer, p) for p in prompts]
    if replies is None:
        replies = own_replies(steerable, prompts, reply_tokens)
    elif len(replies) != len(prompts):
        raise LatentQAError(f"got {len(replies)} replies for {len(prompts)} prompts")
    # An empty reply has nothing to read; such prompts are left out.
    return [
        encode_reply(steerable.tokenizer, p, r)
        for p, r in zip(prompts, replies, strict=True)
        if r.strip()
    ]


def load_prompts(
    path: str | Path | None = None, limit: int | None = None, seed: int = 0
) -> list[str]:
    """Prompts to read the target on: a file's, or the built-in ordinary user prompts.

    Args:
        path: A JSON list of strings, or a text file with one prompt per line;
            ``None``: :func:`latentqa.data.sources.load_user_prompts`.
        limit: Keep at most this many (a fixed random sample, in file order).
        seed: Seed of the sample.
    """
    if path is None:
        prompts = load_user_prompts()
    else:
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise LatentQAError(
                f"cannot read prompts file {path}: {error.strerror or error}"
            ) from None
        except UnicodeDecodeError:
            raise LatentQAError(
                f"prompts file {path} is not UTF-8: save it as UTF-8 text or JSON"
            ) from None
        if path.suffix.lower() == ".json":
            try:
                prompts = json.loads(text)
            except json.JSONDecodeError as error:
                raise LatentQAError(f"prompts file {path} is not valid JSON: {error}") from None
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise LatentQAError(f"prompts file {path} must hold a JSON list of strings")
        else:
            prompts = text.splitlines()
        prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise LatentQAError(f"no prompts in {path}")
    if limit is not None and limit < len(prompts):
        keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:limit]
        prompts = [prompts[i] for i in sorted(keep.tolist())]
    return prompts


def steering_loss(
    steerable: SteerableModel,
    encoded: Sequence[EncodedDialog],
    pairs: Sequence[QAPair],
    read_layers: Sequence[int],
    *,
    per_layer_loss: bool = False,
) -> tuple[torch.Tensor, list[float]]:
    """The decoder's answer loss on the control, reading the steered target on ``encoded``.

    Returns:
        The loss to minimise (the mean over layer groups) and each group's value: one
        group of all read layers, or one group per layer with ``per_layer_loss``.
    """
    steerable.use(STEER_ADAPTER)
    spans = read_encoded(
        steerable.model,
        encoded,
        pad_token_id(steerable.tokenizer),
        read_layers,
        blocks=steerable.blocks,
    )
    # spans: per prompt [n_read_layers, span, d_model], differentiable w.r.t. the steer LoRA
    steerable.use(DECODER_ADAPTER)
    groups = (
        [[i] for i in range(len(read_layers))]
        if per_layer_loss
        else [list(range(len(read_layers)))]
    )
    questions = [q for _ in encoded for q, _ in pairs]
    answers = [a for _ in encoded for _, a in pairs]
    spec = steerable.spec
    losses = []
    for group in groups:
        # per prompt [len(group) * kept, d_model], once per control pair
        vectors = [decoder_inputs(span[group], spec) for span in spans]
        rows = [v for v in vectors for _ in pairs]
        batch, flat = decoder_batch(steerable.tokenizer, rows, questions, answers)
        loss = answer_token_loss(
            steerable.model,
            batch.to(steerable.device),
            flat,
            write_layer=spec.write_layer,
            mode=spec.mode,
            blocks=steerable.blocks,
        )
        losses.append(loss)
    stacked = torch.stack(losses)  # [n_groups]
    return stacked.mean(), [float(value) for value in stacked.detach()]


def resolve_read_layers(steerable: SteerableModel, layers: Sequence[int] | None) -> list[int]:
    """The read layers, normalised; the decoder's own by default."""
    chosen = steerable.spec.read_layers if layers is None else layers
    return [check_layer_index(layer, steerable.n_layers, "read layer") for layer in chosen]


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
    read_layers = resolve_read_layers(steerable, config.read_layers)
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
    with torch.no_grad():
        loss, groups = steering_loss(steerable, batch_at(0), pairs, read_layers, **kwargs)
    records = [record_of(0, "initial", float(loss), groups)]
    bar = tqdm(total=config.steps, desc="steer", disable=not progress)
    for step in range(config.steps):
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
        "read_layers": resolve_read_layers(steerable, config.read_layers),
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
