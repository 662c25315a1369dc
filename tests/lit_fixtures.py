"""Helpers shared by test files: tiny model, data and decoder folders, a served dialog.

Plain functions and constants (fixtures live in conftest.py); test files import these
rather than each other.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny import make_llama, make_pair, make_tokenizer

from latentqa.train.config import TrainConfig
from latentqa.train.trainer import train
from latentqa.typed_config import config_from_dict

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


DIALOG = [
    {"role": "system", "content": "You are a pirate captain."},
    {"role": "user", "content": "Hello, how are you today?"},
]
"""A dialog with a hidden system prompt, as the server tests send it."""
QUESTIONS = ["What persona is the assistant adopting?", "Who is the assistant?"]


def build_tiny_decoder(root: Path, write_model=None, **options) -> tuple[Path, Path]:
    """A tiny model folder and a decoder trained on it for a few steps (CPU, seconds).

    ``write_model(folder)`` writes the model (default :func:`write_tiny_model`);
    ``options`` override the training options (e.g. ``projector="linear"``).
    """
    model = (write_model or write_tiny_model)(root / "model")
    values = dict(
        data=str(write_tiny_data(root / "data")),
        out=str(root / "decoder"),
        target=str(model),
        steps=3,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        eval_examples=4,
        dtype="float32",
        device="cpu",
    )
    train(config_from_dict(TrainConfig, {**values, **options}), progress=False)
    return model, root / "decoder"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and every entry beside it."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["<siblings>"] = "\n".join(sorted(p.name for p in folder.parent.iterdir())).encode()
    return files


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, pattern: str) -> str:
    """Assert a CLI run failed with one ``error:`` line matching ``pattern``."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err
    return err


def tiny_train_config(workspace: tuple[Path, Path], out: Path, **values) -> TrainConfig:
    """A float32 TrainConfig for the tiny model and data of ``workspace``, with ``values``."""
    model, data = workspace
    base = {"data": str(data), "out": str(out), "target": str(model), "dtype": "float32"}
    return config_from_dict(TrainConfig, {**base, **values})


def tiny_projector_config(workspace: tuple[Path, Path], out: Path, **values) -> TrainConfig:
    """:func:`tiny_train_config` of a two-step run with a linear projector on standardized
    mean reads of layers 1 and 2 (a decoder a second phase can start from), with ``values``."""
    defaults = dict(
        steps=2,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        eval_examples=8,
        device="cpu",
        projector="linear",
        read_pool="mean",
        read_layers=[1, 2],
        standardize=True,
    )
    return tiny_train_config(workspace, out, **{**defaults, **values})


def tiny_run_reads(cfg: TrainConfig):
    """What a fresh run of ``cfg`` builds before its fitted projector, as the trainer does:
    ``(decoder, tokenizer, data, source)`` with reads of ``cfg.read_layers``, float32."""
    from latentqa.models import load_model
    from latentqa.train.activations import run_reads
    from latentqa.train.prepare import add_lora, prepare_data

    model, tokenizer = load_model(cfg.target, device="cpu", dtype="float32")
    decoder = add_lora(model, cfg)
    data = prepare_data(cfg, tokenizer)
    source = run_reads(decoder, data.dialogs, tokenizer, cfg.read_layers, cfg)
    return decoder, tokenizer, data, source


def train_argv(workspace: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    model, data = workspace
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--target",
        str(model),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--eval-every",
        "0",
        "--save-every",
        "1",
        "--eval-examples",
        "8",
        "--no-progress",
        *extra,
    ]


STEER_PROMPTS = [
    "Hello, how are you today?",
    "What is the capital of France?",
    "Describe the tone.",
    "Tell me about the sea.",
]
"""Prompts the steering tests steer."""


def write_sensitive_model(folder: Path) -> Path:
    """A tiny Llama with larger initial weights than tests/tiny.py's.

    With the usual 0.02 initialisation a tiny random decoder's answers hardly depend on
    the patched activations (even freely optimised vectors barely move its loss), so
    there would be nothing for steering to change.
    """
    tokenizer = make_tokenizer()
    make_llama(len(tokenizer), initializer_range=0.2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
