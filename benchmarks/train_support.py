"""Data and machine measures for ``train_throughput.py`` (kept apart to keep it short)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

_PERSONAS = [
    f"{adjective} {role}"
    for adjective in ("a cheerful", "a grumpy", "a meticulous", "a forgetful",
                      "an adventurous", "a cautious", "a sarcastic", "a poetic")
    for role in ("pirate captain", "librarian", "chess coach", "space engineer",
                 "gardener", "detective", "chef", "history teacher")
]  # fmt: skip
_PROMPTS = [
    "I am planning a weekend trip with my family and I have no idea where to start. "
    "Could you help me put together a rough plan?",
    "My code keeps crashing when I open a large file, and the error message is not very "
    "helpful. How should I go about finding the cause?",
    "What would be a good way to spend a rainy afternoon at home without looking at a "
    "screen the whole time?",
    "I want to learn a new language this year but I keep giving up after a few weeks. "
    "Do you have any advice that actually works?",
]


def write_synthetic_data(folder: Path, n_behaviours: int = 64) -> Path:
    """A LatentQA-format folder (system.json + qa.json): one persona per behaviour."""
    folder.mkdir(parents=True, exist_ok=True)
    behaviours, qa = [], {}
    for i in range(n_behaviours):
        persona = _PERSONAS[i % len(_PERSONAS)]
        label = f"persona-{i:03d}"
        behaviours.append(
            {
                "label": label,
                "system": f"You are {persona}.",
                "stimulus_user": _PROMPTS[i % len(_PROMPTS)],
            }
        )
        qa[label] = [
            [
                "Who is the assistant pretending to be?",
                f"The assistant is playing the part of {persona}, and it shapes the tone "
                "and content of its replies to match that character.",
            ],
            [
                "How will the assistant's reply differ from a plain answer?",
                f"It will answer in the voice of {persona}, adding the habits, vocabulary "
                "and attitude that such a person would show.",
            ],
        ]
    (folder / "system.json").write_text(json.dumps(behaviours, indent=1))
    (folder / "qa.json").write_text(json.dumps(qa, indent=1))
    return folder


def subset_data(source: Path, folder: Path, n_labels: int) -> Path:
    """Copy the behaviours of the first ``n_labels`` labels of ``qa.json`` (all kinds).

    The activation cache covers every dialog of the folder, so a large folder would
    spend minutes building it; a label subset keeps the data's shape and the run short.
    """
    qa = json.loads((source / "qa.json").read_text())
    keep = set(list(qa)[:n_labels])
    folder.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        if path.name == "qa.json":
            continue
        items = json.loads(path.read_text())
        if isinstance(items, list):
            (folder / path.name).write_text(
                json.dumps([item for item in items if item.get("label") in keep])
            )
    (folder / "qa.json").write_text(json.dumps({k: v for k, v in qa.items() if k in keep}))
    return folder


def matmul_gflops(dtype: torch.dtype, n: int = 2048, min_seconds: float = 1.0) -> float:
    """Dense ``n x n`` matmul throughput in GFLOP/s (2 n^3 per product)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    reps, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and reps >= 3:
            return 2 * n**3 * reps / elapsed / 1e9


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
