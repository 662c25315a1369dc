"""Latent Interpretation Tuning: train a LoRA decoder to answer questions about activations.

One optimizer step: for ``grad_accum`` micro-batches, fetch the target's read
vectors (live, or from the on-disk cache), lay out decoder prompts with one
placeholder per vector, patch the vectors in at the write layer and take the
cross-entropy of the answer tokens. Warmup + cosine is stepped once per
optimizer step. Multi-process runs (``torchrun`` / ``accelerate launch``) go
through accelerate, which wraps the objective in DDP (or FSDP when configured).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from latentqa.configs import config_to_dict
from latentqa.decoder import (
    SPEC_FILE,
    DecoderSpec,
    answer_token_loss,
    decoder_batch,
    fit_standardizer,
)
from latentqa.errors import LatentQAError
from latentqa.layers import check_layer_index
from latentqa.layout import DecoderBatch
from latentqa.models import load_model, resolve_device, resolve_dtype
from latentqa.preflight import preflight_train
from latentqa.read import pad_token_id
from latentqa.shared_prefix import (
    SharedBatch,
    cpu_attention,
    shared_answer_loss,
    shared_decoder_batch,
)
from latentqa.train.activations import ActivationSource
from latentqa.train.checkpoint import TrainerState, restore_rng, save_checkpoint
from latentqa.train.config import TrainConfig
from latentqa.train.evaluate import evaluate_losses
from latentqa.train.order import example_lengths, example_order
from latentqa.train.plots import plot_losses
from latentqa.train.prepare import (
    PreparedData,
    add_lora,
    auto_dtype,
    config_fingerprint,
    n_decoder_layers,
    prepare_data,
    resolve_read_layers,
)
from latentqa.train.run_folder import (
    CHECKPOINTS,
    check_flags,
    open_run,
    start_writing,
    write_atomically,
)


class LITObjective(nn.Module):
    """The decoder's answer loss as a module, so DDP/FSDP see one forward per step."""

    def __init__(self, decoder: nn.Module, write_layer: int, mode: str) -> None:
        super().__init__()
        self.decoder = decoder
        self.write_layer = write_layer
        self.mode = mode

    def forward(self, batch: DecoderBatch | SharedBatch, vectors: torch.Tensor) -> torch.Tensor:
        loss = shared_answer_loss if isinstance(batch, SharedBatch) else answer_token_loss
        return loss(self.decoder, batch, vectors, write_layer=self.write_layer, mode=self.mode)


