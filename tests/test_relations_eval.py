"""The relations evaluation, its baselines, the layer sweep and ``eval all`` on tiny models."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import types

import pytest
import torch
from lit_fixtures import write_tiny_model
from relations_fixtures import write_relations_data

from latentqa.cli import main
from latentqa.cli.eval_relations import add_relations_task
from latentqa.data.relations_facts import normalize
from latentqa.errors import LatentQAError
from latentqa.evals.all import KNOWN_TASKS, SuiteContext, discover, run_suite
from latentqa.evals.relations import (
    METHODS,
    evaluate_relations,
    load_relation_data,
    patchscope_answers,
    probe_answers,
    read_subjects,
    relation_data_of,
    score,
    sweep_layers,
)
from latentqa.evals.relations_data import find_relation_data
from latentqa.reader import Reader

SUMMARY_KEYS = {
    "accuracy",
    "fuzzy_accuracy",
    "seen_accuracy",
    "heldout_relation_accuracy",
    "heldout_relation_fuzzy_accuracy",
    "n",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model folder, a relations dataset and a decoder trained 2 steps on it."""
    from latentqa.train import TrainConfig, train

    root = tmp_path_factory.mktemp("relations")
    model = write_tiny_model(root / "model")
    data = write_relations_data(root / "data")
    config = TrainConfig(
        data=str(data),
        out=str(root / "decoder"),
        target=str(model),
        steps=2,
        batch_size=4,
        eval_every=0,
        save_every=0,
        dtype="float32",
        read_layers=[1],
    )
    train(config, progress=False)
    return model, data, root / "decoder"


@pytest.fixture(scope="module")
def reader(setup):
    model, _, decoder = setup
    return Reader.load(str(model), decoder, device="cpu")


def test_items_are_held_out_subjects(setup):
    _, data, _ = setup
    rel = load_relation_data(data)
    assert {i.split for i in rel.items} == {"heldout", "heldout_relation"}
    assert {i.fact.subject for i in rel.items}.isdisjoint({t.fact.subject for t in rel.train})
    capped = load_relation_data(data, n=1)
    assert len(capped.items) == len({i.fact.relation for i in rel.items})


def test_score_groups_and_missing_predictions(setup):
    _, data, _ = setup
    items = load_relation_data(data).items
    summary, per_relation = score([i.fact.answer for i in items], items)
    assert summary["accuracy"] == summary["fuzzy_accuracy"] == 1.0
    assert summary["heldout_relation_accuracy"] == 1.0 and summary["n"] == len(items)
    missing = [None if i.fact.relation == "capital" else "nope" for i in items]
    summary, per_relation = score(missing, items)
    assert summary["accuracy"] is None
    assert per_relation["capital"]["accuracy"] is None
    assert per_relation["region"]["accuracy"] == 0.0


def test_seen_marks_answers_a_training_subject_shares(setup):
    _, data, _ = setup
    rel = load_relation_data(data)
    for item in rel.items:
        trained = {
            normalize(a)
            for t in rel.train
            if t.fact.relation == item.fact.relation
            for a in t.fact.aliases
        }
        assert item.seen == bool(trained & {normalize(a) for a in item.fact.aliases})
    summary, per_relation = score(
        [i.fact.answer if i.seen else "nope" for i in rel.items], rel.items
    )
    assert summary["seen_accuracy"] in (1.0, None)
    for relation, values in per_relation.items():
        assert values["n_seen"] == sum(i.seen for i in rel.items if i.fact.relation == relation)


def test_patchscope_and_probe_baselines(setup, reader):
    _, data, _ = setup
    rel = load_relation_data(data)
    spans = read_subjects(reader, rel.items, [1])
    assert all(s.shape[0] == 1 and s.shape[-1] == 32 for s in spans)
    last = torch.stack([s[0, -1] for s in spans])
    answers = patchscope_answers(reader, last, rel.items, [t.fact for t in rel.train], 1, 3)
    assert len(answers) == len(rel.items) and all(isinstance(a, str) for a in answers)
    train = read_subjects(reader, rel.train, [1])
    pooled = torch.stack([s[0].mean(0) for s in train])
    features = torch.stack([s[0].mean(0) for s in spans])
    predictions = probe_answers(pooled, rel.train, features, rel.items)
    for prediction, item in zip(predictions, rel.items, strict=True):
        # The held-out relation's probe is fitted on training subjects' facts of it,
        # which the decoder never trains on.
        classes = {t.fact.answer for t in rel.train if t.fact.relation == item.fact.relation}
        assert prediction in classes


