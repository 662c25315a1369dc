"""The relations evaluation, its baselines, the layer sweep and ``eval all`` on tiny models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import types

import pytest
import torch
from lit_fixtures import write_tiny_model
from relations_fixtures import write_relations_data
from tiny import count_rows

from latentqa.cli import main
from latentqa.cli.eval import add_evaluation
from latentqa.data.relations_facts import normalize
from latentqa.errors import LatentQAError
from latentqa.evals import registry
from latentqa.evals.all import SuiteContext, run_suite
from latentqa.evals.registry import Evaluation, discover
from latentqa.evals.relations import (
    METHODS,
    evaluate_relations,
    lit_answers,
    load_relation_data,
    patchscope_answers,
    probe_answers,
    read_subjects,
    relation_data_of,
    score,
    sweep_layers,
)
from latentqa.evals.relations_data import find_relation_data
from latentqa.evals.relations_task import EVALUATION as RELATIONS
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
        assert set(values) == SUMMARY_KEYS | {"seconds"}
    # Each method's wall time, and the reads', add up to no more than the whole run's.
    laps = [values["seconds"] for values in result["methods"].values()]
    assert min(laps) >= 0 and result["read_seconds"] >= 0
    assert sum(laps) + result["read_seconds"] <= result["seconds"] + 0.05
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
    add_evaluation(parser.add_subparsers(), RELATIONS)
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
    add_evaluation(parser.add_subparsers(), RELATIONS)
    out = tmp_path / "plots"
    argv = ["relations", "--data", str(data), "--target", str(model), "--decoder", str(decoder)]
    args = parser.parse_args([*argv, "--device", "cpu", "--max-new-tokens", "2", "--out", str(out)])
    assert args.func(args) == 0
    assert (out / "relations_per_relation.png").stat().st_size > 1000
    assert str(out / "relations_per_relation.png") in capsys.readouterr().err


def test_eval_all_writes_report_and_json(setup, tmp_path, monkeypatch):
    from latentqa.evals.report import plot_per_layer

    model, data, decoder = setup
    monkeypatch.setattr(registry, "EVALUATION_MODULES", (*registry.EVALUATION_MODULES, "ghost"))

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
    # Each task's wall time, whether it ran, was skipped or failed; the report sums them.
    assert list(figures["seconds"]) == ["system-prompt", "relations", "ghost", "audit"]
    assert all(seconds >= 0 for seconds in figures["seconds"].values())
    assert "Wall time: system-prompt " in report and "min in all)." in report


def test_eval_all_skips_tasks_without_data(tmp_path):
    ctx = SuiteContext(out=tmp_path, target=str(tmp_path / "model"), log=lambda _: None)
    suite = run_suite(ctx, tasks=["system-prompt", "relations"])
    assert set(suite["skipped"]) == {"system-prompt", "relations"}
    assert str(tmp_path / "model") in suite["skipped"]["system-prompt"]  # no such model
    assert "no decoder ships for target" in suite["skipped"]["relations"]
    found = discover()
    assert list(found) == [
        "system-prompt",
        "relations",
        "control-reading",
        "sentiment",
        "crows-pairs",
        "audit",
    ]
    assert all(isinstance(entry, Evaluation) for entry in found.values())
    assert found["relations"].default_decoder == "shipped:relations"
    assert found["system-prompt"].default_decoder is None
    with pytest.raises(LatentQAError, match="unknown evaluation"):
        run_suite(ctx, tasks=["relation"])


@dataclasses.dataclass
class _FakeConfig:
    """Options of a fake evaluation."""

    n: int = 1
    """items"""


def _fake_evaluation(name: str, **fields) -> Evaluation:
    def suite(ctx: SuiteContext) -> dict:
        return {"task": name, "n": ctx.n, "methods": {"lit": {"acc": 0.5, "seed": ctx.seed}}}

    return Evaluation(
        name=name,
        help="a fake",
        description="A fake evaluation.",
        config=_FakeConfig,
        run=lambda config, log: {"task": name, "n": config.n, "methods": {}},
        report=lambda result, config, log: f"{name} table, n = {result['n']}",
        **{"suite": suite, **fields},
    )


def test_eval_all_runs_a_registered_evaluation(tmp_path, monkeypatch):
    module = types.ModuleType("latentqa.evals.fake_task")
    module.EVALUATION = _fake_evaluation("fake", default_decoder="dec-fake", headline="acc")
    monkeypatch.setitem(sys.modules, "latentqa.evals.fake_task", module)
    monkeypatch.setattr(registry, "EVALUATION_MODULES", ("fake_task", "broken"))
    broken = types.ModuleType("latentqa.evals.broken")
    monkeypatch.setitem(sys.modules, "latentqa.evals.broken", broken)
    ctx = SuiteContext(out=tmp_path, n=7, seed=3, log=lambda _: None)
    suite = run_suite(ctx)
    assert suite["tasks"]["fake"]["methods"]["lit"]["seed"] == 3
    assert "has no EVALUATION" in suite["skipped"]["broken"]
    assert ctx.decoder_for("fake") == "dec-fake"  # the embedded target: its own decoder
    report = (tmp_path / "report.md").read_text()
    assert "fake decoder `dec-fake`" in report and "| fake (n = 7) | acc | **0.500** |" in report
    # A module that fails to import is reported as failed; a missing suite runner skips.
    broken.__getattr__ = lambda name: 1 / 0
    module.EVALUATION = _fake_evaluation("fake", suite=None)
    suite = run_suite(ctx)
    assert "has no suite runner" in suite["skipped"]["fake"]
    assert "ZeroDivisionError" in suite["failed"]["broken"]
    # Two evaluations of one name are an error.
    monkeypatch.setattr(registry, "EVALUATION_MODULES", ("fake_task", "fake_task"))
    with pytest.raises(LatentQAError, match="two evaluations are named 'fake'"):
        run_suite(ctx)


def test_eval_commands_come_from_the_registry(setup, tmp_path, monkeypatch, capsys):
    model, _, _ = setup
    fake, failing = types.ModuleType("fake_task"), types.ModuleType("failing_task")
    fake.EVALUATION = _fake_evaluation("fake")
    failing.EVALUATION = _fake_evaluation("failing", suite=lambda ctx: 1 / 0)
    monkeypatch.setitem(sys.modules, "latentqa.evals.fake_task", fake)
    monkeypatch.setitem(sys.modules, "latentqa.evals.failing_task", failing)
    monkeypatch.setattr(registry, "EVALUATION_MODULES", ("fake_task", "failing_task"))
    assert main(["eval", "fake", "--n", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "fake table, n = 3" and json.loads(lines[-1])["n"] == 3
    with pytest.raises(SystemExit):
        main(["eval", "fake", "--m", "3"])  # unknown options are errors
    with pytest.raises(SystemExit):
        main(["eval", "relations"])  # only registered evaluations are commands
    capsys.readouterr()
    out = tmp_path / "report"
    argv = ["eval", "all", "--out", str(out), "--target", str(model), "--json"]
    assert main(argv) == 1  # an evaluation failed
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"wrote {out / 'report.md'} and results.json (ran: fake; skipped: none)"
    assert json.loads(lines[-1]) == json.loads((out / "results.json").read_text())
    assert "ZeroDivisionError" in json.loads(lines[-1])["failed"]["failing"]
    argv = ["eval", "all", "--out", str(tmp_path / "again"), "--target", str(model)]
    assert main([*argv, "--tasks", "fake"]) == 0
    assert main([*argv, "--tasks", "fake", "relations"]) == 2
    assert "unknown evaluation(s) ['relations']" in capsys.readouterr().err


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


def test_zeroed_answers_are_generated_once_per_shape_and_equal_each_row_alone(
    setup, reader, monkeypatch
):
    _, data, _ = setup
    rel = load_relation_data(data)
    spans = read_subjects(reader, rel.items, [1])
    zeros = [torch.zeros_like(reader.decoder.inputs(s, [1])) for s in spans]
    asked = count_rows(monkeypatch, Reader, "generate_ids")
    got = lit_answers(reader, zeros, rel.items, max_new_tokens=3)
    distinct = {(tuple(z.shape), item.question) for z, item in zip(zeros, rel.items, strict=True)}
    assert asked == [len(distinct)] and len(distinct) < len(rel.items)
    for z, item, answer in zip(zeros, rel.items, got, strict=True):
        assert lit_answers(reader, [z], [item], max_new_tokens=3) == [answer]
