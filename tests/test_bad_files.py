"""Untrusted files give one-line LatentQAErrors, not tracebacks: a malformed decoder
latentqa.json, and JSON files that are not UTF-8 (nothing here loads a model)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import latentqa.cli as cli
from latentqa.cli.read import dialogs_from_args
from latentqa.configs import config_from_file
from latentqa.data import sources
from latentqa.data.format import load_latentqa
from latentqa.decoder import SPEC_FILE, SPEC_FORMAT, DecoderSpec
from latentqa.errors import LatentQAError

NOT_UTF8 = b'{"name": "caf\xe9"}'  # Latin-1


def spec() -> DecoderSpec:
    return DecoderSpec(target="tiny", read_layers=[1], write_layer=0, mode="replace",
                       max_read_tokens=8, hidden_size=16, n_layers=2)  # fmt: skip


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
)  # fmt: skip
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


def test_source_files_that_are_not_utf8(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(LatentQAError) as error:
        sources._read_json(path)
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
