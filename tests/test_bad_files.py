"""Untrusted files give one-line LatentQAErrors, not tracebacks: a malformed decoder
latentqa.json, config / dialogs / control / prompts files that are not UTF-8, bad build
options; a config file may hold only some options (nothing here loads a model)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import latentqa.cli as cli
from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.cli.read import dialogs_from_args
from latentqa.data.format import load_latentqa
from latentqa.data.relations import build_relations_dataset
from latentqa.decoder.folder import SPEC_FILE, SPEC_FORMAT, DecoderSpec
from latentqa.errors import LatentQAError
from latentqa.json_files import read_json
from latentqa.steer.prompts import load_prompts
from latentqa.steer.qa_pairs import load_control
from latentqa.train.config import TrainConfig
from latentqa.typed_config import config_from_file

NOT_UTF8 = b'{"name": "caf\xe9"}'  # Latin-1


def spec() -> DecoderSpec:
    return DecoderSpec(
        target="tiny",
        read_layers=[1],
        write_layer=0,
        mode="replace",
        max_read_tokens=8,
        hidden_size=16,
        n_layers=2,
    )


def write_spec(folder: Path, data: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(json.dumps(data))
    return folder


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_a_saved_spec_loads_back(tmp_path):
    spec().save(tmp_path)
    assert DecoderSpec.load(tmp_path) == spec()
    data = json.loads((tmp_path / SPEC_FILE).read_text())
    del data["pool"], data["extra"]  # fields with defaults may be absent (older folders)
    assert DecoderSpec.load(write_spec(tmp_path / "old", data)) == spec()


def valid() -> dict:
    data = {"format": SPEC_FORMAT, **spec().__dict__}
    return json.loads(json.dumps(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must hold a JSON object"),
        ("latentqa", "must hold a JSON object"),
        (None, "must hold a JSON object"),
        ({"format": SPEC_FORMAT}, "lacks field(s) 'target', 'read_layers'"),
        ({k: v for k, v in valid().items() if k != "hidden_size"}, "lacks field(s) 'hidden_size'"),
        ({**valid(), "read_layers": "2"}, "field 'read_layers' must be a list of integers"),
        ({**valid(), "read_layers": [2, "3"]}, "field 'read_layers' must be a list of integers"),
        ({**valid(), "read_layers": [True]}, "field 'read_layers' must be a list of integers"),
        ({**valid(), "read_layers": []}, "'read_layers' is empty"),
        ({**valid(), "n_layers": "4"}, "field 'n_layers' must be an integer"),
        ({**valid(), "n_layers": 4.5}, "field 'n_layers' must be an integer"),
        ({**valid(), "target": 7}, "field 'target' must be a string"),
        ({**valid(), "extra": []}, "field 'extra' must be a JSON object"),
        ({**valid(), "colour": "red"}, "unknown field(s) 'colour'"),
        ({**valid(), "format": "other/1"}, "is not a latentqa-decoder/1 file"),
    ],
)
def test_a_malformed_spec_is_a_one_line_error(tmp_path, data, message):
    folder = write_spec(tmp_path / "decoder", data)
    with pytest.raises(LatentQAError) as error:
        DecoderSpec.load(folder)
    assert message in one_line(error) and SPEC_FILE in str(error.value)


def test_a_spec_that_is_not_utf8_or_not_json(tmp_path):
    (tmp_path / SPEC_FILE).write_bytes(NOT_UTF8)
    with pytest.raises(LatentQAError) as error:
        DecoderSpec.load(tmp_path)
    assert "must be UTF-8 JSON" in one_line(error) and str(tmp_path) in str(error.value)
    (tmp_path / SPEC_FILE).write_text("{not json")
    with pytest.raises(LatentQAError, match="not valid JSON"):
        DecoderSpec.load(tmp_path)


def test_dataset_files_that_are_not_utf8(tmp_path):
    (tmp_path / "qa.json").write_text("{}")
    (tmp_path / "system.json").write_bytes(NOT_UTF8)
    with pytest.raises(LatentQAError) as error:
        load_latentqa(tmp_path)
    assert "system.json" in one_line(error) and "must be UTF-8 JSON" in str(error.value)


def test_json_files_that_are_not_utf8(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(LatentQAError) as error:
        read_json(path)  # the reader behind data sources and LatentQA files
    assert str(path) in one_line(error) and "must be UTF-8 JSON" in str(error.value)


def test_dialogs_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "dialogs.json"
    path.write_bytes(b'[[{"role": "user", "content": "caf\xe9"}]]')
    args = argparse.Namespace(dialogs=str(path), system=None, user=None, assistant=None)
    with pytest.raises(LatentQAError) as error:
        dialogs_from_args(args)
    assert str(path) in one_line(error) and "must be UTF-8 JSON" in str(error.value)
    # Through the command line: exit 2, one line, no traceback, before any model loads.
    assert cli.main(["read", "--dialogs", str(path), "-q", "Who?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be UTF-8 JSON" in err and "Traceback" not in err


@dataclass
class Options:
    lr: float = 1e-3
    steps: int = 10


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"lr": 0.1, "note": "\xff"}')
    with pytest.raises(LatentQAError) as error:
        config_from_file(Options, path)
    assert str(path) in one_line(error) and "must be UTF-8 JSON" in str(error.value)
    path.write_text('{"lr": 0.1}', encoding="utf-8")
    assert config_from_file(Options, path) == Options(lr=0.1)
    with pytest.raises(LatentQAError, match="cannot read config file"):
        config_from_file(Options, tmp_path)  # a folder


def _cli_refuses(capsys, argv: list[str], message: str) -> None:
    """Exit 2 with one line on stderr naming ``message``, and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err


