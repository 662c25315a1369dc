"""Hidden system prompts re-paired with ordinary user turns: training data in set A's form.

The public release pairs each training system prompt with a user turn written for it
("I'm feeling a bit stuck on a challenge I've encountered at work." under a prompt
about problem-solving), so the user turn itself often says what the behaviour is about.
``latentqa eval system-prompt`` (set A) asks about user turns that say nothing of the
hidden prompt ("How do I bleed a radiator?"): there only the prompt's imprint on the
activations tells. :func:`swap_user_turns` writes a folder whose ``system`` behaviours
keep their hidden prompts and take user turns drawn from another folder's ordinary ones
(the built-in train split's), so that a decoder trains on the form it is asked about.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from latentqa.data.derived_folder import check_derived, require_system_json, write_derived
from latentqa.data.format import load_latentqa
from latentqa.errors import LatentQAError
from latentqa.package_data import package_file

__all__ = ["swap_user_turns"]

HELDOUT_SET = "resources/heldout/system-prompt"
"""The shipped held-out set whose user turns a pool must not hold (set A; set B's dialogs
are the same user turns with the target's replies)."""


def heldout_user_turns() -> set[str]:
    """The user turns of the shipped held-out evaluation set."""
    behaviors = load_latentqa(package_file("latentqa", HELDOUT_SET), ["system"]).behaviors
    return {b.stimulus_user for b in behaviors}


def swap_user_turns(
    data: str | Path,
    users_from: str | Path,
    out: str | Path,
    *,
    per_behavior: int = 1,
    seed: int = 0,
) -> dict[str, int]:
    """Write ``out/system.json``: ``data``'s system prompts with other user turns.

    Args:
        data: A folder in the public LatentQA layout with a ``system.json`` (``qa.json``
            optional; copied when present).
        users_from: A folder whose ``system`` behaviours' user turns form the pool
            (distinct turns, in first-seen order), e.g. the built-in ``train`` split.
            Never a held-out folder: its user turns are what the evaluation asks about.
        out: The output folder (created; a ``system.json`` there is replaced atomically).
        per_behavior: How many behaviours each input behaviour becomes, each with
            another user turn from the pool (one behaviour's turns are distinct).
        seed: Seed of the draws.

    Returns:
        ``{"behaviors", "user_turns"}``: behaviours written and the pool's size.

    Raises:
        LatentQAError: A folder without ``system.json``, ``out`` equal to ``data``, a
            pool with a user turn of the shipped held-out set, a pool smaller than
            ``per_behavior``, or ``per_behavior`` below 1.
    """
    source, pool_folder, target = Path(data), Path(users_from), Path(out)
    check_derived(source, target)
    require_system_json(pool_folder)
    if per_behavior < 1:
        raise LatentQAError(f"--per-behavior must be at least 1, got {per_behavior}")
    pool_behaviors = load_latentqa(pool_folder, ["system"], require_qa=False).behaviors
    pool = list(dict.fromkeys(b.stimulus_user for b in pool_behaviors if b.stimulus_user))
    held_out = heldout_user_turns()
    leaked = [turn for turn in pool if turn in held_out]
    if leaked:
        raise LatentQAError(
            f"{pool_folder} holds {len(leaked)} user turns of the shipped held-out set "
            f"(e.g. {leaked[0]!r}): draw from a training split such as DATA/train"
        )
    if len(pool) < per_behavior:
        raise LatentQAError(
            f"{pool_folder} has {len(pool)} distinct user turns; --per-behavior "
            f"{per_behavior} needs at least that many"
        )
    behaviors = load_latentqa(source, ["system"], require_qa=False).behaviors
    rng = random.Random(f"user-turns:{seed}")
    items = []
    for behavior in behaviors:
        # A reply written for the old user turn would not answer the new one: dropped.
        for user in rng.sample(pool, per_behavior):
            items.append(replace(behavior, stimulus_user=user, stimulus_model="").to_json())
    write_derived(source, target, items)
    return {"behaviors": len(items), "user_turns": len(pool)}
