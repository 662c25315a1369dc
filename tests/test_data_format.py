"""The loader of the public LatentQA format: the real sample and every error case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentqa.data import KINDS, Behavior, LatentQADataset, load_latentqa
from latentqa.errors import LatentQAError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "latentqa-format-sample"


@pytest.fixture
def sample() -> Path:
    if not (SAMPLE / "qa.json").is_file():
        pytest.skip(f"the LatentQA format sample is not at {SAMPLE} (shared/ beside the repo)")
    return SAMPLE


def test_sample_loads_with_every_present_kind(sample: Path) -> None:
    data = load_latentqa(sample)
    files = [kind for kind in KINDS if (sample / f"{kind}.json").is_file()]
    assert data.kinds == files
    raw_qa = json.loads((sample / "qa.json").read_text())
    expected = 0
    for kind in files:
        for item in json.loads((sample / f"{kind}.json").read_text()):
            expected += len(raw_qa[item["label"]])
    assert len(data) == expected == len(data.examples())
    assert set(data.labels) <= set(raw_qa)
    assert set(data.qa) == set(data.labels)


def test_sample_dialogs_follow_the_readme(sample: Path) -> None:
    data = load_latentqa(sample)
    raw = {kind: json.loads((sample / f"{kind}.json").read_text()) for kind in data.kinds}
    by_kind = {kind: [b for b in data.behaviors if b.kind == kind] for kind in data.kinds}
    if "system" in raw:
        item, behavior = raw["system"][0], by_kind["system"][0]
        assert behavior.dialog() == [
            {"role": "system", "content": item["system"]},
            {"role": "user", "content": item["stimulus_user"]},
        ]
        assert behavior.n_masked_messages == 1
    if "control" in raw:
        item, behavior = raw["control"][0], by_kind["control"][0]
        assert behavior.dialog() == [{"role": "user", "content": item["control_user"]}]
        assert behavior.n_masked_messages == 0
    if "stimulus" in raw:
        item, behavior = raw["stimulus"][0], by_kind["stimulus"][0]
        assert behavior.dialog() == [
            {"role": "user", "content": item["control_user"]},
            {"role": "assistant", "content": item["control_model"]},
            {"role": "user", "content": item["stimulus_user"]},
        ]
        assert behavior.n_masked_messages == 2
        # The reasoning text is kept but never enters the dialog.
        assert behavior.control_thought == item.get("control_thought", "")
        assert all(behavior.control_thought not in m["content"] for m in behavior.dialog())


def test_sample_examples_pair_each_behavior_with_its_label_qa(sample: Path) -> None:
    data = load_latentqa(sample)
    first = data.behaviors[0]
    examples = [e for e in data.examples() if e.behavior == first]
    assert [(e.question, e.answer) for e in examples] == list(data.qa[first.label])


def test_sample_kind_filter_and_split(sample: Path) -> None:
    kind = load_latentqa(sample).kinds[0]
    only = load_latentqa(sample, kinds=[kind])
    assert only.kinds == [kind]
    data = load_latentqa(sample)
    train, heldout = data.split_by_label(0.25, seed=1)
    assert set(train.labels).isdisjoint(heldout.labels)
    assert set(train.labels) | set(heldout.labels) == set(data.labels)
    assert len(train) + len(heldout) == len(data)
    assert heldout.labels
    again_train, _ = data.split_by_label(0.25, seed=1)
    assert again_train.labels == train.labels


def test_stimulus_completion_dialog_and_thoughts_ignored() -> None:
    behavior = Behavior(
        "x",
        "stimulus_completion",
        control_user="Be a pirate.",
        control_model="Arr.",
        stimulus_user="Hi",
        stimulus_model="Ahoy!",
        stimulus_thought="thinking...",
    )
    assert [m["role"] for m in behavior.dialog()] == ["user", "assistant", "user", "assistant"]
    assert behavior.dialog()[-1]["content"] == "Ahoy!"
    assert behavior.n_masked_messages == 2
    assert behavior.to_json()["stimulus_thought"] == "thinking..."
    with pytest.raises(LatentQAError):
        Behavior("x", "nonsense")


def _write(folder: Path, name: str, content: object | str) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / name).write_text(text, encoding="utf-8")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    _write(tmp_path, "control.json", [{"label": "a", "control_user": "Be sarcastic."}])
    _write(
        tmp_path,
        "system.json",
        [{"label": "b", "system": "You are a pirate.", "stimulus_user": "Hi", "extra": 3}],
    )
    _write(tmp_path, "qa.json", {"a": [["Tone?", "Sarcastic."]], "b": [["Who?", "A pirate."]]})
    return tmp_path


def test_small_folder_loads(good: Path) -> None:
    data = load_latentqa(good)
    assert isinstance(data, LatentQADataset)
    assert data.kinds == ["system", "control"]
    assert len(data) == 2
    assert data.counts()["total"] == {"behaviors": 2, "examples": 2, "labels": 2}


def _error(folder: Path, **kwargs: object) -> str:
    with pytest.raises(LatentQAError) as caught:
        load_latentqa(folder, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_error_folder_missing(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope")


def test_error_no_behavior_files(tmp_path: Path) -> None:
    _write(tmp_path, "qa.json", {})
    assert "no behaviour files" in _error(tmp_path)


def test_error_qa_missing(good: Path) -> None:
    (good / "qa.json").unlink()
    assert "qa.json" in _error(good)


def test_error_malformed_json_names_file_and_line(good: Path) -> None:
    _write(good, "control.json", '[\n  {"label": "a",\n  "control_user": }\n]')
    message = _error(good)
    assert "control.json" in message and "not valid JSON" in message and "line 3" in message


def test_error_wrong_top_level_types(good: Path) -> None:
    _write(good, "control.json", {"label": "a"})
    assert "control.json" in _error(good) and "list" in _error(good)
    _write(good, "control.json", [{"label": "a", "control_user": "x"}])
    _write(good, "qa.json", [["q", "a"]])
    assert "qa.json" in _error(good) and "object" in _error(good)


def test_error_item_not_an_object(good: Path) -> None:
    _write(good, "control.json", ["just text"])
    assert "item 0" in _error(good)


def test_error_item_without_label(good: Path) -> None:
    _write(good, "control.json", [{"control_user": "x"}])
    message = _error(good)
    assert "control.json" in message and "item 0" in message and "label" in message


def test_error_non_string_field(good: Path) -> None:
    _write(good, "control.json", [{"label": "a", "control_user": ["x"]}])
    message = _error(good)
    assert "control_user" in message and "string" in message and "'a'" in message


def test_error_empty_required_field(good: Path) -> None:
    _write(good, "system.json", [{"label": "b", "system": "You are a pirate."}])
    message = _error(good)
    assert "system.json" in message and "stimulus_user" in message


def test_error_bad_qa_pairs(good: Path) -> None:
    _write(good, "qa.json", {"a": [["only a question"]], "b": [["q", "a"]]})
    assert "'a'" in _error(good) and "[question, answer]" in _error(good)
    _write(good, "qa.json", {"a": "text", "b": [["q", "a"]]})
    assert "'a'" in _error(good)


def test_error_labels_without_qa_are_named(good: Path) -> None:
    items = [{"label": f"lab{i}", "control_user": "x"} for i in range(8)]
    _write(good, "control.json", items)
    message = _error(good)
    assert "no QA pairs" in message and "'lab0'" in message and "3 more" in message
    _write(good, "qa.json", {"b": [["q", "a"]], **{f"lab{i}": [] for i in range(8)}})
    assert "no QA pairs" in _error(good)


def test_error_empty_dataset(good: Path) -> None:
    _write(good, "control.json", [])
    _write(good, "system.json", [])
    assert "empty dataset" in _error(good)


def test_error_kinds_argument(good: Path) -> None:
    assert "unknown" in _error(good, kinds=["bogus"])
    assert "stimulus.json" in _error(good, kinds=["stimulus"])
    assert load_latentqa(good, kinds=["control"]).kinds == ["control"]


def test_error_split_fraction(good: Path) -> None:
    with pytest.raises(LatentQAError):
        load_latentqa(good).split_by_label(1.0)
