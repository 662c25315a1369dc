"""Preflight: bad paths, layers and numbers fail in one line before any model loads.

Every command test replaces the model loader with one that fails the test, so a check
that still ran after the load would show up as that failure, not as a refusal.
"""

from __future__ import annotations

import json
import math

import pytest
from lit_fixtures import write_tiny_data, write_tiny_model

import latentqa.cli as cli
from latentqa.decoder.folder import ADAPTER_FILES, DecoderSpec
from latentqa.errors import LatentQAError
from latentqa.gguf_cache import gguf_shape
from latentqa.models import embedded_gguf_path, model_shape
from latentqa.steer.config import SteerConfig
from latentqa.train.config import TrainConfig
from latentqa.typed_config import config_from_dict


class ModelLoaded(AssertionError):
    """Raised by the replaced loaders: the command got past its checks to the load."""


def _no_load(*args, **kwargs):
    raise ModelLoaded("a model was loaded")


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Every loader the commands reach fails the test instead of loading."""
    import uvicorn

    loaders = ("train.trainer", "reader", "steer.model", "decoder.loaded")
    for module in (f"latentqa.{name}" for name in loaders):
        monkeypatch.setattr(f"{module}.load_model", _no_load)
    monkeypatch.setattr("latentqa.reader.Reader.load", _no_load)
    monkeypatch.setattr(uvicorn, "run", _no_load)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 4-layer model folder, a dataset and a decoder folder that describes it."""
    root = tmp_path_factory.mktemp("preflight")
    model = write_tiny_model(root / "model")
    decoder = root / "decoder"
    decoder.mkdir()
    DecoderSpec(
        target=str(model),
        read_layers=[2],
        write_layer=0,
        mode="replace",
        max_read_tokens=8,
        hidden_size=32,
        n_layers=4,
    ).save(decoder)
    for name in ADAPTER_FILES:  # only their presence is checked before the load
        (decoder / name).write_text("{}")
    return {
        "model": model,
        "data": write_tiny_data(root / "data"),
        "decoder": decoder,
        "root": root,
    }


