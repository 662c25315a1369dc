"""``--lora-from reads`` training: the frozen tokens once without autograd, against one pass.

Usage: ``python benchmarks/frozen_prefix.py [--batch-size 32] [--steps 4] [--rounds 3]
[--dtype float32] [--threads N]``

The embedded SmolLM2-135M as the decoder, with LoRA r=16 on all linear layers (peft,
float32, random ``B`` so the adapter acts from the first step). Each batch is what a
step of run Q (docs/decoder-experiments.md) trains on: question-first yes/no prompts
about the release's training system prompts, each candidate asked of two reads (its own
and another's, as ``--yes-no-negatives read`` pairs them), packed by
``question_shared_batch`` as the trainer packs them, 3 vectors per read (a 3-layer pooled
read; random here, the cost does not depend on their values). A timed step is the answer
loss and its backward, with ``frozen_once=False`` (one ordinary pass, the LoRA gated) and
``frozen_once=True`` (:mod:`latentqa.decoder.frozen_prefix`), alternating, so background
load hits both alike. One speedup per round (median step time of each), and the largest
difference between the two losses. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from latentqa.decoder.loss import answer_token_loss
from latentqa.decoder.packing import question_shared_batch
from latentqa.models import EMBEDDED_MODEL, load_model
from latentqa.questions import NO, RECONSTRUCT_QUESTION, YES, yes_no_question

RELEASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "latentqa-release" / "train"
N_VECTORS = 3
WRITE_LAYER = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per step (pairs x 2)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (one speedup each)")
    parser.add_argument("--dtype", default="float32", help="frozen weights: float32, bfloat16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--release", default=str(RELEASE), help="release folder (system.json)")
    return parser.parse_args()


def prompts(folder: str) -> list[str]:
    path = Path(folder) / "system.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: pass --release FOLDER (the release's training prompts)")
    return [row["system"] for row in json.loads(path.read_text(encoding="utf-8"))]


def batches(tokenizer, texts: list[str], hidden: int, size: int, n: int, seed: int = 0):
    """``n`` batches of ``size`` prompts: ``size // 2`` candidates, each asked of its own
    read ("yes") and of another one ("no")."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        reads = [torch.randn(N_VECTORS, hidden, generator=generator) for _ in range(size)]
        examples = []
        for pair in range(size // 2):
            question = yes_no_question(RECONSTRUCT_QUESTION, rng.choice(texts))
            examples += [(2 * pair, question, YES), (2 * pair + 1, question, NO)]
        out.append(question_shared_batch(tokenizer, reads, examples, max_branches=2))
    return out


def step(decoder, batch, vectors, frozen_once: bool) -> tuple[float, float]:
    started = time.perf_counter()
    loss = answer_token_loss(
        decoder,
        batch,
        vectors,
        write_layer=WRITE_LAYER,
        mode="replace",
        lora_from="reads",
        frozen_once=frozen_once,
    )
    loss.backward()
    decoder.zero_grad(set_to_none=True)
    return time.perf_counter() - started, float(loss.detach())


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(EMBEDDED_MODEL, "cpu", args.dtype)
    torch.manual_seed(0)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    decoder = get_peft_model(model, lora)
    for parameter in decoder.parameters():  # LoRA in float32, as the trainer keeps it
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    texts = prompts(args.release)
    hidden = model.config.hidden_size
    work = batches(tokenizer, texts, hidden, args.batch_size, args.rounds * args.steps + 1)
    for frozen_once in (False, True):  # warm-up, untimed
        step(decoder, *work[0], frozen_once)
    rounds, gap = [], 0.0
    for r in range(args.rounds):
        times: dict[bool, list[float]] = {False: [], True: []}
        for batch, vectors in work[1 + r * args.steps : 1 + (r + 1) * args.steps]:
            losses = {}
            for frozen_once in (False, True):
                seconds, losses[frozen_once] = step(decoder, batch, vectors, frozen_once)
                times[frozen_once].append(seconds)
            gap = max(gap, abs(losses[True] - losses[False]))
        one, split = statistics.median(times[False]), statistics.median(times[True])
        rounds.append({"one_pass_s": one, "frozen_once_s": split, "speedup": one / split})
        print(f"round {r + 1}: one pass {one:.2f} s, frozen once {split:.2f} s, {one / split:.2f}x")
    tokens = [int((b.input_ids != tokenizer.pad_token_id).sum()) for b, _ in work]
    result = {
        "benchmark": "frozen_prefix",
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "mean_tokens_per_batch": statistics.mean(tokens),
        "rounds": rounds,
        "median_speedup": statistics.median(r["speedup"] for r in rounds),
        "max_loss_difference": gap,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