def lit_inputs(
    tokenizer, source: ActivationSource, examples: Sequence[tuple[int, str, str]], share: int
) -> tuple[DecoderBatch | SharedBatch, torch.Tensor, int]:
    """The decoder inputs of one micro-batch and its tokens (each example counted whole).

    With ``share`` > 1, examples of one dialog (up to ``share`` of them) read its
    activations once through a shared prefix; the loss and gradient are the same.
    """
    if share <= 1:
        vectors = source.get([dialog for dialog, _, _ in examples])
        batch, flat = decoder_batch(
            tokenizer, vectors, [q for _, q, _ in examples], [a for _, _, a in examples]
        )
        return batch, flat, int(batch.attention_mask.sum())
    groups: dict[tuple[int, int], list[tuple[str, str]]] = {}
    seen: dict[int, int] = {}
    for dialog, question, answer in examples:
        # A dialog with more than `share` examples in the batch starts a second prefix.
        key = (dialog, seen.get(dialog, 0) // share)
        seen[dialog] = seen.get(dialog, 0) + 1
        groups.setdefault(key, []).append((question, answer))
    vectors = source.get([dialog for dialog, _ in groups])
    batch, flat = shared_decoder_batch(tokenizer, vectors, list(groups.values()))
    return batch, flat, batch.n_example_tokens


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to 1, then cosine down to ``min_ratio``, per optimizer step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class TrainResult:
    """Where the decoder went and its last evaluation."""

    out: Path
    """The decoder folder."""
    steps: int
    """Optimizer steps completed."""
    final_metrics: dict[str, float]
    """Held-out losses at the end (empty without held-out data)."""
    decoder: nn.Module
    """The trained decoder (peft model), ready to use in this process."""


def train(
    config: TrainConfig, *, resume: bool = False, force: bool = False, progress: bool = True
) -> TrainResult:
    """Run LIT as configured.

    Args:
        config: The run's options.
        resume: Continue from the latest checkpoint in ``config.out``.
        force: Start over in a non-empty ``config.out`` (see
            :mod:`latentqa.train.run_folder`); without it such a folder is refused.
        progress: Show a progress bar.

    Raises:
        LatentQAError: Bad options or inputs, or an output folder that is not this
            run's to write (checked before the model loads).
    """
    from accelerate import Accelerator
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    check_flags(resume=resume, force=force)
    preflight_train(config, resume=resume)  # bad paths, layers, numbers: before the load
    out = Path(config.out)
    checkpoints = out / CHECKPOINTS
    fingerprint = config_fingerprint(config)
    checkpoint = open_run(out, fingerprint, resume=resume, force=force)
    device = resolve_device(config.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.num_processes > 1:
        device = accelerator.device
    dtype = auto_dtype(device) if config.dtype == "auto" else resolve_dtype(config.dtype)
    model, tokenizer = load_model(
        config.target, device=device, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    n_layers = n_decoder_layers(model, config.layers_path)
    read_layers = resolve_read_layers(config, n_layers)
    check_layer_index(config.write_layer, n_layers, "write layer")
    data = prepare_data(config, tokenizer)
    decoder = add_lora(model, config)
    source = ActivationSource(
        decoder,
        data.dialogs,
        pad_token_id(tokenizer),
        read_layers,
        config.max_read_tokens,
        target_context=decoder.disable_adapter,
        layers_path=config.layers_path,
        pool=config.read_pool,
    )
    stats = _fit_standardizer(source, data, config) if config.standardize else None
    if config.cache_activations:
        cache = Path(config.cache_dir or out / "activation-cache")
        path = cache / f"{source.fingerprint(config.target)}.safetensors"
        with accelerator.main_process_first():
            source.load_or_build_cache(path, progress=progress and accelerator.is_main_process)

    per_step = config.batch_size * accelerator.num_processes * config.grad_accum
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(data.train) / per_step))
    trainable = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, total_steps, config.min_lr_ratio)
    )
    step = 0
    if checkpoint is not None:
        try:
            set_peft_model_state_dict(decoder, checkpoint.adapter)
            optimizer.load_state_dict(checkpoint.tensors["optimizer"])
            scheduler.load_state_dict(checkpoint.tensors["scheduler"])
            restore_rng(checkpoint)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            why = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
            raise LatentQAError(
                f"checkpoint {checkpoint.path} does not fit this run ({why}); "
                "start over with --force"
            ) from None
        step = checkpoint.state.step
    objective, optimizer = accelerator.prepare(
        LITObjective(decoder, config.write_layer, config.mode), optimizer
    )
    main = accelerator.is_main_process
    metrics_path = out / "metrics.jsonl"
    if main:
        start_writing(out, resume_step=step if checkpoint is not None else None, force=force)

    def log(record: dict) -> None:
        if main:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def evaluate() -> dict[str, float]:
        if not data.eval_items:
            return {}
        return evaluate_losses(
            decoder,
            tokenizer,
            source,
            data.eval_items,
            write_layer=config.write_layer,
            mode=config.mode,
            batch_size=config.batch_size,
            seed=config.seed,
        )

    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = config.batch_size * world
    lengths = example_lengths(data, config.max_read_tokens, len(read_layers), config.read_pool)
    dialogs = [dialog for dialog, _, _ in data.train]
    bar = tqdm(total=total_steps, initial=step, desc="LIT", disable=not (progress and main))
    decoder.train()
    last_eval: dict[str, float] = {}
    while step < total_steps:
        started, tokens, loss_sum = time.perf_counter(), 0, 0.0
        for micro in range(config.grad_accum):
            first = (step * config.grad_accum + micro) * global_batch + rank * config.batch_size
            picks = example_order(
                len(data.train),
                config.seed,
                range(first, first + config.batch_size),
                lengths,
                global_batch,
                dialogs,
                config.share_reads,
            )
            examples = [data.train[i] for i in picks]
            batch, flat, n_tokens = lit_inputs(tokenizer, source, examples, config.share_reads)
            batch = batch.to(flat.device)
            sync = micro == config.grad_accum - 1
            with nullcontext() if sync else accelerator.no_sync(objective), cpu_attention(device):
                loss = objective(batch, flat) / config.grad_accum
                accelerator.backward(loss)
            loss_sum += float(loss.detach())
            tokens += n_tokens * world
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        lr = scheduler.get_last_lr()[0]
        log(
            {
                "step": step,
                "kind": "train",
                "loss": loss_sum,
                "lr": lr,
                "tokens_per_s": tokens / elapsed,
                "examples_per_s": global_batch * config.grad_accum / elapsed,
            }
        )
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
        if config.eval_every and step % config.eval_every == 0 and step < total_steps:
            last_eval = evaluate()
            log({"step": step, "kind": "eval", **last_eval})
        if config.save_every and step % config.save_every == 0 and step < total_steps and main:
            adapter = get_peft_model_state_dict(decoder)
            state = TrainerState(step, fingerprint)
            save_checkpoint(
                checkpoints, state, adapter, optimizer, scheduler, config.keep_checkpoints
            )
        accelerator.wait_for_everyone()
    bar.close()
    last_eval = evaluate()
    if last_eval:
        log({"step": step, "kind": "eval", **last_eval})
    if main:
        _write_decoder(decoder, tokenizer, config, read_layers, n_layers, data, last_eval, stats)
        adapter = get_peft_model_state_dict(decoder)
        save_checkpoint(
            checkpoints, TrainerState(step, fingerprint), adapter, optimizer, scheduler,
            config.keep_checkpoints,
        )  # fmt: skip
        plot_losses(metrics_path, out / "loss.png")
    accelerator.wait_for_everyone()
    return TrainResult(out, step, last_eval, decoder)


