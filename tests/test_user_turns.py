"""``latentqa data user-turns``: hidden prompts re-paired with ordinary user turns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentqa.cli import main
from latentqa.data.format import load_latentqa
from latentqa.data.user_turns import swap_user_turns
from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt_items import SHIPPED_DATA

PROMPTS = [
    {
        "label": f"goal-{topic}",
        "system": f"Steer every answer towards {topic}.",
        "stimulus_user": f"Tell me about {topic}.",  # written for its prompt: it leaks
        "stimulus_model": f"Here is something about {topic}.",
    }
    for topic in ("tea", "chess", "gardening", "jazz")
]
POOL = [
    {"label": f"tone-{i}", "system": f"Tone {i}.", "stimulus_user": f"Ordinary question {i}?"}
    for i in range(6)
] + [{"label": "tone-0", "system": "Tone 0 again.", "stimulus_user": "Ordinary question 0?"}]


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    data, pool = tmp_path / "release", tmp_path / "train"
    for folder, items in ((data, PROMPTS), (pool, POOL)):
        folder.mkdir()
        (folder / "system.json").write_text(json.dumps(items))
    (data / "qa.json").write_text(json.dumps({p["label"]: [["Why?", "Because."]] for p in PROMPTS}))
    return data, pool


def test_each_prompt_keeps_its_label_and_takes_distinct_pool_turns(tmp_path):
    data, pool = _folders(tmp_path)
    done = swap_user_turns(data, pool, tmp_path / "out", per_behavior=3, seed=5)
    assert done == {"behaviors": 12, "user_turns": 6}  # the repeated pool turn counts once
    written = load_latentqa(tmp_path / "out", ["system"]).behaviors  # qa.json was copied
    pool_turns = {item["stimulus_user"] for item in POOL}
    for item in PROMPTS:
        mine = [b for b in written if b.label == item["label"]]
        assert [b.system for b in mine] == [item["system"]] * 3
        turns = [b.stimulus_user for b in mine]
        assert len(set(turns)) == 3 and set(turns) <= pool_turns
        # The reply answered the old user turn, so it is not carried over.
        assert all(b.stimulus_model == "" for b in mine)


def test_the_draws_follow_the_seed(tmp_path):
    data, pool = _folders(tmp_path)
    turns = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        swap_user_turns(data, pool, tmp_path / name, per_behavior=2, seed=seed)
        items = json.loads((tmp_path / name / "system.json").read_text())
        turns[name] = [item["stimulus_user"] for item in items]
    assert turns["a"] == turns["b"]
    assert turns["a"] != turns["c"]


def test_bad_requests_are_user_errors(tmp_path):
    data, pool = _folders(tmp_path)
    with pytest.raises(LatentQAError, match="distinct user turns"):
        swap_user_turns(data, pool, tmp_path / "out", per_behavior=7)
    with pytest.raises(LatentQAError, match="at least 1"):
        swap_user_turns(data, pool, tmp_path / "out", per_behavior=0)
    with pytest.raises(LatentQAError, match="another folder"):
        swap_user_turns(data, pool, data)
    with pytest.raises(LatentQAError, match=r"no system\.json"):
        swap_user_turns(data, tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the checks pass


def test_a_pool_with_the_evaluations_user_turns_is_refused(tmp_path):
    data, pool = _folders(tmp_path)
    shipped = load_latentqa(SHIPPED_DATA, ["system"]).behaviors
    leaky = [*POOL, {"label": "tone-x", "system": "X.", "stimulus_user": shipped[0].stimulus_user}]
    (pool / "system.json").write_text(json.dumps(leaky))
    with pytest.raises(LatentQAError, match="held-out set"):
        swap_user_turns(data, pool, tmp_path / "out")


def test_cli_writes_the_folder(tmp_path, capsys):
    data, pool = _folders(tmp_path)
    out = tmp_path / "out"
    argv = ["data", "user-turns", "--data", str(data), "--users-from", str(pool), "--out"]
    assert main([*argv, str(out), "--per-behavior", "2"]) == 0
    assert "8 behaviours (6 user turns)" in capsys.readouterr().out
    assert len(json.loads((out / "system.json").read_text())) == 8
    assert main([*argv, str(data)]) == 2  # the input folder is never overwritten
    assert "another folder" in capsys.readouterr().err
