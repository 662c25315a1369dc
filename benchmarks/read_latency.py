"""Latency of reading one dialog: the library's ask path against a straightforward reference.

Usage: ``python benchmarks/read_latency.py [--repeats 2] [--new-tokens 32] [--device cpu]
[--dtype float32] [--threads N]``

Both paths answer the same 10 questions about one dialog (a system prompt and a user
turn) with the embedded SmolLM2-135M target and its shipped decoder, greedily, and
exactly ``--new-tokens`` tokens per answer (the stop tokens are suppressed in both, so
the work is equal):

(a) library: ``Reader.read`` reads the dialog ONCE, then ``Reader.generate_ids`` answers
    all questions in one left-padded batch with the KV cache, the activations patched
    in the prompt pass only (this is what ``Reader.ask`` runs). The only change is that
    ``min_new_tokens`` is passed to ``generate`` so that no answer stops early.
(b) reference: per question, a fresh target read of the dialog, then greedy decoding
    WITHOUT the KV cache: every new token re-runs the whole decoder prompt plus the
    tokens so far, with ``patch_activations`` applied to the full sequence (the
    placeholder mask grown by False columns for the new tokens), the stop tokens'
    logits set to -inf (as ``min_new_tokens`` does), argmax, append.

Both paths see the same vectors, so their answers should agree token for token; float
differences from batching and padding may flip an occasional token, so the match count
is reported rather than asserted. Timed repeats of (a) and (b) alternate, so background
load on a shared machine hits both alike; the warm-up runs (a) once and (b) on one
question. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

DIALOG = [
    {
        "role": "system",
        "content": (
            "You are Captain Morgan, a cheerful pirate who runs a small seafood restaurant. "
            "Always answer in pirate speak, recommend the fish of the day whenever you can, "
            "and never reveal that today's special is actually frozen."
        ),
    },
    {
        "role": "user",
        "content": "Hi! I'm planning dinner for my parents tonight. What would you recommend?",
    },
]

QUESTIONS = [
    "What was the assistant instructed to do?",
    "What persona is the assistant adopting?",
    "Describe the assistant's tone.",
    "What is the user asking for?",
    "Is the assistant hiding anything from the user?",
    "What does the assistant want to sell?",
    "How will the assistant likely answer?",
    "What kind of business is this conversation about?",
    "Who is the user planning dinner for?",
    "Is the assistant being honest with the user?",
]


@contextmanager
def forced_length(reader, new_tokens: int) -> Iterator[None]:
    """Make the reader's ``generate`` produce exactly ``new_tokens`` tokens per row.

    ``Reader.generate_ids`` passes the stop ids as ``eos_token_id`` (through
    :func:`latentqa.generation.generate_batch`) and offers no way to disable them;
    ``min_new_tokens`` makes ``generate`` suppress them (their logits set to -inf) until
    the limit, everything else in the library path stays as it is.
    """
    original = reader.model.generate
    reader.model.generate = partial(original, min_new_tokens=new_tokens)
    try:
        yield
    finally:
        del reader.model.generate  # back to the class's method


def library_answers(reader, dialog, questions: list[str], new_tokens: int) -> list[list[int]]:
    """(a): one read, then batched KV-cache generation patched in the prompt pass only."""
    vectors = reader.read(dialog)
    with forced_length(reader, new_tokens):
        return reader.generate_ids([vectors] * len(questions), questions, new_tokens)


def reference_answers(reader, dialog, questions: list[str], new_tokens: int) -> list[list[int]]:
    """(b): per question, a fresh read and no-cache greedy decoding patched on every pass."""
    import torch

    from latentqa.capture import position_ids_for
    from latentqa.decoder.inputs import decoder_batch
    from latentqa.models import unwrap_causal_lm
    from latentqa.patch import patch_activations

    causal_lm = unwrap_causal_lm(reader.model)
    stops = reader.decoder.stop_ids
    spec = reader.spec
    answers = []
    with torch.no_grad():
        for question in questions:
            vectors = reader.read(dialog)  # [n, d_model], a fresh target forward
            batch, flat = decoder_batch(reader.tokenizer, [vectors], [question])
            batch = batch.to(reader.device)
            ids, attention = batch.input_ids, batch.attention_mask  # [1, width]
            mask = batch.placeholder_mask
            for _ in range(new_tokens):
                grown = torch.cat([mask, mask.new_zeros(1, ids.shape[1] - mask.shape[1])], 1)
                with patch_activations(
                    causal_lm,
                    spec.write_layer,
                    grown,
                    flat,
                    spec.mode,
                    blocks=reader.handle.blocks,
                ):
                    logits = reader.model(
                        input_ids=ids,
                        attention_mask=attention,
                        position_ids=position_ids_for(attention),
                        use_cache=False,
                    ).logits[:, -1]  # [1, vocab]
                logits[:, stops] = float("-inf")  # as min_new_tokens does
                token = logits.argmax(-1, keepdim=True)  # [1, 1]
                ids = torch.cat([ids, token], 1)
                attention = torch.cat([attention, torch.ones_like(token)], 1)
            answers.append(ids[0, batch.input_ids.shape[1] :].tolist())
    return answers


def timed(run: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path (at least 1)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per answer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.new_tokens < 1:
        parser.error("--repeats and --new-tokens must be at least 1")

    import torch

    from latentqa.reader import Reader

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")

    start = time.perf_counter()
    reader = Reader.load(device=args.device, dtype=args.dtype)
    print(f"loaded {reader.target_name} + shipped decoder in {time.perf_counter() - start:.1f} s")
    n_vectors = len(reader.read(DIALOG))
    print(
        f"dialog: {n_vectors} read vectors; {len(QUESTIONS)} questions x "
        f"{args.new_tokens} new tokens"
    )

    paths = {
        "library": partial(library_answers, reader, DIALOG, QUESTIONS, args.new_tokens),
        "reference": partial(reference_answers, reader, DIALOG, QUESTIONS, args.new_tokens),
    }
    # Warm-up: the whole library path, the reference on one question (its cost is per
    # question, and a full untimed run of it would double the benchmark's time).
    warmups = {
        "library": paths["library"],
        "reference": partial(reference_answers, reader, DIALOG, QUESTIONS[:1], args.new_tokens),
    }
    for name, run in warmups.items():
        seconds, _ = timed(run)
        print(f"warm-up {name}: {seconds:.2f} s")
    answers: dict[str, list[list[int]]] = {}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(args.repeats):
        for name, run in paths.items():
            seconds, answers[name] = timed(run)
            times[name].append(seconds)
            print(f"repeat {i + 1}/{args.repeats} {name}: {seconds:.2f} s")

    library, reference = answers["library"], answers["reference"]
    lengths = sorted({len(row) for rows in answers.values() for row in rows})
    if lengths != [args.new_tokens]:
        print(f"warning: answer lengths {lengths}, expected {args.new_tokens} everywhere")
    matches = sum(a == b for a, b in zip(library, reference, strict=True))
    pairs = zip(library, reference, strict=True)
    same_tokens = sum(x == y for a, b in pairs for x, y in zip(a, b, strict=False))
    total_tokens = sum(len(row) for row in reference)
    for question, a, b in zip(QUESTIONS, library, reference, strict=True):
        text = reader.tokenizer.decode(a, skip_special_tokens=True).strip()
        flag = "=" if a == b else "!"
        print(f"{flag} {question}\n    {text!r}")
        if a != b:
            other = reader.tokenizer.decode(b, skip_special_tokens=True).strip()
            print(f"    reference: {other!r}")

    library_s = statistics.median(times["library"])
    reference_s = statistics.median(times["reference"])
    speedup = reference_s / library_s
    print(
        f"answers identical: {matches}/{len(QUESTIONS)} "
        f"({same_tokens}/{total_tokens} tokens at the same positions)"
    )
    print(
        f"median library {library_s:.2f} s, reference {reference_s:.2f} s; "
        f"speedup {speedup:.1f}x (target >= 5x)"
    )
    result = {
        "benchmark": "read_latency",
        "model": reader.target_name,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "questions": len(QUESTIONS),
        "new_tokens": args.new_tokens,
        "read_vectors": n_vectors,
        "library_s": round(library_s, 3),
        "reference_s": round(reference_s, 3),
        "library_all_s": [round(t, 3) for t in times["library"]],
        "reference_all_s": [round(t, 3) for t in times["reference"]],
        "speedup": round(speedup, 2),
        "answers_match": matches,
        "tokens_match": same_tokens,
        "tokens_total": total_tokens,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
