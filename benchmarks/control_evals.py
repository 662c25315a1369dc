"""The control evaluations' two inner loops, each against the way it ran before.

Usage: ``python benchmarks/control_evals.py [--steps 4] [--rounds 3] [--sentences 128]
[--threads N]``

(1) **Steering step** (``latentqa eval audit``'s "french" control on the shipped control
    decoder): one step of LIT steering, its loss and backward, with 4 prompts read as
    the target's own replies. The library asks both control questions of each read in
    one tree (``steer.loss.shared_pairs_batch``) with the math attention kernel; the
    reference gives every (read, question) pair its own row, as steering did before.
(2) **Sentence scoring** (``latentqa eval crows-pairs``): the log-probability of
    CrowS-Pairs sentences as the assistant's reply to one fixed prompt, in batches of
    32. The library computes the opening every row shares once
    (``generation.continuation_logprobs``); the reference runs every row whole.

Both use the embedded SmolLM2-135M in float32. The two paths alternate, so background
load hits both alike. Each round gives one speedup (the ratio of the paths' median
times), and the benchmark reports the median round and the largest difference between
the paths' losses or scores. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from latentqa import generation
from latentqa.decoder.packing import cpu_attention
from latentqa.evals.audit import AUDIT_BEHAVIORS
from latentqa.evals.crows_pairs import CHAT_PROMPT, load_crows_pairs
from latentqa.models import EMBEDDED_MODEL
from latentqa.steer import SteerableModel, steering_loss
from latentqa.steer.encoding import encode_reply
from latentqa.steer.model import STEER_ADAPTER


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed calls per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (one speedup each)")
    parser.add_argument("--sentences", type=int, default=128, help="sentences scored per call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser.parse_args()


def rounds_of(paths: dict[str, Callable[[], float]], steps: int, rounds: int) -> dict:
    """Alternate the paths; per round, the reference's median time over the library's."""
    times: dict[str, list[list[float]]] = {name: [] for name in paths}
    values: dict[str, list[float]] = {name: [] for name in paths}
    for run in paths.values():  # warm-up, untimed
        run()
    for _ in range(rounds):
        block: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(steps):
            for name, run in paths.items():
                start = time.perf_counter()
                values[name].append(run())
                block[name].append(time.perf_counter() - start)
        for name in paths:
            times[name].append(block[name])
    speedups = [
        statistics.median(ref) / statistics.median(lib)
        for lib, ref in zip(times["library"], times["reference"], strict=True)
    ]
    return {
        "speedup": round(statistics.median(speedups), 3),
        "speedup_rounds": [round(s, 3) for s in speedups],
        "library_s": round(statistics.median(t for r in times["library"] for t in r), 4),
        "reference_s": round(statistics.median(t for r in times["reference"] for t in r), 4),
        "max_difference": max(
            abs(a - b) for a, b in zip(values["library"], values["reference"], strict=True)
        ),
    }


def steering_step(args: argparse.Namespace) -> dict:
    steerable = SteerableModel.load(EMBEDDED_MODEL, None, device="cpu")
    pairs = list(AUDIT_BEHAVIORS["french"].control)
    prompts = [
        "Tell me about your weekend.",
        "How do I boil an egg?",
        "What is a good name for a cat?",
        "Give me a tip for sleeping better.",
    ]
    replies = generation.generate_texts(
        steerable.model, steerable.tokenizer, prompts, max_new_tokens=32
    )
    tokenizer = steerable.tokenizer
    encoded = [encode_reply(tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
    steerable.add_steering(r=8, alpha=16, seed=0)
    torch.manual_seed(0)
    for name, parameter in steerable.model.named_parameters():
        if f".{STEER_ADAPTER}." in name and "lora_B" in name:  # an adapter that acts
            torch.nn.init.normal_(parameter, std=0.01)
    read_layers = steerable.spec.read_layers

    def step(shared: bool) -> float:
        context = cpu_attention(torch.device("cpu")) if shared else nullcontext()
        with context:
            loss, _ = steering_loss(steerable, encoded, pairs, read_layers, shared=shared)
            loss.backward()
        for parameter in steerable.steering_parameters():
            parameter.grad = None
        return float(loss.detach())

    paths = {"library": lambda: step(True), "reference": lambda: step(False)}
    return rounds_of(paths, args.steps, args.rounds)


def sentence_scoring(args: argparse.Namespace) -> dict:
    steerable = SteerableModel.load(EMBEDDED_MODEL, None, device="cpu")
    rows = load_crows_pairs()[: args.sentences // 2]
    sentences = [r.stereotypical for r in rows] + [r.anti for r in rows]
    shared_opening = generation._shared_opening

    def whole_rows(_lm, ids, attention, _most, _pad):  # the batch as it is: no cache
        return ids, attention, None

    def score(shared: bool) -> float:
        generation._shared_opening = shared_opening if shared else whole_rows
        try:
            with steerable.unsteered() as model, torch.no_grad():
                scores = generation.reply_logprobs(
                    model,
                    steerable.tokenizer,
                    [CHAT_PROMPT] * len(sentences),
                    sentences,
                    batch_size=32,
                )
        finally:
            generation._shared_opening = shared_opening
        return sum(s for s, _ in scores)

    paths = {"library": lambda: score(True), "reference": lambda: score(False)}
    return rounds_of(paths, args.steps, args.rounds)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    results = {}
    for name, run in (("steering_step", steering_step), ("sentence_scoring", sentence_scoring)):
        results[name] = run(args)
        r = results[name]
        print(
            f"{name}: library {r['library_s']:.3f} s, reference {r['reference_s']:.3f} s, "
            f"speedup {r['speedup']:.2f}x (rounds {r['speedup_rounds']}), largest "
            f"difference {r['max_difference']:.2e}"
        )
    print(json.dumps({"benchmark": "control_evals", **results}))


if __name__ == "__main__":
    main()
