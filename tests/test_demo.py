"""The demo's behaviours stay held out from the built-in dataset's training split."""

from __future__ import annotations

import json

from latentqa.cli.demo import DEMO
from latentqa.data.build import build_dataset


def test_demo_behaviors_are_held_out(tmp_path):
    build_dataset(tmp_path / "data", seed=0)
    labels = json.loads((tmp_path / "data" / "meta.json").read_text())["labels"]
    for item in DEMO:
        assert labels[item["label"]]["split"] == "heldout", item["label"]
    train_systems = json.loads((tmp_path / "data" / "train" / "system.json").read_text())
    shown = {item["system"] for item in DEMO}
    assert shown.isdisjoint(b["system"] for b in train_systems)


def test_demo_options_are_the_builtin_answers_of_their_labels():
    from latentqa.cli.demo import QUESTIONS
    from latentqa.evals.system_prompt import SHIPPED_DATA

    qa = json.loads((SHIPPED_DATA / "qa.json").read_text())
    for item in DEMO:
        assert dict(qa[item["label"]])[QUESTIONS[0]] == item["instructed"]


def test_demo_countries_are_held_out_from_the_relations_decoder():
    from latentqa.cli.demo import COUNTRIES, RELATIONS
    from latentqa.data.relations_facts import RELATIONS as ALL_RELATIONS
    from latentqa.decoder.folder import shipped_decoder
    from latentqa.evals.relations_data import load_relation_data
    from latentqa.models import EMBEDDED_MODEL

    rel = load_relation_data(shipped_decoder(EMBEDDED_MODEL, "relations"))
    held = {item.fact.subject for item in rel.items if item.split == "heldout"}
    assert set(COUNTRIES) <= held
    assert set(RELATIONS) <= set(ALL_RELATIONS)
