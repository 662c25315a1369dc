"""Steering with a tiny decoder: gradients, loss, saving and reloading, controls, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from lit_fixtures import STEER_PROMPTS
from peft import PeftModel

import latentqa.cli as cli
from latentqa.errors import LatentQAError
from latentqa.generation import generate_texts
from latentqa.models import load_model
from latentqa.steer import (
    STEER_ADAPTER,
    SteerableModel,
    SteerConfig,
    add_vector,
    combine_controls,
    encode_prompt,
    load_control,
    load_steered,
    parse_control,
    save_control,
    steer,
    steering_loss,
    train_steering,
    tune_setting,
)
from latentqa.typed_config import config_from_dict

PROMPTS = STEER_PROMPTS
CONTROL = [("What persona is the assistant adopting?", "The assistant is a pirate captain.")]


@pytest.fixture
def steerable(paths):
    return SteerableModel.load(paths["model"], paths["decoder"], device="cpu")


def _config(paths, out, **overrides) -> SteerConfig:
    values = dict(
        out=str(out),
        target=paths["model"],
        decoder=paths["decoder"],
        prompts=paths["prompts"],
        steps=3,
        batch_size=2,
        lr=1e-2,
        device="cpu",
    )
    values.update(overrides)
    return config_from_dict(SteerConfig, values)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_gradients_reach_only_the_steering_adapter(steerable):
    assert steerable.add_steering([0, 1], r=4, alpha=8) == [0, 1]
    steer_names = {n for n, _ in steerable.model.named_parameters() if f".{STEER_ADAPTER}." in n}
    assert steer_names and all(".layers.0." in n or ".layers.1." in n for n in steer_names)
    # LoRA B starts at zero; give it a value so that every steering weight gets a gradient.
    for name, parameter in steerable.model.named_parameters():
        if name in steer_names and "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    encoded = [encode_prompt(steerable.tokenizer, p) for p in PROMPTS]
    loss, groups = steering_loss(steerable, encoded, CONTROL, [2, 3], per_layer_loss=True)
    assert len(groups) == 2 and loss.item() == pytest.approx(sum(groups) / 2, rel=1e-5)
    loss.backward()
    for name, parameter in steerable.model.named_parameters():
        if name in steer_names:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:  # base weights and the decoder's adapter
            assert parameter.grad is None and not parameter.requires_grad, name


def test_training_lowers_the_loss_and_changes_only_the_steering_weights(steerable, paths):
    encoded = [encode_prompt(steerable.tokenizer, p) for p in PROMPTS]
    read_layers = steerable.spec.read_layers
    steerable.add_steering()  # zero-initialised LoRA: the loss of the unsteered target
    with torch.no_grad():
        initial, _ = steering_loss(steerable, encoded, CONTROL, read_layers)
    before = _snapshot(steerable.model)
    config = _config(paths, "unused", steps=12, batch_size=4, lr=3e-2, warmup_steps=0)
    records = train_steering(steerable, CONTROL, PROMPTS, config, progress=False)
    assert records[0]["kind"] == "initial" and len(records) == 13
    assert records[0]["loss"] == pytest.approx(float(initial), rel=1e-5)
    with torch.no_grad():
        final, _ = steering_loss(steerable, encoded, CONTROL, read_layers)
    assert float(final) < float(initial) - 0.3
    after = _snapshot(steerable.model)
    changed = {n for n in after if n in before and not torch.equal(after[n], before[n])}
    assert changed and all(f".{STEER_ADAPTER}." in name for name in changed)


def test_read_pass_uses_only_the_steering_adapter(steerable):
    steerable.add_steering([0], r=4, alpha=8)
    ids = torch.tensor([encode_prompt(steerable.tokenizer, PROMPTS[0]).input_ids])
    with torch.no_grad(), steerable.unsteered() as model:
        plain = model(input_ids=ids).logits
    with torch.no_grad(), steerable.steered() as model:
        steered = model(input_ids=ids).logits  # fresh LoRA (B = 0): same as the base model
    torch.testing.assert_close(plain, steered)
    steerable.use("decoder")
    with torch.no_grad():
        decoded = steerable.model(input_ids=ids).logits
    assert not torch.allclose(plain, decoded)
    with steerable.unsteered():  # peft marks the active adapter trainable again on exit
        pass
    trainable = {n for n, p in steerable.model.named_parameters() if p.requires_grad}
    assert trainable and all(f".{STEER_ADAPTER}." in n for n in trainable)


def test_steer_saves_an_adapter_that_plain_peft_reloads(paths, tmp_path):
    result = steer(
        _config(paths, tmp_path / "out", layers=[1, 2], steps=2), CONTROL, progress=False
    )
    out = result.out
    for name in ("adapter_model.safetensors", "adapter_config.json", "steer.json", "loss.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "steer.json").read_text())
    assert summary["layers"] == [1, 2] and summary["control"] == [list(CONTROL[0])]
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [1, 2]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [0, 1, 2]
    base, tokenizer = load_model(paths["model"], device="cpu")
    reloaded = PeftModel.from_pretrained(base, str(out)).eval()
    ids = torch.tensor([encode_prompt(tokenizer, PROMPTS[1]).input_ids])
    with torch.no_grad(), result.steerable.steered() as model:
        expected = model(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected)
    model, tokenizer = load_steered(paths["model"], out, device="cpu")
    replies = generate_texts(model, tokenizer, PROMPTS[:2], max_new_tokens=3)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    with pytest.raises(LatentQAError, match="already holds a steering adapter"):
        steer(_config(paths, out), CONTROL, progress=False)
    with pytest.raises(LatentQAError, match=r"lacks adapter_config\.json"):
        load_steered(paths["model"], tmp_path, device="cpu")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"question": "Q", "answer": "A"}, "non-empty JSON list"),
        ([], "non-empty JSON list"),
        ([["Q", "A", "extra"]], "item 0 must be a"),
        (["Q?"], "item 0 must be a"),
        ([["Q", ""]], "non-empty string answer"),
        ([{"question": "Q"}], "non-empty string answer"),
        ([{"question": "Q", "answer": "A", "why": 1}], "unknown key"),
        ([["Q", "A"], [" ", "A"]], "item 1 needs a non-empty string question"),
    ],
)
def test_bad_controls_get_one_line_errors(data, message, tmp_path):
    path = tmp_path / "control.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LatentQAError, match=message) as error:
        load_control(path)
    assert "\n" not in str(error.value)


def test_control_formats_files_and_round_trip(tmp_path):
    pairs = parse_control([["What  tone?", " Cheerful. "], {"question": "Who?", "answer": "A"}])
    assert pairs == [("What tone?", "Cheerful."), ("Who?", "A")]
    path = save_control(tmp_path / "sub" / "c.json", ["What tone?", "Who?"], ["Cheerful.", "A"])
    assert load_control(path) == pairs
    assert combine_controls(path, [["Q?", "A."]]) == [*pairs, ("Q?", "A.")]
    bad = tmp_path / "bad.json"
    bad.write_text("[[")
    for call, message in [
        (lambda: load_control(bad), "not valid JSON"),
        (lambda: load_control(tmp_path / "missing.json"), "does not exist"),
        (lambda: combine_controls(None, None), "give a control"),
        (lambda: save_control(tmp_path / "x.json", ["Q"], []), "1 questions but 0 answers"),
    ]:
        with pytest.raises(LatentQAError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"layers": []}, "layers must name at least one layer"),
        ({"stepz": 3}, "unknown option"),
        ({"layers": [9]}, "steer layer 9 is out of range"),
        ({"layers": [3], "read_layers": [1]}, "above the deepest read layer"),
        ({"read_layers": [7]}, "read layer 7 is out of range"),
        ({"prompts": "/nowhere/p.txt"}, "prompts file /nowhere/p.txt does not exist"),
    ],
)
def test_bad_steering_options_are_errors(paths, tmp_path, overrides, message):
    with pytest.raises(LatentQAError, match=message):
        steer(_config(paths, tmp_path / "o", **overrides), CONTROL, progress=False)


def test_steering_vector_hook_is_added_and_removed(steerable):
    ids = torch.tensor([encode_prompt(steerable.tokenizer, PROMPTS[0]).input_ids])
    with torch.no_grad(), steerable.unsteered() as model:
        plain = model(input_ids=ids).logits
        with add_vector(model, 1, torch.ones(32), 2.0):
            shifted = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert not torch.allclose(plain, shifted)
    torch.testing.assert_close(plain, again)
    best, trials = tune_setting(lambda c: (c, c < 3), [1.0, 2.0, 4.0])
    assert best == 2.0 and [t[2] for t in trials] == [True, True, False]
    assert tune_setting(lambda c: (c, False), [1.0, 2.0])[0] == 1.0


def _main(monkeypatch, argv: list[str]) -> int:
    if "steer" not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, "steer"])
    return cli.main(argv)


def test_cli_steer_with_qa_and_generate(paths, tmp_path, monkeypatch, capsys):
    control = tmp_path / "control.json"
    control.write_text(json.dumps([{"question": "Who?", "answer": "A pirate."}]))
    common = [
        "--target",
        paths["model"],
        "--decoder",
        paths["decoder"],
        "--device",
        "cpu",
        "--prompts",
        paths["prompts"],
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    argv = [
        "steer",
        "--out",
        str(tmp_path / "o"),
        "--control",
        str(control),
        "--qa",
        *CONTROL[0],
        "--generate",
        "--max-new-tokens",
        "3",
        *common,
    ]
    assert _main(monkeypatch, argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and "before steering" in out and "after steering" in out
    assert out.count("user: ") == 3  # one side-by-side block per sample prompt
    assert len(json.loads((tmp_path / "o" / "steer.json").read_text())["control"]) == 2
    assert _main(monkeypatch, ["steer", "--out", str(tmp_path / "p"), *common]) == 2
    assert "give a control" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _main(monkeypatch, ["steer", "--out", str(tmp_path / "q"), "--stepz", "3"])