@pytest.fixture
def no_steer_load(monkeypatch):
    """Steering fails the test if it gets as far as loading the model."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad file was refused")

    monkeypatch.setattr("latentqa.steer.model.load_model", load)


@pytest.mark.usefixtures("no_steer_load")
def test_control_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "control.json"
    path.write_bytes(b'[["Who is caf\xe9?", "A pirate."]]')
    with pytest.raises(LatentQAError) as error:
        load_control(path)
    assert str(path) in one_line(error) and "must be UTF-8 JSON" in str(error.value)
    out = tmp_path / "steered"
    _cli_refuses(capsys, ["steer", "--control", str(path), "--out", str(out)], "not UTF-8")
    assert not out.exists()


@pytest.mark.usefixtures("no_steer_load")
def test_prompts_file_that_is_not_utf8(tmp_path, capsys):
    for name in ("prompts.txt", "prompts.json"):
        path = tmp_path / name
        path.write_bytes(b'["caf\xe9"]' if name.endswith(".json") else b"caf\xe9\n")
        with pytest.raises(LatentQAError) as error:
            load_prompts(path)
        assert str(path) in one_line(error) and "not UTF-8" in str(error.value)
    argv = [
        "steer",
        "--qa",
        "Who?",
        "A pirate.",
        "--prompts",
        str(path),
        "--out",
        str(tmp_path / "steered"),
    ]
    _cli_refuses(capsys, argv, "not UTF-8")
    assert not (tmp_path / "steered").exists()


@pytest.mark.parametrize("value", ["-1", "0"])
def test_relations_build_with_a_bad_max_subjects(tmp_path, capsys, value):
    out = tmp_path / "relations"
    argv = [
        "data",
        "build",
        "--task",
        "relations",
        "--no-filter",
        "--max-subjects",
        value,
        "--out",
        str(out),
    ]
    _cli_refuses(capsys, argv, f"--max-subjects must be at least 1, got {value}")
    assert not out.exists()
    with pytest.raises(LatentQAError, match="max_subjects must be at least 1"):
        build_relations_dataset(out, max_subjects=int(value))
    assert not out.exists()


def _train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return parser.parse_args(argv)


def test_config_file_of_hyperparameters_only(tmp_path, capsys):
    path = tmp_path / "hyper.json"
    path.write_text(json.dumps({"lr": 0.01, "steps": 5, "data": "from-file"}))
    config = config_from_args(
        TrainConfig,
        _train_args(["--config", str(path), "--data", "d", "--out", "o", "--steps", "7"]),
    )
    # The file fills what the command line leaves out; the command line wins.
    assert (config.data, config.out, config.lr, config.steps) == ("d", "o", 0.01, 7)
    with pytest.raises(LatentQAError) as error:
        config_from_args(TrainConfig, _train_args(["--config", str(path)]))
    assert "missing required option(s) out: pass --out" in one_line(error)
    path.write_text(json.dumps({"lr": 0.01, "lerning_rate": 1}))
    with pytest.raises(LatentQAError, match="unknown option"):
        config_from_args(
            TrainConfig, _train_args(["--config", str(path), "--data", "d", "--out", "o"])
        )
    path.write_bytes(b'{"lr": 0.1, "note": "\xff"}')
    out = tmp_path / "run"
    argv = ["train", "--config", str(path), "--data", "d", "--out", str(out)]
    _cli_refuses(capsys, argv, "must be UTF-8 JSON")
    assert not out.exists()
