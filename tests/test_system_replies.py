"""``latentqa data replies``: system behaviours get the target's own reply (set B's form)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lit_fixtures import write_tiny_model

from latentqa.chat import encode_dialog
from latentqa.cli import main
from latentqa.data.format import Behavior, load_latentqa
from latentqa.data.system_replies import add_replies
from latentqa.errors import LatentQAError

ITEMS = [
    {
        "label": f"persona-{name}",
        "system": f"You are {name}. Stay in character.",
        "stimulus_user": f"Hello, {name}! What should I cook tonight?",
    }
    for name in ("a pirate", "a chef", "a poet", "a robot", "a knight")
]


def _folder(root: Path, qa: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "system.json").write_text(json.dumps(ITEMS))
    if qa:
        pairs = {i["label"]: [["Who is it?", i["system"]]] for i in ITEMS}
        (root / "qa.json").write_text(json.dumps(pairs))
    return root


class Counting:
    """A deterministic generator that counts the dialogs it answers."""

    def __init__(self) -> None:
        self.seen: list[list[dict[str, str]]] = []

    def __call__(self, dialogs):
        self.seen += dialogs
        # The robot says nothing: an empty reply.
        return [
            "" if "robot" in d[0]["content"] else f"Reply to: {d[-1]['content']}" for d in dialogs
        ]


def test_a_system_behaviour_with_a_reply_reads_it_after_the_user_turn():
    plain = Behavior("persona-x", "system", system="Be x.", stimulus_user="Hi")
    assert [m["role"] for m in plain.dialog()] == ["system", "user"]
    answered = Behavior(
        "persona-x", "system", system="Be x.", stimulus_user="Hi", stimulus_model="Ahoy"
    )
    assert answered.dialog()[-1] == {"role": "assistant", "content": "Ahoy"}
    assert answered.n_masked_messages == plain.n_masked_messages == 1  # the prompt stays hidden


def test_add_replies_writes_each_reply_and_continues_from_its_cache(tmp_path):
    data, out = _folder(tmp_path / "data"), tmp_path / "out"
    generate = Counting()
    summary = add_replies(data, out, generate, "fake|48")
    assert summary == {"behaviors": 5, "generated": 5, "cached": 0}
    # The target answered the hidden prompt and the user turn, nothing else.
    assert [[m["role"] for m in d] for d in generate.seen] == [["system", "user"]] * 5
    behaviors = load_latentqa(out, ["system"]).behaviors
    for item, behavior in zip(ITEMS, behaviors, strict=True):
        assert behavior.system == item["system"]
        dialog = behavior.dialog()
        assert dialog[-1]["role"] == "assistant"
        # An empty reply keeps the assistant turn: "..."
        expected = "..." if "robot" in item["system"] else f"Reply to: {item['stimulus_user']}"
        assert dialog[-1]["content"] == expected
    assert json.loads((out / "qa.json").read_text()) == json.loads((data / "qa.json").read_text())
    again = Counting()
    assert add_replies(data, out, again, "fake|48") == {"behaviors": 5, "generated": 0, "cached": 5}
    assert again.seen == []
    # Another generator identity is another reply.
    assert add_replies(data, out, Counting(), "fake|16")["generated"] == 5


def test_limit_keeps_a_seeded_sample_in_the_folders_order(tmp_path):
    data = _folder(tmp_path / "data", qa=False)
    first = add_replies(data, tmp_path / "a", Counting(), "g", limit=3, seed=1)
    same = add_replies(data, tmp_path / "b", Counting(), "g", limit=3, seed=1)
    assert first["behaviors"] == same["behaviors"] == 3
    labels = [b.label for b in load_latentqa(tmp_path / "a", require_qa=False).behaviors]
    assert labels == [b.label for b in load_latentqa(tmp_path / "b", require_qa=False).behaviors]
    order = [i["label"] for i in ITEMS]
    assert labels == sorted(labels, key=order.index)
    assert not (tmp_path / "a" / "qa.json").exists()


def test_bad_folders_and_limits_are_clear_errors(tmp_path):
    data = _folder(tmp_path / "data")
    with pytest.raises(LatentQAError, match=r"no system\.json"):
        add_replies(tmp_path, tmp_path / "out", Counting(), "g")
    with pytest.raises(LatentQAError, match="another folder"):
        add_replies(data, data, Counting(), "g")
    with pytest.raises(LatentQAError, match="--limit must be positive"):
        add_replies(data, tmp_path / "out", Counting(), "g", limit=0)


def test_cli_generates_replies_with_a_model(tmp_path, capsys):
    model = write_tiny_model(tmp_path / "model")
    data, out = _folder(tmp_path / "data"), tmp_path / "out"
    argv = ["data", "replies", "--data", str(data), "--out", str(out), "--target", str(model)]
    assert main([*argv, "--max-new-tokens", "3", "--limit", "2", "--device", "cpu"]) == 0
    assert "2 behaviours, replies 2 generated, 0 from the cache" in capsys.readouterr().out
    behaviors = load_latentqa(out).behaviors
    assert len(behaviors) == 2 and all(b.stimulus_model for b in behaviors)
    assert main(["data", "replies", "--data", str(tmp_path), "--out", str(out)]) == 2
    assert "no system.json" in capsys.readouterr().err


def test_the_reply_is_read_and_the_prompt_is_not(tiny):
    _, tokenizer = tiny
    behavior = Behavior(
        "persona-x", "system", system="Be a sailor.", stimulus_user="Hi", stimulus_model="Ahoy"
    )
    encoded = encode_dialog(tokenizer, behavior.dialog(), behavior.n_masked_messages)
    read = tokenizer.decode(encoded.input_ids[encoded.read_start :])
    assert "Ahoy" in read and "Hi" in read and "sailor" not in read