def _fit_standardizer(
    source: ActivationSource, data: PreparedData, config: TrainConfig, limit: int = 512
) -> tuple[list[float], list[float]]:
    """Statistics of the raw vectors of up to ``limit`` training dialogs (seeded sample);
    ``source`` standardizes with them from then on. Deterministic, so a resumed run
    refits the same values."""
    dialogs = sorted({d for d, _, _ in data.train})
    generator = torch.Generator().manual_seed(config.seed)
    pick = [dialogs[i] for i in torch.randperm(len(dialogs), generator=generator)[:limit]]
    raw: list[torch.Tensor] = []
    for start in range(0, len(pick), 16):
        raw += source.compute(pick[start : start + 16])
    mean, std = fit_standardizer(raw)
    source.standardize(mean, std)
    return mean, std


def _write_decoder(
    decoder, tokenizer, config, read_layers, n_layers, data, metrics, stats=None
) -> None:
    """Save the adapter (safetensors) and latentqa.json into the output folder, each
    file replaced whole (see :func:`latentqa.train.run_folder.write_atomically`)."""
    hidden = decoder.get_base_model().config.hidden_size
    spec = DecoderSpec(
        target=config.target,
        read_layers=read_layers,
        write_layer=config.write_layer,
        mode=config.mode,
        max_read_tokens=config.max_read_tokens,
        pool=config.read_pool,
        vector_mean=stats[0] if stats else None,
        vector_std=stats[1] if stats else None,
        hidden_size=hidden,
        n_layers=n_layers,
        extra={
            "train_config": config_to_dict(config),
            "n_train_examples": len(data.train),
            "n_train_labels": data.n_train_labels,
            "task_counts": data.task_counts,
            "n_dropped_lookalikes": data.n_dropped_lookalikes,
            "n_eval_labels": data.n_eval_labels,
            "final_metrics": metrics,
        },
    )

    def write(folder: Path) -> None:
        decoder.save_pretrained(folder, safe_serialization=True)
        spec.save(folder)

    write_atomically(Path(config.out), write, last=SPEC_FILE)
