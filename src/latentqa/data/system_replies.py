"""The target's own replies under hidden system prompts: training data in set B's form.

``latentqa eval system-prompt --set replies`` (set B, the LatentQA paper's setting) reads
the user turn *and* the target's own greedy reply under the hidden prompt. A decoder
trained on user-turn reads alone reads little of such a span, so its training data must
have that form too: :func:`add_replies` gives every ``system`` behaviour of a folder its
``stimulus_model``, the target's greedy reply to the system prompt and user turn, and
:meth:`latentqa.data.format.Behavior.dialog` then ends its dialog with that reply (the
system prompt stays masked). Replies are cached in a JSONL file (see
:mod:`latentqa.data.replies`), so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from latentqa.data.derived_folder import check_derived, write_derived
from latentqa.data.format import load_latentqa
from latentqa.data.replies import Generate, complete_dialogs
from latentqa.errors import LatentQAError

__all__ = ["add_replies"]

CACHE_NAME = "completions-cache.jsonl"
"""The reply cache's file name inside the output folder (default)."""


def add_replies(
    data: str | Path,
    out: str | Path,
    generate: Generate,
    generator_id: str,
    *,
    limit: int | None = None,
    seed: int = 0,
    cache_path: str | Path | None = None,
) -> dict[str, int]:
    """Write ``out/system.json``: ``data``'s system behaviours with the target's replies.

    Args:
        data: A folder in the public LatentQA layout with a ``system.json`` (``qa.json``
            optional; copied when present).
        out: The output folder (created; a ``system.json`` there is replaced atomically).
        generate: Replies to dialogs that end with a user turn
            (:func:`latentqa.data.replies.make_generate`).
        generator_id: The generator's identity (model and settings): part of the cache key.
        limit: Keep at most this many behaviours (a seeded sample, in the folder's order).
        seed: Seed of that sample.
        cache_path: The reply cache (default ``out/completions-cache.jsonl``).

    Returns:
        ``{"behaviors", "generated", "cached"}``.

    Raises:
        LatentQAError: No ``system.json`` in ``data``, ``out`` is ``data``, or a bad
            ``limit``.
    """
    source, target = Path(data), Path(out)
    check_derived(source, target)
    if limit is not None and limit < 1:
        raise LatentQAError(f"--limit must be positive, got {limit}")
    behaviors = list(load_latentqa(source, ["system"], require_qa=False).behaviors)
    if limit is not None and limit < len(behaviors):
        keep = set(random.Random(f"replies:{seed}").sample(range(len(behaviors)), limit))
        behaviors = [b for i, b in enumerate(behaviors) if i in keep]
    # The dialog the target answers: the hidden prompt and the user turn (no old reply).
    asked = [replace(b, stimulus_model="").dialog() for b in behaviors]
    target.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_path) if cache_path is not None else target / CACHE_NAME
    replies, generated = complete_dialogs(asked, generate, generator_id, cache)
    # An empty reply would drop the assistant turn from the dialog: "..." keeps its form.
    items = [
        replace(b, stimulus_model=reply.strip() or "...").to_json()
        for b, reply in zip(behaviors, replies, strict=True)
    ]
    write_derived(source, target, items)
    return {"behaviors": len(items), "generated": generated, "cached": len(items) - generated}


def describe(summary: dict[str, int], out: str | Path) -> str:
    """One line about an :func:`add_replies` run."""
    return (
        f"wrote {Path(out) / 'system.json'}: {summary['behaviors']} behaviours, replies "
        f"{summary['generated']} generated, {summary['cached']} from the cache"
    )
