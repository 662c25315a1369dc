"""Options built from config dataclasses: field metadata, list types and converted commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Literal

import pytest

from latentqa.cli import build_parser
from latentqa.cli.data import DataBuildConfig, RelationName
from latentqa.cli.layers import LayersConfig
from latentqa.cli.options import add_config_arguments, config_from_args
from latentqa.data.relations_facts import RELATIONS
from latentqa.evals.all import EvalAllConfig
from latentqa.evals.relations_task import EvalRelationsConfig


@dataclasses.dataclass
class _Example:
    """A config with every kind of field the converted commands use."""

    pairs: list[str] = dataclasses.field(
        default_factory=list, metadata={"repeatable": True, "metavar": "K=V"}
    )
    """key=value pairs (repeatable)"""
    colours: list[Literal["red", "blue"]] | None = dataclasses.field(
        default=None, metadata={"metavar": "NAME", "group": "colours"}
    )
    """colours to use"""
    layers: list[int] | None = None
    """layers"""
    filter: bool = True
    """filter things"""


def _parse(argv: list[str]) -> _Example:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Example)
    return config_from_args(_Example, parser.parse_args(argv))


def test_repeatable_literal_list_and_negated_bool():
    config = _parse(["--pairs", "a=1", "--pairs", "b=2", "--colours", "red", "blue"])
    assert config.pairs == ["a=1", "b=2"] and config.colours == ["red", "blue"]
    assert config.filter and config.layers is None
    config = _parse(["--no-filter", "--layers", "3", "9", "15"])
    assert not config.filter and config.layers == [3, 9, 15] and config.pairs == []
    with pytest.raises(SystemExit):
        _parse(["--colours", "green"])


def test_help_shows_metavars_groups_and_no_required_for_factories(capsys):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, _Example)
    text = parser.format_help()
    assert "--pairs K=V" in text and "--colours NAME [NAME ...]" in text
    assert "\ncolours:\n" in text and "(required)" not in text


def test_relation_names_match_the_relations():
    assert typing.get_args(RelationName) == tuple(RELATIONS)


@pytest.mark.parametrize(
    ("argv", "cls", "expected"),
    [
        (["layers", "--model", "m", "--dtype", "bfloat16"], LayersConfig, {"target": "m"}),
        (
            ["eval", "all", "--out", "o", "--data", "a=x", "--data", "b=y", "--tasks", "t"],
            EvalAllConfig,
            {"data": ["a=x", "b=y"], "tasks": ["t"], "task_decoder": []},
        ),
        (
            ["eval", "relations", "--data", "d", "--layers", "1", "--layer-decoder", "1=x"],
            EvalRelationsConfig,
            {"layers": [1], "layer_decoder": ["1=x"], "max_new_tokens": 24},
        ),
        (
            ["data", "build", "--out", "o", "--no-filter", "--relations", "capital", "region"],
            DataBuildConfig,
            {"filter": False, "relations": ["capital", "region"], "heldout_relation": "currency"},
        ),
    ],
)
def test_converted_commands_parse_into_their_configs(argv, cls, expected):
    config = config_from_args(cls, build_parser().parse_args(argv))
    assert {name: getattr(config, name) for name in expected} == expected


def test_config_file_holds_command_options(tmp_path):
    path = tmp_path / "all.json"
    path.write_text(json.dumps({"out": "from-file", "seed": 4, "data": ["a=x"]}))
    args = build_parser().parse_args(["eval", "all", "--config", str(path), "--seed", "5"])
    config = config_from_args(EvalAllConfig, args)
    assert (config.out, config.seed, config.data) == ("from-file", 5, ["a=x"])
