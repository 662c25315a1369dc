"""Latent Interpretation Tuning: train a LoRA decoder to answer questions about activations.

One optimizer step: for ``grad_accum`` micro-batches, fetch the target's read
vectors (live, or from the on-disk cache), lay out decoder prompts with one
placeholder per vector, patch the vectors in at the write layer (or, through a
projector, as soft input tokens: :mod:`latentqa.train.projector_fit`) and take the
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
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentqa.decoder.folder import pool_width
from latentqa.decoder.packing import cpu_attention
from latentqa.decoder.projector import Projector
from latentqa.layers import check_layer_index, find_decoder_layers, resolve_read_layers
from latentqa.models import load_model, resolve_device, resolve_dtype
from latentqa.schedule import example_order, lr_lambda
from latentqa.train.activations import ActivationSource, run_reads
from latentqa.train.checkpoint import TrainerState, projector_state, resume_from, save_checkpoint
from latentqa.train.config import TrainConfig
from latentqa.train.evaluate import evaluate_losses
from latentqa.train.init_from import distill_projector, init_from_decoder
from latentqa.train.objective import LITObjective, lit_inputs
from latentqa.train.plots import plot_losses
from latentqa.train.preflight import preflight_train
from latentqa.train.prepare import (
    PreparedData,
    add_lora,
    config_fingerprint,
    example_lengths,
    fit_vector_standardizer,
    prepare_data,
)
from latentqa.train.projector_fit import build_projector, freeze_lora_step, parameter_groups
from latentqa.train.run_folder import (
    CHECKPOINTS,
    check_flags,
    open_run,
    start_writing,
    write_decoder,
)
from latentqa.train.verbalizer import TextVectorSource, verbalizing


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


@dataclass
class _Run:
    """What a run holds between optimizer steps (built by :func:`_start`)."""

    config: TrainConfig
    fingerprint: str
    accelerator: Any
    device: torch.device
    tokenizer: Any
    decoder: Any
    """The peft model: the target with the LoRA adapter, which reads with it disabled."""
    source: ActivationSource
    data: PreparedData
    read_layers: list[int]
    n_layers: int
    stats: tuple[list[float], list[float]] | None
    """Standardization mean and std (``--standardize``), else ``None``."""
    projector: Projector | None
    """The projector in front of the decoder (``--projector``), else ``None``."""
    lora: list[nn.Parameter]
    """The LoRA's trainable weights."""
    trainable: list[nn.Parameter]
    """Every trained weight: the LoRA's, then the projector's."""
    optimizer: Any
    """Prepared by accelerate (DDP-aware) after the checkpoint is restored."""
    scheduler: torch.optim.lr_scheduler.LambdaLR
    objective: nn.Module
    text_source: TextVectorSource | None
    """The verbalizer phase's soft tokens (``--verbalize-steps``), else ``None``."""
    total_steps: int
    step: int
    """Optimizer steps completed (restored from the checkpoint on resume)."""

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl`` (main process only)."""
        if self.main:
            with (self.out / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")


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
    run = _start(config, resume=resume, force=force, progress=progress)
    bar = tqdm(
        total=run.total_steps, initial=run.step, desc="LIT", disable=not (progress and run.main)
    )
    run.decoder.train()
    last_eval: dict[str, float] = {}
    # Computed once: the example order needs them at every step.
    lengths = example_lengths(
        run.data, config.max_read_tokens, len(run.read_layers), config.read_pool
    )
    dialogs = run.data.groups or [dialog for dialog, _, _ in run.data.train]
    while run.step < run.total_steps:
        record = _step(run, lengths, dialogs)
        run.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
        before_end = run.step < run.total_steps
        if config.eval_every and run.step % config.eval_every == 0 and before_end:
            last_eval = _evaluate(run)
            run.log({"step": run.step, "kind": "eval", **last_eval})
        if config.save_every and run.step % config.save_every == 0 and before_end and run.main:
            _save_checkpoint(run)
        run.accelerator.wait_for_everyone()
    bar.close()
    last_eval = _evaluate(run)
    if last_eval:
        run.log({"step": run.step, "kind": "eval", **last_eval})
    if run.main:
        _save_final(run, last_eval)
    run.accelerator.wait_for_everyone()
    return TrainResult(run.out, run.step, last_eval, run.decoder)


def _start(config: TrainConfig, *, resume: bool, force: bool, progress: bool) -> _Run:
    """Check the options and the folder, load the model and data, and resume if asked."""
    from accelerate import Accelerator

    check_flags(resume=resume, force=force)
    preflight_train(config, resume=resume)  # bad paths, layers, numbers: before the load
    out = Path(config.out)
    fingerprint = config_fingerprint(config)
    checkpoint = open_run(out, fingerprint, resume=resume, force=force)
    device = resolve_device(config.device)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.num_processes > 1:
        device = accelerator.device
    dtype = resolve_dtype(config.dtype, device)
    model, tokenizer = load_model(
        config.target, device=device, dtype=dtype, trust_remote_code=config.trust_remote_code
    )
    blocks = find_decoder_layers(model, config.layers_path)
    n_layers = len(blocks)
    read_layers = resolve_read_layers(config.read_layers, n_layers)
    check_layer_index(config.write_layer, n_layers, "write layer")
    data = prepare_data(config, tokenizer)
    decoder = add_lora(model, config)
    source = run_reads(
        decoder, data.dialogs, tokenizer, read_layers, config, blocks, data.baselines
    )
    # A run from a trained decoder standardizes with that decoder's statistics (below),
    # unless its projector is distilled onto this run's reads.
    distilled = config.init_from is not None and config.projector_init == "distilled"
    fit_stats = config.standardize and (config.init_from is None or distilled)
    stats = fit_vector_standardizer(source, data, config) if fit_stats else None
    if config.cache_activations:
        cache = Path(config.cache_dir or out / "activation-cache")
        path = cache / f"{source.fingerprint(config.target)}.safetensors"
        with accelerator.main_process_first():
            source.load_or_build_cache(
                path,
                progress=progress and accelerator.is_main_process,
                read_key=source.read_key(config.target),
            )

    per_step = config.batch_size * accelerator.num_processes * config.grad_accum
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(data.train) / per_step))
    lora = [p for p in decoder.parameters() if p.requires_grad]
    n_slots = len(read_layers) * pool_width(config.read_pool)
    # A resumed run takes the projector's weights from its checkpoint: no fit needed.
    fresh = checkpoint is None and config.init_from is None
    projector = build_projector(
        config, decoder, tokenizer, source, data, n_slots=n_slots, fit=fresh
    )
    if config.init_from is not None:  # resumed too: its statistics, not refitted ones
        taken = init_from_decoder(
            config.init_from,
            config,
            decoder,
            projector,
            source,
            read_layers,
            fresh=checkpoint is None,
        )
        stats = stats if distilled else taken
    if distilled and projector is not None and checkpoint is None:
        hidden = data.baselines  # contrast reads: dialogs with nothing hidden read zeros
        fit = sorted({d for d, _, _ in data.train if hidden is None or hidden[d] is not None})
        distill_projector(config.init_from, config, projector, source, fit)
    if projector is None:  # one group, as runs before the projector had it
        optimizer = torch.optim.AdamW(lora, lr=config.lr, weight_decay=config.weight_decay)
    else:
        groups = parameter_groups(lora, projector, config)
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.warmup_steps, total_steps, config.min_lr_ratio)
    )
    step = 0
    if checkpoint is not None:
        step = resume_from(checkpoint, decoder, optimizer, scheduler, projector)
    text_source = None
    if config.verbalize_steps:
        embeddings = decoder.get_input_embeddings()
        text_source = TextVectorSource(embeddings, tokenizer, data.fit_texts, n_slots)
    objective = LITObjective(
        decoder, config.write_layer, config.mode, blocks, projector, config.lora_from
    )
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if accelerator.is_main_process:
        start_writing(out, resume_step=step if checkpoint is not None else None, force=force)
    return _Run(
        config=config,
        fingerprint=fingerprint,
        accelerator=accelerator,
        device=device,
        tokenizer=tokenizer,
        decoder=decoder,
        source=source,
        data=data,
        read_layers=read_layers,
        n_layers=n_layers,
        stats=stats,
        projector=projector,
        lora=lora,
        trainable=lora + ([] if projector is None else list(projector.parameters())),
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
        text_source=text_source,
        total_steps=total_steps,
        step=step,
    )


def _step(run: _Run, lengths: Sequence[int], dialogs: Sequence[int]) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches; returns its metrics record."""
    config, accelerator = run.config, run.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    global_batch = config.batch_size * world
    started, tokens, loss_sum = time.perf_counter(), 0, 0.0
    # The verbalizer phase reads no target: soft tokens from each dialog's masked text.
    verbal = verbalizing(run.step, config.verbalize_steps)
    source = run.text_source if verbal else run.source
    for micro in range(config.grad_accum):
        first = (run.step * config.grad_accum + micro) * global_batch + rank * config.batch_size
        picks = example_order(
            len(run.data.train),
            config.seed,
            range(first, first + config.batch_size),
            lengths,
            global_batch,
            dialogs,
            config.share_reads,
        )
        examples = [run.data.train[i] for i in picks]
        batch, flat, n_tokens = lit_inputs(
            run.tokenizer, source, examples, config.share_reads, config.prompt_order
        )
        batch = batch.to(flat.device)
        sync = micro == config.grad_accum - 1
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        no_sync = nullcontext() if sync else accelerator.no_sync(run.objective)
        with no_sync, cpu_attention(run.device):
            loss = run.objective(batch, flat, projected=verbal) / config.grad_accum
            accelerator.backward(loss)
        loss_sum += float(loss.detach())
        tokens += n_tokens * world
    freeze_lora_step(run.lora, run.step, config)  # the projector's warmup steps
    if verbal and run.projector is not None:
        for parameter in run.projector.parameters():  # unused: AdamW leaves it untouched
            parameter.grad = None
    if config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(run.trainable, config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    elapsed = time.perf_counter() - started
    phase = {"phase": "verbalize"} if verbal else {}
    return {
        "step": run.step,
        "kind": "train",
        "loss": loss_sum,
        "lr": run.scheduler.get_last_lr()[0],
        "tokens_per_s": tokens / elapsed,
        "examples_per_s": global_batch * config.grad_accum / elapsed,
        **phase,
    }


def _evaluate(run: _Run) -> dict[str, float]:
    """Held-out losses with real, zeroed and shuffled activations (empty without data)."""
    if not run.data.eval_items:
        return {}
    return evaluate_losses(
        run.decoder,
        run.tokenizer,
        run.source,
        run.data.eval_items,
        write_layer=run.config.write_layer,
        mode=run.config.mode,
        batch_size=run.config.batch_size,
        seed=run.config.seed,
        blocks=run.source.blocks,
        projector=run.projector,
        order=run.config.prompt_order,
        lora_from=run.config.lora_from,
    )


def _save_checkpoint(run: _Run) -> None:
    """Write a checkpoint of the current step (main process only)."""
    from peft.utils import get_peft_model_state_dict

    adapter = {**get_peft_model_state_dict(run.decoder), **projector_state(run.projector)}
    state = TrainerState(run.step, run.fingerprint)
    save_checkpoint(
        run.out / CHECKPOINTS,
        state,
        adapter,
        run.optimizer,
        run.scheduler,
        run.config.keep_checkpoints,
    )


def _save_final(run: _Run, metrics: dict[str, float]) -> None:
    """The decoder folder, a last checkpoint and the loss plot (main process only)."""
    write_decoder(
        run.decoder,
        run.config,
        run.read_layers,
        run.n_layers,
        run.data,
        metrics,
        run.stats,
        run.projector,
    )
    _save_checkpoint(run)
    plot_losses(run.out / "metrics.jsonl", run.out / "loss.png")
