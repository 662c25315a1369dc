"""A tiny saved model folder and a tiny LatentQA-format data folder, for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

from tiny import make_pair

PERSONAS = {
    "persona-pirate": "a pirate captain",
    "persona-chef": "a French chef",
    "persona-poet": "a romantic poet",
    "persona-robot": "a cheerful robot",
    "persona-spy": "a secret agent",
    "persona-judge": "a strict judge",
}
PROMPTS = ["Hello, how are you today?", "What is the capital of France?", "Describe the tone."]


def write_tiny_model(folder: Path, arch: str = "llama") -> Path:
    model, tokenizer = make_pair(arch)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


MORE_PERSONAS = {
    **PERSONAS,
    "persona-sailor": "an old sailor",
    "persona-nurse": "a caring nurse",
    "persona-clown": "a circus clown",
    "persona-king": "a medieval king",
    "persona-coach": "a football coach",
    "persona-monk": "a quiet monk",
}


def write_tiny_data(
    folder: Path,
    heldout: tuple[str, ...] = ("persona-spy", "persona-judge"),
    personas: dict[str, str] = PERSONAS,
) -> Path:
    """Train/held-out folders in the LatentQA release format for the given personas."""
    for split in ("train", "heldout"):
        labels = [k for k in personas if (k in heldout) == (split == "heldout")]
        system = [
            {"label": label, "system": f"You are {personas[label]}.", "stimulus_user": prompt}
            for label in labels
            for prompt in PROMPTS
        ]
        stimulus = [
            {
                "label": label,
                "control_user": f"Please act as {personas[label]}.",
                "control_model": "Understood.",
                "stimulus_user": PROMPTS[0],
            }
            for label in labels
        ]
        qa = {
            label: [
                ["What persona is the assistant adopting?", f"The assistant is {personas[label]}."],
                ["Who is the assistant?", personas[label].capitalize() + "."],
            ]
            for label in labels
        }
        target = folder / split
        target.mkdir(parents=True, exist_ok=True)
        (target / "system.json").write_text(json.dumps(system))
        (target / "stimulus.json").write_text(json.dumps(stimulus))
        (target / "qa.json").write_text(json.dumps(qa))
    return folder