def refused(capsys, argv: list[str], message: str) -> str:
    """Run the command: exit 2, one line on stderr naming ``message``, no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err and "Traceback" not in err, err
    return err


def test_model_shape_comes_from_the_config_without_weights(files, tmp_path):
    assert model_shape(str(files["model"])) == (4, 32)
    assert gguf_shape(embedded_gguf_path()) == (30, 576)  # header only, no tensors
    assert model_shape("smollm2-135m") == (30, 576)
    (tmp_path / "x.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # truncated header
    assert gguf_shape(tmp_path / "x.gguf") is None
    assert model_shape("someone/not-cached-anywhere") is None  # a hub id: no network
    with pytest.raises(LatentQAError, match="no such file or folder"):
        model_shape(str(tmp_path / "missing"))


# latentqa train


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "{root}/nowhere"], "data folder"),
        (["--read-layers", "999"], "read layer 999 is out of range"),
        (["--write-layer", "4"], "write layer 4 is out of range"),
        (["--kinds", "bogus"], "unknown data kind(s) ['bogus']"),
        (["--kinds", "control"], "missing behaviour file(s) control.json"),
        (["--resume"], "--resume: no checkpoint in"),
        (["--extra-data", "{root}/nowhere"], "--extra-data folder"),
        (["--eval-data", "{root}/nowhere"], "--eval-data folder"),
        (["--device", "tpu"], "unknown device"),
        (["--dtype", "int8"], "unknown dtype"),
        (["--lora-dropout", "7.5"], "lora_dropout must be in [0, 1)"),
        (["--epochs", "nan"], "epochs must be positive"),
        (["--lr", "inf"], "lr must be positive"),
        (["--keep-checkpoints", "0"], "keep_checkpoints must be at least 1"),
        (["--target", "{root}/no-model"], "no such file or folder"),
        (["--projector", "linear"], "set --read-pool mean, last or mean+last"),
        (["--projector", "mlp", "--read-pool", "last", "--mode", "add"], "leave --mode unset"),
        (["--projector-lr", "0.01"], "--projector-lr applies to a projector"),
        (["--mode", "embed", "--write-layer", "1"], "--write-layer 1 has no effect"),
    ],
)
def test_train_refuses_before_the_model_loads(files, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = [
        "train",
        "--data",
        str(files["data"]),
        "--out",
        str(out),
        "--target",
        str(files["model"]),
        "--no-progress",
    ]
    argv += [item.format(root=files["root"]) for item in extra]
    refused(capsys, argv, message)
    assert not out.exists()  # nothing written


def test_train_with_good_options_gets_to_the_load(files, tmp_path):
    argv = [
        "train",
        "--data",
        str(files["data"]),
        "--out",
        str(tmp_path / "run"),
        "--target",
        str(files["model"]),
        "--read-layers",
        "1",
        "-1",
        "--kinds",
        "system",
    ]
    with pytest.raises(ModelLoaded):
        cli.main(argv)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"warmup_steps": -1}, "warmup_steps must be at least 0, got -1: set --warmup-steps"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be at least 1"),
        ({"keep_checkpoints": -3}, "keep_checkpoints must be at least 1"),
        ({"save_every": -5}, "save_every must be at least 0"),
        ({"eval_every": -1}, "eval_every must be at least 0"),
        ({"lora_dropout": 7.5}, "lora_dropout must be in [0, 1), got 7.5: set --lora-dropout"),
        ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
        ({"lora_dropout": -0.1}, "lora_dropout must be in [0, 1)"),
        ({"min_lr_ratio": 9}, "min_lr_ratio must be in [0, 1], got 9"),
        ({"min_lr_ratio": -0.5}, "min_lr_ratio must be in [0, 1]"),
        ({"epochs": math.nan}, "epochs must be positive, got nan"),
        ({"epochs": math.inf}, "epochs must be positive, got inf"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"lr": math.inf}, "lr must be positive, got inf: set --lr to a finite number"),
        ({"lr": -1e-3}, "lr must be positive"),
        ({"weight_decay": -1.0}, "weight_decay must not be negative"),
        ({"max_grad_norm": math.nan}, "max_grad_norm must not be negative, got nan"),
        ({"max_examples": 0}, "max_examples must be at least 1"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"lora_alpha": 0}, "lora_alpha must be at least 1"),
        ({"kinds": []}, "kinds is empty"),
        ({"lora_targets": " "}, "lora_targets must not be empty"),
        ({"out": ""}, "out must not be empty"),
    ],
)
def test_train_config_numbers_are_checked(overrides, message):
    values = {"data": "data", "out": "out", **overrides}
    with pytest.raises(LatentQAError) as error:
        config_from_dict(TrainConfig, values)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": math.nan}, "lr must be positive, got nan"),
        ({"max_grad_norm": math.inf}, "max_grad_norm must not be negative, got inf"),
        ({"warmup_steps": -2}, "warmup_steps must be at least 0"),
        ({"max_prompts": 0}, "max_prompts must be at least 1"),
    ],
)
def test_steer_config_numbers_are_checked(overrides, message):
    with pytest.raises(LatentQAError, match=message.replace("(", r"\(")):
        config_from_dict(SteerConfig, {"out": "out", **overrides})


# latentqa read


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--user", "Hi", "-q", "Who?", "--layer", "9"], "read layer 9 is out of range"),
        (["--user", "Hi", "-q", "Who?", "--layer", "-5"], "read layer -5 is out of range"),
        (["--user", "Hi", "-q", ""], "ask at least one question"),
        (["--user", "Hi", "-q", "  "], "ask at least one question"),
        (["--dialogs", "{robot}", "-q", "Who?"], "unknown role 'robot'"),
        (["--dialogs", "{no_user}", "-q", "Who?"], "dialog 2: the dialog has no user turn"),
        (["--user", "Hi", "-q", "Who?", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--user", "Hi", "-q", "Who?", "--temperature", "nan"], "--temperature"),
        (["--user", "Hi", "-q", "Who?", "--device", "gpu7"], "unknown device"),
        (["--user", "Hi", "-q", "Who?", "--save-control", "{root}"], "is a folder"),
    ],
)
def test_read_refuses_before_the_model_loads(files, tmp_path, capsys, extra, message):
    robot = tmp_path / "robot.json"
    robot.write_text(json.dumps([[{"role": "robot", "content": "Hi"}]]))
    no_user = tmp_path / "no_user.json"
    no_user.write_text(
        json.dumps(
            [[{"role": "user", "content": "Hi"}], [{"role": "system", "content": "Be brief."}]]
        )
    )
    names = {"robot": robot, "no_user": no_user, "root": files["root"]}
    argv = ["read", "--target", str(files["model"]), "--decoder", str(files["decoder"])]
    refused(capsys, argv + [item.format(**names) for item in extra], message)


def test_read_refuses_a_decoder_of_another_target(files, tmp_path, capsys):
    qwen = write_tiny_model(tmp_path / "qwen", "qwen2")  # 3 layers, the decoder reads 4
    capsys.readouterr()  # the writer's progress bar
    argv = [
        "read",
        "--target",
        str(qwen),
        "--decoder",
        str(files["decoder"]),
        "--user",
        "Hi",
        "-q",
        "Who?",
    ]
    refused(capsys, argv, "but '" + str(qwen) + "' has 3 layers")
    argv = [
        "read",
        "--target",
        str(files["model"]),
        "--decoder",
        str(tmp_path / "nowhere"),
        "--user",
        "Hi",
        "-q",
        "Who?",
    ]
    refused(capsys, argv, "does not exist")
    argv = [
        "read",
        "--target",
        str(files["model"]),
        "--decoder",
        str(files["decoder"]),
        "--user",
        "Hi",
        "-q",
        "Who?",
        "--layer",
        "-1",
    ]
    with pytest.raises(ModelLoaded):  # a good command gets to the load
        cli.main(argv)


# latentqa eval, serve, steer


def test_eval_system_prompt_checks_layers_before_the_evaluation(files, tmp_path, capsys):
    common = [
        "eval",
        "system-prompt",
        "--target",
        str(files["model"]),
        "--decoder",
        str(files["decoder"]),
    ]
    refused(capsys, [*common, "--layers", "1", "999"], "read layer 999 is out of range")
    refused(capsys, [*common, "--data", str(tmp_path / "nowhere")], "does not exist")
    refused(capsys, [*common, "--n", "0"], "--n must be at least 1")
    refused(capsys, ["eval", "system-prompt", "--layers", "30"], "has 30 decoder layers")


def test_eval_relations_checks_layer_decoders_before_the_evaluation(files, capsys):
    common = [
        "eval",
        "relations",
        "--data",
        str(files["data"]),
        "--target",
        str(files["model"]),
        "--decoder",
        str(files["decoder"]),
    ]
    decoder = str(files["decoder"])
    refused(capsys, [*common, "--layers", "7"], "read layer 7 is out of range")
    refused(capsys, [*common, "--layers", "1", "--layer-decoder", "x"], "takes LAYER=DIR")
    refused(capsys, [*common, "--layer-decoder", f"1={decoder}"], "add --layers")
    refused(
        capsys, [*common, "--layers", "1", "--layer-decoder", f"2={decoder}"], "add 2 to --layers"
    )
    refused(
        capsys,
        [*common, "--layers", "1", "--layer-decoder", "1=/nonexistent"],
        "decoder folder /nonexistent does not exist",
    )


def test_eval_all_checks_layers_before_writing_anything(files, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["eval", "all", "--out", str(out), "--target", str(files["model"]), "--layers", "4"]
    refused(capsys, argv, "read layer 4 is out of range")
    assert not out.exists()


def test_serve_refuses_to_start_without_its_decoder(files, capsys):
    refused(capsys, ["serve", "--decoder", "/nonexistent"], "decoder folder /nonexistent")
    refused(capsys, ["serve", "--target", str(files["model"])], "no decoder ships")
    refused(
        capsys,
        [
            "serve",
            "--decoder",
            str(files["decoder"]),
            "--target",
            str(files["model"]),
            "--dtype",
            "int3",
        ],
        "unknown dtype",
    )


def test_steer_checks_layers_before_the_model_loads(files, tmp_path, capsys):
    out = tmp_path / "steered"
    common = [
        "steer",
        "--qa",
        "Who?",
        "A pirate.",
        "--out",
        str(out),
        "--target",
        str(files["model"]),
        "--decoder",
        str(files["decoder"]),
    ]
    refused(capsys, [*common, "--layers", "9"], "steer layer 9 is out of range")
    refused(capsys, [*common, "--read-layers", "-5"], "read layer -5 is out of range")
    refused(capsys, [*common, "--lr", "nan"], "lr must be positive")
    assert not out.exists()
