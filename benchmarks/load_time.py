"""Time loading the embedded model: first load (dequantize + cache) vs. loads from the cache.

Usage: ``python benchmarks/load_time.py [--repeats N] [--device cpu] [--dtype float32]``

The cache is pointed at a fresh temporary folder, so the first load always dequantizes
and the user's real cache is left untouched. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="latentqa-bench-") as tmp:
        # cache_root() reads this on every call: the first load must dequantize, and the
        # user's real cache is never touched.
        os.environ["LATENTQA_CACHE"] = tmp
        # Import transformers up front so its one-off import cost is not billed to either load.
        import transformers  # noqa: F401

        from latentqa.models import EMBEDDED_MODEL, load_model

        start = time.perf_counter()
        model, _ = load_model(EMBEDDED_MODEL, device=args.device, dtype=args.dtype)
        dequantize_s = time.perf_counter() - start
        del model
        print(f"first load (dequantize + write cache): {dequantize_s:.2f} s")

        cached_times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            model, _ = load_model(EMBEDDED_MODEL, device=args.device, dtype=args.dtype)
            cached_times.append(time.perf_counter() - start)
            del model
            print(f"cached load {i + 1}/{args.repeats}: {cached_times[-1]:.2f} s")

    cached_s = statistics.median(cached_times)
    speedup = dequantize_s / cached_s
    print(f"median cached load: {cached_s:.2f} s; speedup {speedup:.1f}x (target >= 3x)")
    result = {
        "benchmark": "load_time",
        "model": EMBEDDED_MODEL,
        "device": args.device,
        "dtype": args.dtype,
        "dequantize_s": round(dequantize_s, 3),
        "cached_s": round(cached_s, 3),
        "cached_all_s": [round(t, 3) for t in cached_times],
        "speedup": round(speedup, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
