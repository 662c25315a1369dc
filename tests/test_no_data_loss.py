"""Issue 12, item 1: no command overwrites or empties a folder it did not write.

`latentqa train --out` refuses a non-empty folder that is not its own resumable run
unless --resume or --force, and replaces the final adapter and latentqa.json whole;
`latentqa data build --out` (both tasks) refuses a foreign folder unless --force,
checks every input first and builds in a temporary sibling renamed into place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lit_fixtures import one_line_error, snapshot, train_argv, write_tiny_data, write_tiny_model

from latentqa import cli
from latentqa.data import build as build_module
from latentqa.data.build import build_dataset
from latentqa.data.format import load_latentqa
from latentqa.data.relations import Fact, build_relations_dataset
from latentqa.errors import LatentQAError
from latentqa.train.config import TrainConfig
from latentqa.train.trainer import train
from latentqa.typed_config import config_from_dict


def never_load(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model loaded before --out was checked")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("noloss")
    return write_tiny_model(root / "model"), write_tiny_data(root / "data")


def finished_decoder(folder: Path) -> Path:
    """A decoder folder as a finished run leaves it once its checkpoints are deleted."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": i, "kind": "train", "loss": 1.0}) for i in range(1, 805)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "adapter_model.safetensors").write_bytes(b"the user's trained adapter")
    (folder / "latentqa.json").write_text('{"format": 1}\n')
    return folder


# --- latentqa train -------------------------------------------------------------------


def test_train_refuses_a_finished_decoder_and_leaves_it_whole(
    workspace, tmp_path, capsys, monkeypatch
):
    out = finished_decoder(tmp_path / "decoder")
    before = snapshot(out)
    monkeypatch.setattr("latentqa.train.trainer.load_model", never_load)  # refused before it
    one_line_error(capsys, cli.main(train_argv(workspace, out)), r"not empty.*--force")
    assert snapshot(out) == before  # the 804 metric lines and the adapter are still there


def test_train_refuses_a_folder_of_other_files(workspace, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = snapshot(out)
    one_line_error(capsys, cli.main(train_argv(workspace, out)), r"notes\.txt")
    assert snapshot(out) == before


def test_resume_and_force_together_are_refused(workspace, tmp_path, capsys):
    out = finished_decoder(tmp_path / "decoder")
    before = snapshot(out)
    code = cli.main(train_argv(workspace, out, "--resume", "--force"))
    one_line_error(capsys, code, r"--resume")
    model, data = workspace
    values = dict(data=str(data), out=str(out), target=str(model))
    with pytest.raises(LatentQAError, match="pass one"):
        train(config_from_dict(TrainConfig, values), resume=True, force=True, progress=False)
    assert snapshot(out) == before


def test_force_starts_over_and_keeps_other_files(workspace, tmp_path, capsys):
    out = finished_decoder(tmp_path / "decoder")
    (out / "notes.txt").write_text("my notes")
    stale = out / "checkpoints" / "step-0000300"
    stale.mkdir(parents=True)
    assert cli.main(train_argv(workspace, out, "--force")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert (out / "adapter_model.safetensors").read_bytes() != b"the user's trained adapter"
    assert json.loads((out / "latentqa.json").read_text())["read_layers"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert not stale.exists()  # the replaced run's checkpoints do not mix with the new ones
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        "step-0000001",
        "step-0000002",
    ]
    assert not list(out.glob(".*"))


def test_a_folder_with_only_an_activation_cache_may_be_used(workspace, tmp_path):
    model, data = workspace
    out = tmp_path / "run"
    (out / "activation-cache").mkdir(parents=True)
    values = dict(
        data=str(data),
        out=str(out),
        target=str(model),
        steps=1,
        batch_size=4,
        dtype="float32",
        eval_every=0,
        save_every=0,
        eval_examples=8,
    )
    assert train(config_from_dict(TrainConfig, values), progress=False).steps == 1


def test_final_adapter_is_replaced_whole(workspace, tmp_path, monkeypatch):
    model, data = workspace
    out = tmp_path / "run"
    values = dict(
        data=str(data),
        out=str(out),
        target=str(model),
        steps=2,
        batch_size=4,
        dtype="float32",
        eval_every=0,
        save_every=0,
        eval_examples=8,
    )
    train(config_from_dict(TrainConfig, values), progress=False)
    before = {
        name: (out / name).read_bytes() for name in ("adapter_model.safetensors", "latentqa.json")
    }

    def fail(self, folder):
        raise OSError("disk full")

    # The spec is written after the adapter: a failure there must not leave a new
    # adapter beside the old latentqa.json.
    monkeypatch.setattr("latentqa.decoder.folder.DecoderSpec.save", fail)
    more = config_from_dict(TrainConfig, {**values, "steps": 4})
    with pytest.raises(OSError, match="disk full"):
        train(more, resume=True, progress=False)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".decoder.tmp*"))


# --- latentqa data build ----------------------------------------------------------------


