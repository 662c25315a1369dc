"""``latentqa data build`` and ``latentqa data stats``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tiny import make_llama, make_tokenizer

from latentqa.cli import data as data_cli
from latentqa.data import load_latentqa


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="latentqa")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_build_without_completions_then_stats(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert run(["data", "build", "--out", str(out), "--no-completions", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "heldout" in printed and "wrote" in printed
    assert json.loads((out / "meta.json").read_text())["seed"] == 3
    assert run(["data", "stats", str(out), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert set(counts) == {"train", "heldout"}
    assert counts["train"]["total"]["examples"] == len(load_latentqa(out / "train"))
    assert run(["data", "stats", str(out / "heldout")]) == 0
    assert "total" in capsys.readouterr().out


def test_build_with_model_generates_and_caches(tmp_path: Path, monkeypatch, capsys) -> None:
    loaded: list[str] = []

    def fake_load_model(spec: str, device: str = "auto", dtype: str = "float32"):
        loaded.append(spec)
        tokenizer = make_tokenizer()
        return make_llama(len(tokenizer), n_layers=2, tie=False, max_positions=2048), tokenizer

    monkeypatch.setattr("latentqa.models.load_model", fake_load_model)
    monkeypatch.setattr(
        "latentqa.data.build.DEFAULT_PER_LABEL",
        {"system": 0, "control": 1, "stimulus": 0, "stimulus_completion": 1},
    )
    out = tmp_path / "ds"
    argv = ["data", "build", "--out", str(out), "--target", "tiny", "--max-new-tokens", "2"]
    assert run([*argv, "--batch-size", "64"]) == 0
    assert loaded == ["tiny"]
    assert "generated" in capsys.readouterr().out
    train = load_latentqa(out / "train")
    assert train.kinds == ["control", "stimulus_completion"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "tiny|max_new_tokens=2"
    assert run([*argv, "--batch-size", "64"]) == 0
    assert "0 generated" in capsys.readouterr().out
    # --model is the option's old name: still accepted, with a warning.
    old = ["data", "build", "--out", str(out), "--model", "tiny", "--max-new-tokens", "2"]
    assert run(old) == 0
    assert loaded[-1] == "tiny" and "--model is deprecated" in capsys.readouterr().err


def test_data_without_subcommand_prints_help(capsys) -> None:
    assert run(["data"]) == 1
    assert "build" in capsys.readouterr().out


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    from latentqa.errors import LatentQAError

    with pytest.raises(LatentQAError):
        run(
            ["data", "build", "--out", str(tmp_path), "--no-completions", "--heldout-fraction", "1"]
        )
    with pytest.raises(LatentQAError):
        run(["data", "stats", str(tmp_path / "missing")])
