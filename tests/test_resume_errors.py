"""Issue 12, items 3 and 5: damaged run files on --resume, checkpoint pruning and leftovers,
and an activation cache keyed by the target's weights."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from lit_fixtures import one_line_error, snapshot, train_argv, write_tiny_data, write_tiny_model

from latentqa import cli
from latentqa.errors import LatentQAError
from latentqa.train.activations import ActivationSource
from latentqa.train.checkpoint import (
    ADAPTER_FILE,
    STATE_FILE,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from latentqa.train.config import TrainConfig
from latentqa.train.run_folder import read_metrics
from latentqa.train.trainer import train
from latentqa.typed_config import config_from_dict


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


@pytest.fixture(scope="module")
def finished_run(workspace, tmp_path_factory) -> Path:
    """A finished two-step run with checkpoints step-1 and step-2 (copied per test)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(train_argv(workspace, out)) == 0
    return out


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


# --- damaged files on --resume: one line, nothing changed -------------------------------


@pytest.mark.parametrize("name", [ADAPTER_FILE, STATE_FILE, "trainer_state.json"])
def test_a_damaged_checkpoint_file_is_a_one_line_error(workspace, run, capsys, name):
    path = run / "checkpoints" / "step-0000002" / name
    path.write_bytes(path.read_bytes()[:20])  # truncated, as a full disk leaves it
    before = snapshot(run)
    code = cli.main(train_argv(workspace, run, "--resume"))
    err = one_line_error(capsys, code, rf"step-0000002 is damaged \({re.escape(name)}")
    assert "step-0000001" in err  # the way out: the older checkpoint
    assert snapshot(run) == before


def test_garbage_checkpoint_contents_are_errors_too(tmp_path):
    folder = tmp_path / "step-0000001"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("[1, 2]")  # valid JSON, wrong shape
    (folder / ADAPTER_FILE).write_bytes(b"")
    (folder / STATE_FILE).write_bytes(b"")
    with pytest.raises(LatentQAError, match="damaged"):
        load_checkpoint(folder)


def test_a_torn_metrics_line_is_a_one_line_error(workspace, run, capsys):
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], '{"step": 2, "kin', *lines[1:]]) + "\n")
    before = snapshot(run)
    code = cli.main(train_argv(workspace, run, "--resume"))
    one_line_error(capsys, code, r"metrics\.jsonl line 2 is not a metrics record")
    assert snapshot(run) == before


def test_a_torn_last_line_is_what_a_kill_leaves_and_is_dropped(workspace, run):
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": 3, "kind": "tr')  # no newline: cut mid-write
    assert [line for _, line in read_metrics(metrics)] == good.splitlines()
    assert cli.main(train_argv(workspace, run, "--resume")) == 0
    lines = metrics.read_text().splitlines()
    assert lines[: len(good.splitlines())] == good.splitlines()
    assert all(json.loads(line)["step"] <= 2 for line in lines)


def test_resume_cleans_leftovers_of_killed_checkpoint_writes(workspace, run):
    checkpoints = run / "checkpoints"
    (checkpoints / ".step-0000003.tmpab12cd").mkdir()  # killed mid-save
    (checkpoints / ".step-0000003.tmpab12cd" / ADAPTER_FILE).write_bytes(b"half")
    (checkpoints / ".step-0000004.x7y8z9").mkdir()  # the name older versions used
    (checkpoints / ".latest.tmp4242").write_text("step-0000003\n")
    assert cli.main(train_argv(workspace, run, "--resume")) == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "latest",
        "step-0000001",
        "step-0000002",
    ]


# --- checkpoint pruning and leftovers ----------------------------------------------------


def _optimizer() -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer, object]:
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {"weight": weight}, optimizer, scheduler


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_an_error_not_keep_everything(tmp_path, keep):
    adapter, optimizer, scheduler = _optimizer()
    with pytest.raises(LatentQAError, match="keep_checkpoints must be at least 1"):
        save_checkpoint(tmp_path, TrainerState(1, "f"), adapter, optimizer, scheduler, keep)
    assert not list(tmp_path.iterdir())


def test_pruning_keeps_the_newest_and_removes_leftovers(tmp_path):
    adapter, optimizer, scheduler = _optimizer()
    (tmp_path / ".step-0000002.tmpdead00").mkdir()
    (tmp_path / ".latest.tmp999").write_text("x")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, TrainerState(step, "f"), adapter, optimizer, scheduler, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-0000003"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step-0000003"
    for step in (4, 5, 6):
        save_checkpoint(tmp_path, TrainerState(step, "f"), adapter, optimizer, scheduler, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-0000005", "step-0000006"]


def test_a_bad_latest_pointer_counts_as_no_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "latest").write_bytes(b"\xff\xfe../../etc")
    assert latest_checkpoint(folder) is None
    (folder / "latest").write_text("../outside\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(folder) is None


# --- the activation cache key covers the target's weights --------------------------------


def test_activation_cache_key_changes_when_a_local_model_changes_in_place(tmp_path):
    folder = write_tiny_model(tmp_path / "model")
    source = ActivationSource(
        torch.nn.Linear(2, 2), [], pad_id=0, read_layers=[1], max_read_tokens=8
    )
    before = source.fingerprint(str(folder))
    assert source.fingerprint(str(folder)) == before  # stable while nothing changes
    weights = next(folder.glob("*.safetensors"))
    stat = weights.stat()
    # Same size, new contents: only the modification time tells (as after a re-save).
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source.fingerprint(str(folder)) != before
    # A hub id is keyed by its name (and the loaded config's revision).
    assert source.fingerprint("someone/some-model") != before


def test_cache_key_of_a_train_run_follows_the_weights(workspace, tmp_path):
    model, data = workspace
    local = Path(shutil.copytree(model, tmp_path / "model"))
    values = dict(
        data=str(data),
        target=str(local),
        steps=1,
        batch_size=4,
        dtype="float32",
        eval_every=0,
        save_every=0,
        eval_examples=8,
        cache_activations=True,
        cache_dir=str(tmp_path / "cache"),
    )
    train(config_from_dict(TrainConfig, {**values, "out": str(tmp_path / "a")}), progress=False)
    weights = next(local.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    train(config_from_dict(TrainConfig, {**values, "out": str(tmp_path / "b")}), progress=False)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