SMALL = dict(per_label={"system": 0, "control": 1, "stimulus": 0}, max_personas=3)


def users_dataset(folder: Path) -> Path:
    """A folder holding the user's own dataset (no meta.json of a build)."""
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "system.json").write_text('[{"label": "mine", "system": "Be me."}]')
    (folder / "train" / "qa.json").write_text('{"mine": [["Who?", "Me."]]}')
    return folder


def test_data_build_refuses_a_foreign_folder(tmp_path, capsys, monkeypatch):
    out = users_dataset(tmp_path / "data")
    before = snapshot(out)
    code = cli.main(["data", "build", "--out", str(out), "--no-completions"])
    one_line_error(capsys, code, r"not empty.*--force")
    monkeypatch.setattr("latentqa.models.load_model", never_load)
    for task in ("builtin", "relations"):
        code = cli.main(["data", "build", "--task", task, "--out", str(out)])
        one_line_error(capsys, code, r"not empty.*--force")
    assert snapshot(out) == before
    with pytest.raises(LatentQAError, match="--force"):
        build_dataset(out, **SMALL)
    assert snapshot(out) == before


def test_data_build_force_replaces_only_its_entries(tmp_path):
    out = users_dataset(tmp_path / "data")
    (out / "notes.txt").write_text("my notes")
    build_dataset(out, **SMALL, force=True)
    assert (out / "notes.txt").read_text() == "my notes"
    assert not (out / "train" / "system.json").exists()  # train/ replaced as a whole
    assert load_latentqa(out / "train").kinds == ["control"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary sibling


def test_a_failed_rebuild_leaves_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "data"
    build_dataset(out, **SMALL)
    (out / "completions-cache.jsonl").write_text("")
    before = snapshot(out)
    real_dump = build_module._dump

    def dump(path: Path, data: object) -> None:
        if path.name == "meta.json":
            raise OSError("disk full")
        real_dump(path, data)

    monkeypatch.setattr(build_module, "_dump", dump)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(out, **SMALL, seed=1)
    assert snapshot(out) == before
    monkeypatch.setattr(build_module, "_dump", real_dump)
    build_dataset(out, **SMALL, seed=1)  # own folder: replaced
    assert (out / "completions-cache.jsonl").exists()  # the reply cache is carried over
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_leftovers_of_a_killed_build_are_removed_or_put_back(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    out = tmp_path / "data"
    build_dataset(out, **SMALL)
    meta = (out / "meta.json").read_bytes()
    # Killed between the two renames of a swap: the old folder sits aside, none in place.
    out.rename(tmp_path / f".data.old-{pid}-0123abcd")
    (tmp_path / f".data.tmp-{pid}-89abcdef").mkdir()
    with pytest.raises(LatentQAError):
        build_dataset(out, heldout_fraction=2.0)  # a bad option: nothing happens
    build_dataset(out, **SMALL, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert (out / "meta.json").read_bytes() != meta  # rebuilt over the restored folder


# --- latentqa data build --task relations -----------------------------------------------

FACTS = [
    Fact(subject, relation, answer, (answer,))
    for subject, capital, region in (
        ("Germany", "Berlin", "Europe"),
        ("Japan", "Tokyo", "Asia"),
        ("France", "Paris", "Europe"),
        ("Kenya", "Nairobi", "Africa"),
        ("Peru", "Lima", "Americas"),
        ("Chile", "Santiago", "Americas"),
    )
    for relation, answer in (("capital", capital), ("region", region))
]
OPTIONS = dict(
    facts=FACTS, relations=["capital", "region"], heldout_relation="region", heldout_fraction=0.4
)


def test_relations_with_data_is_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "joint"
    build_relations_dataset(out, **OPTIONS)
    half = write_tiny_data(tmp_path / "personas")
    (half / "heldout" / "qa.json").unlink()  # train/ merges, heldout/ cannot
    before = snapshot(out)
    with pytest.raises(LatentQAError, match=r"heldout/qa\.json"):
        build_relations_dataset(out, with_data=half, **OPTIONS)
    assert snapshot(out) == before  # not half a joint dataset
    argv = ["data", "build", "--task", "relations", "--no-filter", "--out", str(out)]
    code = cli.main([*argv, "--with-data", str(tmp_path / "missing")])
    one_line_error(capsys, code, r"--with-data")
    assert snapshot(out) == before


def test_relations_build_refuses_a_foreign_folder(tmp_path, capsys):
    out = users_dataset(tmp_path / "data")
    before = snapshot(out)
    with pytest.raises(LatentQAError, match="--force"):
        build_relations_dataset(out, **OPTIONS)
    code = cli.main(["data", "build", "--task", "relations", "--no-filter", "--out", str(out)])
    one_line_error(capsys, code, r"not empty.*--force")
    assert snapshot(out) == before
    build_relations_dataset(out, force=True, **OPTIONS)
    assert load_latentqa(out / "train").kinds == ["control"]
