"""Scoring cost of ``latentqa eval system-prompt``: token tries against the scoring before them.

Usage: ``python benchmarks/eval_scoring.py [--items 24] [--rounds 3] [--device cpu]
[--dtype float32] [--threads N] [--random-weights]``

On the first ``--items`` items of the shipped held-out set, with the embedded
SmolLM2-135M target and its shipped decoder (``--random-weights``: a randomly
initialised model of the same shape with LoRA adapters, nothing loaded; for machines
that must not load the real weights), both paths score what one decoder method scores
(``lit``: every item's 5 options, its calibration baseline, i.e. the same options given
zeroed vectors, and its 2 yes/no questions' ``Yes.`` / ``No.`` rows) and what the black
box scores (each item's 5 options as the target's reply after the user turn, a fixed
48-token reply and the question):

(a) library: ``latentqa.evals.system_prompt_scoring.item_scores`` (one call of
    ``Reader.score_rows_shared``: each item's rows one token trie, zeroed rows once per
    read length and answer) and ``latentqa.evals.blackbox.score_answer_sets`` (each
    item's prompt once, the LM head at answer positions only);
(b) reference: the scoring of the commit before, ``Reader.score_rows`` in batches of 32
    rows (a read shared up to its last placeholder) for options, zeroed options and
    yes/no rows in separate calls, and ``score_answers`` per item (a full forward with
    full logits per item).

Timed rounds of (a) and (b) alternate, so background load hits both alike; the median
speedup is reported with its spread, with the largest score difference and whether
every item's chosen option agrees. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPLY = (
    "Of course! Here is what I would suggest, step by step, with a few details that "
    "should help you decide what works best for you and your plans this week."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24, help="held-out items scored")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="a random model of the embedded model's shape instead of the real weights",
    )
    return parser.parse_args(argv)


def random_reader(device: str):
    """A random SmolLM2-135M-shaped decoder with LoRA (the tokenizer and config only are read)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from latentqa.decoder.folder import DecoderSpec, open_decoder_folder
    from latentqa.decoder.loaded import LoadedDecoder
    from latentqa.models import EMBEDDED_MODEL, embedded_gguf_path
    from latentqa.reader import Reader

    folder = _gguf_folder(embedded_gguf_path())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora).to(device).eval()
    spec: DecoderSpec = open_decoder_folder(EMBEDDED_MODEL, None)[1]
    return Reader(LoadedDecoder.from_model(peft_model, tokenizer, spec))


def _gguf_folder(gguf: Path) -> Path:
    from latentqa.gguf_cache import _gguf_cache_dir, _is_complete

    folder = _gguf_cache_dir(gguf)
    if not _is_complete(folder):
        sys.exit("the embedded model's cache is missing: run `latentqa layers` once")
    return folder


def reference(reader, vectors, items) -> tuple[list[list[float]], list[list[float]]]:
    """Options and black-box scores the way the evaluation computed them before tries."""
    from latentqa.evals.blackbox import score_answers
    from latentqa.evals.system_prompt_items import yes_no_questions
    from latentqa.questions import NO, YES

    def rows(vecs, pairs):
        out = []
        for start in range(0, len(pairs), 32):
            chunk = pairs[start : start + 32]
            out += reader.score_rows(
                [vecs[i] for i, _, _ in chunk],
                [q for _, q, _ in chunk],
                [a for _, _, a in chunk],
                normalize=True,
            )
        return out

    option_pairs = [(i, item.question, o) for i, item in enumerate(items) for o in item.options]
    options = rows(vectors, option_pairs)
    rows([torch.zeros_like(v) for v in vectors], option_pairs)  # the calibration baseline
    rows(vectors, [(i, q, a) for i, q, _ in yes_no_questions(items) for a in (YES, NO)])
    black_box = [
        score_answers(reader.model, reader.tokenizer, _visible(item), item.question, item.options)
        for item in items
    ]
    return [options[5 * i : 5 * i + 5] for i in range(len(items))], black_box


def library(reader, vectors, items) -> tuple[list[list[float]], list[list[float]]]:
    from latentqa.evals.blackbox import score_answer_sets
    from latentqa.evals.system_prompt_scoring import ZeroedScores, item_scores

    scored = item_scores(reader, vectors, items, ZeroedScores(reader), "lit")
    black_box = score_answer_sets(
        reader.model,
        reader.tokenizer,
        [_visible(item) for item in items],
        [item.question for item in items],
        [item.options for item in items],
    )
    return scored.options, black_box


def _visible(item) -> list[dict[str, str]]:
    return [item.dialog[-1], {"role": "assistant", "content": REPLY}]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from latentqa.evals.system_prompt_items import build_items
    from latentqa.reader import Reader

    reader = (
        random_reader(args.device)
        if args.random_weights
        else Reader.load(device=args.device, dtype=args.dtype)
    )
    items, _ = build_items(None, n=args.items)
    vectors = reader.read_many([item.dialog for item in items])
    print(f"{len(items)} items, {sum(len(v) for v in vectors) / len(items):.1f} placeholders each")
    library(reader, vectors[:2], items[:2])  # warm-up
    reference(reader, vectors[:2], items[:2])
    times: dict[str, list[float]] = {"library": [], "reference": []}
    results = {}
    for round_ in range(args.rounds):
        for name, run in (("library", library), ("reference", reference)):
            start = time.perf_counter()
            results[name] = run(reader, vectors, items)
            times[name].append(time.perf_counter() - start)
        print(
            f"round {round_ + 1}: library {times['library'][-1]:.1f} s, "
            f"reference {times['reference'][-1]:.1f} s"
        )
    speedups = [r / a for a, r in zip(times["library"], times["reference"], strict=True)]
    diff = max(
        abs(a - b)
        for part in (0, 1)
        for x, y in zip(results["library"][part], results["reference"][part], strict=True)
        for a, b in zip(x, y, strict=True)
    )
    same = [
        x.index(max(x)) == y.index(max(y))
        for part in (0, 1)
        for x, y in zip(results["library"][part], results["reference"][part], strict=True)
    ]
    summary = {
        "benchmark": "eval_scoring",
        "items": len(items),
        "random_weights": args.random_weights,
        "threads": torch.get_num_threads(),
        "library_s": statistics.median(times["library"]),
        "reference_s": statistics.median(times["reference"]),
        "speedup": statistics.median(speedups),
        "speedup_min": min(speedups),
        "speedup_max": max(speedups),
        "max_abs_score_diff": diff,
        "same_choices": f"{sum(same)}/{len(same)}",
    }
    print(
        f"speedup {summary['speedup']:.2f}x (min {min(speedups):.2f}, max {max(speedups):.2f}); "
        f"largest score difference {diff:.2e}; same choice {summary['same_choices']}"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
