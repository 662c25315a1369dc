"""Training throughput of LIT: the library's trainer path against a straightforward reference.

Usage: ``python benchmarks/train_throughput.py [--warmup 2] [--steps 4] [--rounds 3]
[--batch-size 8] [--share-reads N] [--data FOLDER] [--dtype auto] [--threads N]
[--profile N] [--check-trainer]``

Both paths train the embedded SmolLM2-135M decoder on the same shuffled examples (the
library groups examples of similar length into a batch, as the trainer does; the
reference takes them in plain shuffled order), read layer 15, write layer 0, ``replace``
injection, the same ``max_read_tokens`` and LoRA (r=16, all linear layers, same seed),
AdamW with the trainer's clipping and schedule:

(a) library: frozen weights in the dtype ``--dtype auto`` picks (bfloat16 only where a
    short matmul measures it at least as fast as float32 here), float32 LoRA from
    ``add_lora``, activations from an
    ``ActivationSource`` with the on-disk cache (built before timing, reported
    separately), the trainer's example order and ``lit_inputs`` (up to ``share_reads``
    examples of one dialog compute its read once), the answer loss (logits only at
    answer positions) through the trainer's ``LITObjective`` and ``Accelerator``, the
    math attention kernel on a CPU (``cpu_attention``).
(b) reference: float32 weights, peft LoRA; every step recomputes the target's
    activations with a full forward (all blocks and the LM head,
    ``output_hidden_states=True``) under ``disable_adapter()``, then the decoder forward
    with ``labels=`` (logits at every position, -100 outside the answer), patched via
    ``patch_activations``.

Timed steps of (a) and (b) alternate, so background load on a shared machine hits both
alike; ``--rounds`` blocks of ``--steps`` steps each give one speedup per round, and the
median is reported with its spread. Tokens are the real (non-pad) decoder input tokens
of each example laid out alone: the work to do, the same measure for both paths even
where (a) computes a shared read once; ``examples_per_s`` counts examples.
``--check-trainer`` also runs ``latentqa.train.trainer.train`` itself on the same data
and cache and reports the tokens/s it logs. The last line printed is a JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from train_support import (
    Reference,
    matmul_gflops,
    parse_args,
    peak_rss_mb,
    subset_data,
    write_synthetic_data,
)

READ_LAYER = 15
WRITE_LAYER = 0
MODE = "replace"
TARGET_SPEEDUP = 2.5
TARGET_RSS_MB = 4096


def main(argv: list[str] | None = None) -> int:
    from latentqa.train.config import TrainConfig

    args = parse_args(argv, __doc__.splitlines()[0], TrainConfig.share_reads)

    # Imported up front so their one-off import cost is billed to neither path.
    import transformers  # noqa: F401
    from accelerate import Accelerator

    from latentqa.capture import pad_token_id
    from latentqa.decoder.packing import SharedBatch, cpu_attention
    from latentqa.devices import resolve_dtype
    from latentqa.layers import find_decoder_layers
    from latentqa.models import EMBEDDED_MODEL, load_model
    from latentqa.schedule import example_order, lr_lambda
    from latentqa.train.activations import ActivationSource
    from latentqa.train.objective import LITObjective, lit_inputs
    from latentqa.train.prepare import add_lora, example_lengths, prepare_data

    if args.threads:
        torch.set_num_threads(args.threads)
    n_steps = args.warmup + args.rounds * args.steps
    device = torch.device("cpu")
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")
    if load > cores / 2 and torch.get_num_threads() > 1:
        # Other processes hold the cores: torch's threads wait on descheduled peers and
        # every step slows several-fold (seen: 60 s instead of 4.5-7.7 s per step).
        print(f"warning: load {load:.1f} on {cores} cores; consider --threads 1")

    peak = {"float32": matmul_gflops(torch.float32), "bfloat16": matmul_gflops(torch.bfloat16)}
    print(
        f"matmul peak (2048^2): float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 {peak['bfloat16']:.0f} GFLOP/s"
    )

    with tempfile.TemporaryDirectory(prefix="latentqa-train-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.data is None:
            data_folder = write_synthetic_data(tmp_path / "data")
            print(f"data: synthetic, {data_folder}")
        elif args.labels:
            print(f"data: {args.data}, behaviours of its first {args.labels} labels")
            data_folder = subset_data(Path(args.data), tmp_path / "data", args.labels)
        else:
            data_folder = Path(args.data)
            print(f"data: {data_folder}")
        config = TrainConfig(
            data=str(data_folder),
            out=str(tmp_path / "out"),
            target=EMBEDDED_MODEL,
            read_layers=[READ_LAYER],
            write_layer=WRITE_LAYER,
            mode=MODE,
            max_read_tokens=args.max_read_tokens,
            batch_size=args.batch_size,
            share_reads=args.share_reads,
            steps=n_steps,
            device="cpu",
            cache_activations=True,
            cache_dir=str(tmp_path / "cache"),
            eval_every=0,
            save_every=0,
        )

        # ---- (a) the library's path, set up exactly as train() does -------------------
        dtype = resolve_dtype(args.dtype, device)  # auto: measured, as the trainer does
        model_a, tokenizer = load_model(config.target, device=device, dtype=dtype)
        data = prepare_data(config, tokenizer)
        decoder = add_lora(model_a, config)
        pad_id = pad_token_id(tokenizer)
        source = ActivationSource(
            decoder,
            data.dialogs,
            pad_id,
            [READ_LAYER],
            config.max_read_tokens,
            target_context=decoder.disable_adapter,
        )
        cache_path = Path(config.cache_dir) / "acts.safetensors"
        start = time.perf_counter()
        source.load_or_build_cache(cache_path, progress=False)
        cache_build_s = time.perf_counter() - start
        print(
            f"{len(data.train)} examples, {len(data.dialogs)} dialogs; activation cache "
            f"built in {cache_build_s:.2f} s (one-off, not timed below)"
        )

        # Both paths draw from the same shuffled epochs. The library orders examples as
        # the trainer does (similar lengths together, a dialog's examples side by side);
        # the reference takes the plain shuffled order, as a straightforward
        # implementation would.
        lengths = example_lengths(data, config.max_read_tokens, 1)
        dialogs = [d for d, _, _ in data.train]
        stream = range(n_steps * config.batch_size)
        orders = {
            "a": example_order(
                len(data.train),
                config.seed,
                stream,
                lengths,
                config.batch_size,
                dialogs,
                config.share_reads,
            ),
            "b": example_order(len(data.train), config.seed, stream),
        }
        batches = {
            name: [
                [data.train[i] for i in order[s * config.batch_size : (s + 1) * config.batch_size]]
                for s in range(n_steps)
            ]
            for name, order in orders.items()
        }

        accelerator = Accelerator(cpu=True)
        trainable_a = [p for p in decoder.parameters() if p.requires_grad]
        optimizer_a = torch.optim.AdamW(trainable_a, lr=config.lr, weight_decay=config.weight_decay)
        scheduler_a = torch.optim.lr_scheduler.LambdaLR(
            optimizer_a, lr_lambda(config.warmup_steps, n_steps, config.min_lr_ratio)
        )
        objective, optimizer_a = accelerator.prepare(
            LITObjective(decoder, WRITE_LAYER, MODE), optimizer_a
        )
        decoder.train()
        computed: list[int] = []  # tokens (a) actually ran (shared reads once)
        slots: list[int] = []  # token slots of (a)'s input tensor, padding included

        def step_a(examples) -> tuple[float, int, int]:
            """One optimizer step as trainer.train takes it (grad_accum=1)."""
            batch, flat, n_tokens = lit_inputs(tokenizer, source, examples, config.share_reads)
            batch = batch.to(flat.device)
            with cpu_attention(device):
                loss = objective(batch, flat)
                accelerator.backward(loss)
            accelerator.clip_grad_norm_(trainable_a, config.max_grad_norm)
            optimizer_a.step()
            scheduler_a.step()
            optimizer_a.zero_grad(set_to_none=True)
            shared = isinstance(batch, SharedBatch)
            computed.append(batch.n_tokens if shared else n_tokens)
            slots.append(batch.input_ids.numel())
            return float(loss.detach()), n_tokens, int(batch.label_mask.sum())

        losses: dict[str, list[float]] = {"a": [], "b": []}
        for step in range(args.warmup):
            losses["a"].append(step_a(batches["a"][step])[0])
        # The library path alone (setup, cache, warm-up), before the reference is loaded.
        library_rss = peak_rss_mb()

        # ---- (b) the reference algorithm -----------------------------------------------
        reference = Reference(
            config, data, tokenizer, device, n_steps, READ_LAYER, WRITE_LAYER, MODE
        )

        # ---- warm-up, then rounds of alternating timed steps ----------------------------
        for step in range(args.warmup):
            losses["b"].append(reference.step(batches["b"][step])[0])
        del computed[:], slots[:]  # warm-up steps are not timed
        steppers = {"a": step_a, "b": reference.step}
        times: dict[str, list[float]] = {"a": [], "b": []}
        tokens: dict[str, list[int]] = {"a": [], "b": []}
        answers: list[int] = []
        for step in range(args.warmup, n_steps):
            for name in ("a", "b"):
                start = time.perf_counter()
                loss, n_tokens, n_answer = steppers[name](batches[name][step])
                times[name].append(time.perf_counter() - start)
                losses[name].append(loss)
                tokens[name].append(n_tokens)
                if name == "a":
                    answers.append(n_answer)

        def rounds(values: list) -> list[list]:
            return [values[r * args.steps : (r + 1) * args.steps] for r in range(args.rounds)]

        per_round = {
            name: [
                sum(n) / sum(t)
                for n, t in zip(rounds(tokens[name]), rounds(times[name]), strict=True)
            ]
            for name in ("a", "b")
        }  # tokens/s of each path in each round
        speedups = [a / b for a, b in zip(per_round["a"], per_round["b"], strict=True)]
        speedup = statistics.median(speedups)
        rate = {name: statistics.median(per_round[name]) for name in ("a", "b")}
        examples_rate = {
            name: config.batch_size * len(times[name]) / sum(times[name]) for name in ("a", "b")
        }
        for name, label in (
            ("a", f"library ({str(dtype).removeprefix('torch.')})"),
            ("b", "reference (float32)"),
        ):
            step_ms = ", ".join(f"{t * 1e3:.0f}" for t in times[name])
            rounds_text = ", ".join(f"{r:.0f}" for r in per_round[name])
            print(
                f"({name}) {label}: {rate[name]:.0f} tokens/s (rounds: {rounds_text}), "
                f"{examples_rate[name]:.2f} examples/s, median step "
                f"{statistics.median(times[name]):.3f} s [{step_ms} ms]"
            )
            print(f"    losses: {', '.join(f'{x:.3f}' for x in losses[name])}")
        print(
            f"tokens per step: (a) {tokens['a']} of which computed {computed} in {slots} "
            "slots, "
            f"(b) {tokens['b']}; answer tokens (a) {answers}"
        )
        print(
            f"speedup per round: {', '.join(f'{x:.2f}' for x in speedups)}; median "
            f"{speedup:.2f}x, spread {min(speedups):.2f}-{max(speedups):.2f}"
        )

        # ---- model FLOP utilisation of (a) ----------------------------------------------
        # FLOPs per step = 4 * N_body * computed tokens + 4 * V * d * answer_tokens, where
        #   N_body = frozen parameters of the decoder blocks (no embeddings, no LoRA);
        #   forward 2 * N_body per token, backward 2 * N_body per token (input gradients
        #   only: the base weights are frozen, LoRA's own gradients are negligible);
        #   the LM head (V * d) runs only on answer positions in (a), forward + input
        #   gradient = 4 * V * d per answer token. Computed tokens count a shared read
        #   once. Attention-score FLOPs and padding are not counted (a slight
        #   underestimate). Peak = matmul peak of the dtype.
        blocks = find_decoder_layers(decoder)
        n_body = sum(
            p.numel() for block in blocks for p in block.parameters() if not p.requires_grad
        )
        head = decoder.get_base_model().get_output_embeddings().weight.numel()
        flops = 4 * n_body * sum(computed) + 4 * head * sum(answers)
        achieved = flops / sum(times["a"]) / 1e9
        dtype_name = str(dtype).removeprefix("torch.")
        mfu = achieved / peak[dtype_name]
        print(
            f"(a) MFU: {achieved:.0f} GFLOP/s of {peak[dtype_name]:.0f} ({dtype_name} peak) "
            f"= {mfu:.1%}  [N_body {n_body / 1e6:.1f}M, head {head / 1e6:.1f}M]"
        )
        # Same count for (b), for diagnosis: full target forward (body + head) on the
        # dialog tokens, decoder forward + input-gradient backward with the head everywhere.
        timed_dialog_tokens = sum(reference.dialog_tokens[args.warmup :])
        flops_b = 2 * (n_body + head) * timed_dialog_tokens + 4 * (n_body + head) * sum(tokens["b"])
        mfu_b = flops_b / sum(times["b"]) / 1e9 / peak["float32"]
        work_ratio = flops_b / flops
        print(
            f"(b) MFU: {mfu_b:.1%} of the float32 peak; (b) does {work_ratio:.2f}x the "
            f"FLOPs of (a) ({timed_dialog_tokens / len(times['b']):.0f} target tokens per step)"
        )

        n_timed = len(times["a"])
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for k in range(args.profile):
                    step_a(batches["a"][args.warmup + k % (n_steps - args.warmup)])
            print(f"(a) profile of {args.profile} steps (self CPU time):")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))

        trainer_rate = None
        if args.check_trainer:
            del steppers, reference  # the second model copy: free it before train()
            from latentqa.train.trainer import train

            train(config, progress=False)
            records = [
                json.loads(line)
                for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()
                if line.strip()
            ]
            rates = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
            trainer_rate = statistics.median(rates[args.warmup :])
            print(f"trainer.train itself: median {trainer_rate:.0f} tokens/s (metrics.jsonl)")

    # The target is the trainer's memory: the library path's peak, taken before this
    # script loads the reference's second model copy into the same process.
    process_rss = peak_rss_mb()
    rss = library_rss
    ok = speedup >= TARGET_SPEEDUP and rss <= TARGET_RSS_MB
    print(f"peak RSS of the library path alone (before the reference loads): {library_rss:.0f} MB")
    print(
        f"speedup {speedup:.2f}x (median of {args.rounds} rounds; target >= "
        f"{TARGET_SPEEDUP}), peak RSS {rss:.0f} MB (target <= {TARGET_RSS_MB}): "
        f"{'OK' if ok else 'MISSED'}"
    )
    result = {
        "benchmark": "train_throughput",
        "model": EMBEDDED_MODEL,
        "batch_size": args.batch_size,
        "share_reads": args.share_reads,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "rounds": args.rounds,
        "n_train_examples": len(data.train),
        "threads": torch.get_num_threads(),
        "speedup": round(speedup, 3),
        "speedup_rounds": [round(x, 3) for x in speedups],
        "speedup_spread": round(max(speedups) - min(speedups), 3),
        "tokens_per_s": round(rate["a"], 1),
        "reference_tokens_per_s": round(rate["b"], 1),
        "examples_per_s": round(examples_rate["a"], 3),
        "reference_examples_per_s": round(examples_rate["b"], 3),
        "trainer_tokens_per_s": None if trainer_rate is None else round(trainer_rate, 1),
        "mean_tokens_per_step": round(statistics.mean(tokens["a"]), 1),
        # (profiled steps, if any, come after the timed ones: not counted)
        "mean_computed_tokens_per_step": round(statistics.mean(computed[:n_timed]), 1),
        "mean_slots_per_step": round(statistics.mean(slots[:n_timed]), 1),
        "step_s": [round(t, 4) for t in times["a"]],
        "reference_step_s": [round(t, 4) for t in times["b"]],
        "cache_build_s": round(cache_build_s, 3),
        "mfu": round(mfu, 4),
        "achieved_gflops": round(achieved, 1),
        "reference_mfu": round(mfu_b, 4),
        "work_ratio": round(work_ratio, 3),
        "peak_rss_mb": round(rss, 1),
        "process_peak_rss_mb": round(process_rss, 1),
        "dtype": dtype_name,
        "matmul_gflops": {k: round(v, 1) for k, v in peak.items()},
        "targets_met": ok,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