def test_evaluate_returns_every_method(setup, reader):
    _, data, _ = setup
    result = evaluate_relations(reader, data, max_new_tokens=3)
    assert result["task"] == "relations" and set(result["methods"]) == set(METHODS)
    for values in result["methods"].values():
        assert set(values) == SUMMARY_KEYS
    assert 0.0 <= result["methods"]["linear_probe"]["accuracy"] <= 1.0
    assert result["decoder"]["trained_on"] == "relations only"
    assert set(result["per_relation"]) == {"capital", "region", "language", "currency"}
    # every item's answers are reported, one per method, so any figure can be rechecked
    assert len(result["examples"]) == result["n"]
    for example in result["examples"]:
        assert set(METHODS) <= set(example) and {"subject", "relation", "gold"} <= set(example)
    json.loads(json.dumps(result))


def test_layer_sweep_writes_plots(setup, reader, tmp_path):
    _, data, _ = setup
    swept = sweep_layers(reader, data, [0, 1], tmp_path, max_new_tokens=2)
    assert set(swept["per_layer"]) == {0, 1}
    assert set(swept["per_layer"][0]) == {"lit", "lit_zeroed", "patchscope", "linear_probe"}
    for name in swept["plots"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert json.loads((tmp_path / "relations_layers.json").read_text())


def test_cli_prints_json_last(setup, capsys):
    model, data, decoder = setup
    parser = argparse.ArgumentParser()
    add_relations_task(parser.add_subparsers())
    args = parser.parse_args(
        [
            "relations",
            "--data",
            str(data),
            "--target",
            str(model),
            "--decoder",
            str(decoder),
            "--device",
            "cpu",
            "--max-new-tokens",
            "2",
            "--json",
        ]
    )
    assert args.func(args) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["task"] == "relations" and "accuracy" in last["methods"]["lit"]
    assert {"linear_probe", "patchscope", "lit_zeroed"} <= set(last["methods"])
    assert "plots" not in last  # no --out, no files


def test_cli_out_writes_the_per_relation_chart(setup, tmp_path, capsys):
    model, data, decoder = setup
    parser = argparse.ArgumentParser()
    add_relations_task(parser.add_subparsers())
    out = tmp_path / "plots"
    argv = ["relations", "--data", str(data), "--target", str(model), "--decoder", str(decoder)]
    args = parser.parse_args([*argv, "--device", "cpu", "--max-new-tokens", "2", "--out", str(out)])
    assert args.func(args) == 0
    assert (out / "relations_per_relation.png").stat().st_size > 1000
    assert str(out / "relations_per_relation.png") in capsys.readouterr().err


def test_eval_all_writes_report_and_json(setup, tmp_path, monkeypatch):
    from latentqa.evals.report import plot_per_layer

    model, data, decoder = setup
    monkeypatch.setitem(KNOWN_TASKS, "ghost", "latentqa.evals.ghost")

    def system_prompt_stub(ctx: SuiteContext) -> dict:
        per_layer = {1: {"lit": {"mc_accuracy": 0.5}}, 2: {"lit": {"mc_accuracy": 0.7}}}
        plot_per_layer(per_layer, "mc_accuracy", ctx.out / "sp.png", "stub")
        return {
            "task": "system-prompt",
            "n": 3,
            "methods": {"lit": {"mc_accuracy": 0.6}},
            "plots": ["sp.png"],
        }

    def failing(ctx: SuiteContext) -> dict:
        raise RuntimeError("boom")

    ctx = SuiteContext(
        out=tmp_path / "report",
        target=str(model),
        decoders={"relations": str(decoder)},
        data={"relations": str(data)},
        device="cpu",
        layers=[1],
        log=lambda _: None,
    )
    suite = run_suite(
        ctx,
        ["system-prompt", "relations", "ghost", "audit"],
        runners={"system-prompt": system_prompt_stub, "audit": failing},
    )
    assert set(suite["tasks"]) == {"system-prompt", "relations"}
    assert "no module latentqa.evals.ghost" in suite["skipped"]["ghost"]
    assert "boom" in suite["failed"]["audit"]
    report = (tmp_path / "report" / "report.md").read_text()
    for text in (
        "## system-prompt",
        "## relations",
        "![system-prompt: sp](sp.png)",
        "| lit |",
        "## Skipped",
        "**ghost**",
        "## Failed",
        "| task | measure | LIT | activations taken away | baselines |",
        "| system-prompt (n = 3) | mc_accuracy | **0.600** | – | – |",
    ):
        assert text in report
    headline = next(line for line in report.splitlines() if line.startswith("| relations (n ="))
    for method in ("lit_zeroed", "lit_shuffled", "patchscope", "linear_probe"):
        assert method in headline
    assert (tmp_path / "report" / "relations_layers_accuracy.png").is_file()
    # the per-relation bar chart is drawn and linked whether or not layers are swept
    assert (tmp_path / "report" / "relations_per_relation.png").stat().st_size > 1000
    assert "![relations: relations_per_relation](relations_per_relation.png)" in report
    figures = json.loads((tmp_path / "report" / "results.json").read_text())
    assert figures["tasks"]["relations"]["methods"]["patchscope"]["n"] > 0


def test_eval_all_skips_tasks_without_data(tmp_path):
    ctx = SuiteContext(out=tmp_path, target=str(tmp_path / "model"), log=lambda _: None)
    suite = run_suite(ctx, tasks=["system-prompt", "relations"])
    assert set(suite["skipped"]) == {"system-prompt", "relations"}
    assert str(tmp_path / "model") in suite["skipped"]["system-prompt"]  # no such model
    assert "no decoder ships for target" in suite["skipped"]["relations"]
    assert set(KNOWN_TASKS) <= set(discover())


def test_eval_all_finds_a_module_by_its_run_in_suite(tmp_path, monkeypatch):
    module = types.ModuleType("latentqa.evals.fake")

    def run_in_suite(ctx: SuiteContext) -> dict:
        return {"task": "fake", "n": ctx.n, "methods": {"none": {"seed": ctx.seed}}}

    module.run_in_suite = run_in_suite
    monkeypatch.setitem(sys.modules, "latentqa.evals.fake", module)
    monkeypatch.setitem(KNOWN_TASKS, "fake", "latentqa.evals.fake")
    ctx = SuiteContext(out=tmp_path, target="m", n=7, seed=3, log=lambda _: None)
    suite = run_suite(ctx, ["fake"])
    assert suite["tasks"]["fake"]["methods"]["none"] == {"seed": 3}
    monkeypatch.setitem(sys.modules, "latentqa.evals.fake", types.ModuleType("fake"))
    suite = run_suite(ctx, ["fake"])
    assert "no run_in_suite(ctx) entry point" in suite["skipped"]["fake"]


def test_facts_default_to_the_decoders_own(setup, reader, tmp_path):
    _, data, decoder = setup
    # The folder the decoder was trained on, then the decoder folder itself (shipped).
    assert relation_data_of(reader) == data
    copy = tmp_path / "decoder"
    shutil.copytree(decoder, copy)
    shutil.copy(data / "facts.json", copy / "facts.json")
    assert find_relation_data(None, copy, None) == copy
    assert find_relation_data(tmp_path, copy, None) == tmp_path  # --data wins
    with pytest.raises(LatentQAError, match="pass --data DIR"):
        find_relation_data(None, decoder, None)


def test_eval_relations_cli_runs_without_data(setup, capsys):
    model, _, decoder = setup
    argv = ["eval", "relations", "--target", str(model), "--decoder", str(decoder)]
    assert main([*argv, "--device", "cpu", "--max-new-tokens", "2", "--n", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["methods"]) == set(METHODS)
    assert all("accuracy" in v for r in result["per_relation"].values() for v in r.values())
