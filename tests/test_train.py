"""LIT training on a tiny model: losses, caching, checkpoints, resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lit_fixtures import tiny_train_config, write_tiny_data, write_tiny_model
from safetensors.torch import load_file

from latentqa.capture import pad_token_id
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.inputs import decoder_batch
from latentqa.decoder.loss import answer_token_loss
from latentqa.errors import LatentQAError
from latentqa.models import load_model
from latentqa.schedule import lr_lambda
from latentqa.train.activations import ActivationSource
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import add_lora, prepare_data
from latentqa.train.trainer import train

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("lit")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def config(workspace, out, **overrides) -> TrainConfig:
    defaults = dict(
        steps=12,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        eval_every=6,
        save_every=4,
        eval_examples=16,
    )
    return tiny_train_config(workspace, out, **{**defaults, **overrides})


def test_training_writes_decoder_metrics_and_plot(workspace, tmp_path):
    result = train(config(workspace, tmp_path / "run"), progress=False)
    out = result.out
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    spec = DecoderSpec.load(out)
    assert spec.read_layers == [2] and spec.write_layer == 0 and spec.mode == "replace"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]
    for record in evals:
        assert {"loss_real", "loss_zeroed", "loss_shuffled"} <= set(record)
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert sum(train_losses[-3:]) < sum(train_losses[:3])  # it learns something


def test_cached_activations_give_the_same_losses(workspace, tmp_path):
    cfg = config(workspace, tmp_path / "unused")
    model, tokenizer = load_model(cfg.target, device="cpu", dtype="float32")
    decoder = add_lora(model, cfg)
    data = prepare_data(cfg, tokenizer)
    make = lambda: ActivationSource(  # noqa: E731
        decoder,
        data.dialogs,
        pad_token_id(tokenizer),
        [2],
        cfg.max_read_tokens,
        target_context=decoder.disable_adapter,
    )
    live, cached = make(), make()
    cached.load_or_build_cache(tmp_path / "cache" / "acts.safetensors", progress=False)
    examples = data.train[:6]
    losses = []
    for source in (live, cached):
        vectors = source.get([d for d, _, _ in examples])
        batch, flat = decoder_batch(
            tokenizer, vectors, [q for _, q, _ in examples], [a for _, _, a in examples]
        )
        losses.append(answer_token_loss(decoder, batch, flat, write_layer=0, mode="replace"))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    # And a full run with the cache logs the same losses as one without.
    runs = {}
    for flag in (False, True):
        out = tmp_path / f"run-{flag}"
        train(config(workspace, out, steps=4, cache_activations=flag), progress=False)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        runs[flag] = [v for r in records for k, v in sorted(r.items()) if k.startswith("loss")]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_schedule_warms_up_then_decays_per_optimizer_step():
    factor = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    values = [factor(step) for step in range(20)]
    assert values[:4] == sorted(values[:4]) and values[3] < 1
    assert values[4] == pytest.approx(1.0)
    assert values[4:] == sorted(values[4:], reverse=True)
    assert values[-1] > 0.1 and factor(10_000) == pytest.approx(0.1)


def _worker(cfg: TrainConfig, tmp_path: Path, *extra: str, nproc: int = 1) -> list[str]:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(json.dumps(vars(cfg)))
    script = str(TESTS / "train_worker.py")
    if nproc == 1:
        return [sys.executable, script, str(path), *extra]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        "29533",
        script,
        str(path),
        *extra,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS))
    return env


def test_sigkill_then_resume_matches_an_uninterrupted_run(workspace, tmp_path):
    steps = 120
    full = config(workspace, tmp_path / "full", steps=steps, save_every=5, eval_every=0)
    subprocess.run(_worker(full, tmp_path), check=True, env=_env(), capture_output=True)
    killed = config(workspace, tmp_path / "killed", steps=steps, save_every=5, eval_every=0)
    process = subprocess.Popen(_worker(killed, tmp_path), env=_env(), stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step-0000010":
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed mid-training"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    resumed = subprocess.run(
        _worker(killed, tmp_path, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "full" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    steps_logged = [
        json.loads(line)["step"]
        for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps_logged == list(range(1, steps + 1))


def test_two_processes_hold_the_same_adapter(workspace, tmp_path):
    cfg = config(workspace, tmp_path / "ddp", steps=4, eval_every=0, save_every=0, device="cpu")
    dump = tmp_path / "dump"
    dump.mkdir()
    command = _worker(cfg, tmp_path, "--dump-adapter", str(dump), nproc=2)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(dump / f"rank{r}.safetensors") for r in (0, 1))
    initial = add_lora(load_model(cfg.target, device="cpu")[0], cfg)
    from peft.utils import get_peft_model_state_dict

    start = get_peft_model_state_dict(initial)
    assert rank0.keys() == rank1.keys()
    moved = False
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key])
        moved |= not torch.allclose(rank0[key], start[key])
    assert moved, "training did not change the adapter"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"read_layers": [9]}, "read layer 9 is out of range"),
        ({"write_layer": -7}, "write layer -7 is out of range"),
        ({"data": "/nonexistent/folder"}, "does not exist"),
    ],
)
def test_bad_input_gets_one_line_errors(workspace, tmp_path, overrides, message):
    with pytest.raises(LatentQAError, match=message):
        train(config(workspace, tmp_path / "bad", **overrides), progress=False)


def test_unknown_options_and_bad_values_are_errors(workspace, tmp_path):
    with pytest.raises(LatentQAError, match=r"unknown option.*lerning_rate"):
        config(workspace, tmp_path, lerning_rate=1.0)
    with pytest.raises(LatentQAError, match="batch_size must be at least 1"):
        config(workspace, tmp_path, batch_size=0)
    with pytest.raises(LatentQAError, match="must be one of replace, add"):
        config(workspace, tmp_path, mode="overwrite")


def test_rerun_without_resume_refuses_to_overwrite(workspace, tmp_path):
    train(config(workspace, tmp_path / "once", steps=2), progress=False)
    with pytest.raises(LatentQAError, match="--resume"):
        train(config(workspace, tmp_path / "once", steps=2), progress=False)


def test_empty_dataset_is_an_error(workspace, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "system.json").write_text("[]")
    (empty / "qa.json").write_text("{}")
    with pytest.raises(LatentQAError):
        train(config(workspace, tmp_path / "e", data=str(empty)), progress=False)


def test_lora_layers_adapt_only_the_chosen_blocks_and_the_decoder_loads(workspace, tmp_path):
    from latentqa.decoder.loaded import load_decoder

    out = tmp_path / "lower"
    train(config(workspace, out, steps=2, write_layer=1, lora_layers=[0, -3]), progress=False)
    weights = load_file(out / "adapter_model.safetensors")
    adapted = {int(key.split(".layers.")[1].split(".")[0]) for key in weights}
    assert adapted == {0, 1}  # -3 of 4 blocks is block 1; blocks 2 and 3 stay the target's
    loaded_decoder = load_decoder(workspace[0], out, device="cpu")
    loaded = {
        int(name.split(".layers.")[1].split(".")[0])
        for name, _ in loaded_decoder.model.named_parameters()
        if "lora_" in name
    }
    assert loaded == {0, 1} and loaded_decoder.spec.write_layer == 1
    with pytest.raises(LatentQAError, match="LoRA layer 4 is out of range"):
        train(config(workspace, tmp_path / "bad", lora_layers=[4]), progress=False)
    with pytest.raises(LatentQAError, match="lora_layers must name at least one block"):
        config(workspace, tmp_path / "none", lora_layers=[])
