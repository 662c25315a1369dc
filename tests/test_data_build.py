"""The built-in dataset: determinism, held-out split, format round trip, sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentqa.data import KINDS, build_dataset, load_latentqa
from latentqa.data.build import DEFAULT_CACHE_NAME, SPLITS, behavior_specs
from latentqa.data.catalog import GOALS, STYLES, TONES, third_person, with_article
from latentqa.data.sources import load_personas, load_user_prompts, persona_from_prompt
from latentqa.data.templates import CATEGORY_QUESTIONS, addressed, qa_pairs
from latentqa.errors import LatentQAError


def fake_generate(dialogs: list[list[dict[str, str]]]) -> list[str]:
    """A stand-in target model: echoes part of the last user turn."""
    assert all(dialog[-1]["role"] == "user" for dialog in dialogs)
    return [f"Sure. About '{dialog[-1]['content'][:20]}': here is my answer." for dialog in dialogs]


def failing_generate(dialogs: list[list[dict[str, str]]]) -> list[str]:
    raise AssertionError("every reply should have come from the cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("built")
    return out, build_dataset(out, seed=0, generate=fake_generate)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.json"))
    }


def test_all_four_kinds_and_thousands_of_examples(built: tuple[Path, dict]) -> None:
    out, summary = built
    train = load_latentqa(out / "train")
    assert train.kinds == list(KINDS)
    assert len(train) >= 5000
    assert summary["counts"]["train"]["total"]["examples"] == len(train)
    assert summary["completions"]["generated"] > 0
    for behavior in train.behaviors:
        if behavior.kind == "stimulus_completion":
            assert behavior.stimulus_model.startswith("Sure. About")


def test_loader_round_trips_the_counts(built: tuple[Path, dict]) -> None:
    out, summary = built
    meta = json.loads((out / "meta.json").read_text())
    for split in SPLITS:
        data = load_latentqa(out / split)
        assert data.counts() == {
            kind: row for kind, row in summary["counts"][split].items() if row["behaviors"]
        }
        assert meta["counts"][split] == summary["counts"][split]


def test_heldout_labels_never_in_train(built: tuple[Path, dict]) -> None:
    out, _ = built
    train, heldout = load_latentqa(out / "train"), load_latentqa(out / "heldout")
    assert heldout.labels
    assert set(train.labels).isdisjoint(heldout.labels)
    assert set(json.loads((out / "train" / "qa.json").read_text())).isdisjoint(
        json.loads((out / "heldout" / "qa.json").read_text())
    )
    meta = json.loads((out / "meta.json").read_text())["labels"]
    assert {label for label, info in meta.items() if info["split"] == "heldout"} == set(
        heldout.labels
    )
    # Every category is represented on both sides.
    for split, data in (("train", train), ("heldout", heldout)):
        assert {meta[label]["category"] for label in data.labels} == {
            "persona",
            "goal",
            "tone",
            "style",
        }, split


def test_heldout_user_prompts_are_unseen(built: tuple[Path, dict]) -> None:
    out, _ = built
    train, heldout = load_latentqa(out / "train"), load_latentqa(out / "heldout")
    seen = {b.stimulus_user for b in train.behaviors if b.stimulus_user}
    assert seen.isdisjoint(b.stimulus_user for b in heldout.behaviors if b.stimulus_user)


def test_meta_describes_every_label(built: tuple[Path, dict]) -> None:
    out, _ = built
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["version"]
    labels = meta["labels"]
    assert len(labels) == len(behavior_specs())
    for info in labels.values():
        assert info["category"] in {"persona", "goal", "tone", "style"}
        assert info["split"] in SPLITS
        assert 0 < len(info["description"]) <= 80
    assert meta["questions"]["generic"]


def test_same_question_same_answer_template_within_category(built: tuple[Path, dict]) -> None:
    out, _ = built
    meta = json.loads((out / "meta.json").read_text())["labels"]
    qa = json.loads((out / "train" / "qa.json").read_text())
    by_category: dict[str, list[list[str]]] = {}
    for label, pairs in qa.items():
        by_category.setdefault(meta[label]["category"], []).append([q for q, _ in pairs])
        # Each answer names its own label's behaviour, not a different one.
        assert all(a.strip() for _, a in pairs)
    for question_lists in by_category.values():
        assert all(questions == question_lists[0] for questions in question_lists)
    generic = set(json.loads((out / "meta.json").read_text())["questions"]["generic"])
    assert all(generic <= {q for q, _ in pairs} for pairs in qa.values())


def test_deterministic_and_cached(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    again = tmp_path / "again"
    summary = build_dataset(
        again, seed=0, generate=failing_generate, cache_path=out / DEFAULT_CACHE_NAME
    )
    assert summary["completions"]["generated"] == 0
    assert _files(again) == _files(out)


def test_other_seed_changes_the_split(tmp_path: Path) -> None:
    a = build_dataset(tmp_path / "a", seed=1)
    b = build_dataset(tmp_path / "b", seed=2)
    assert a["labels"] == b["labels"]
    meta_a = json.loads((tmp_path / "a" / "meta.json").read_text())["labels"]
    meta_b = json.loads((tmp_path / "b" / "meta.json").read_text())["labels"]
    assert [i["split"] for i in meta_a.values()] != [i["split"] for i in meta_b.values()]


def test_without_generate_no_completions_and_stale_file_removed(tmp_path: Path) -> None:
    build_dataset(tmp_path, seed=0, generate=fake_generate, per_label={"system": 1})
    assert (tmp_path / "train" / "stimulus_completion.json").is_file()
    summary = build_dataset(tmp_path, seed=0)
    assert not (tmp_path / "train" / "stimulus_completion.json").exists()
    assert load_latentqa(tmp_path / "train").kinds == ["system", "control", "stimulus"]
    assert summary["counts"]["train"]["stimulus_completion"]["behaviors"] == 0


def test_no_heldout(tmp_path: Path) -> None:
    summary = build_dataset(tmp_path, heldout_fraction=0.0, per_label={"control": 1})
    assert summary["labels"]["heldout"] == 0
    assert summary["labels"]["train"] == len(behavior_specs())


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(LatentQAError):
        build_dataset(tmp_path, heldout_fraction=1.0)
    with pytest.raises(LatentQAError):
        build_dataset(tmp_path, per_label={"bogus": 1})
    with pytest.raises(LatentQAError):
        build_dataset(tmp_path, generate=lambda dialogs: ["only one"], per_label={"system": 0})


def test_max_personas(tmp_path: Path) -> None:
    specs = behavior_specs(max_personas=10)
    assert sum(spec.category == "persona" for spec in specs) == 10
    assert len(specs) == 10 + len(GOALS) + len(TONES) + len(STYLES)


def test_personas_are_short_and_clear() -> None:
    personas = load_personas()
    assert len(personas) >= 100
    descriptions = [description for description, _ in personas]
    assert len({d.lower() for d in descriptions}) == len(descriptions)
    for description, system in personas:
        assert description.split(" ", 1)[0] in {"a", "an"}
        assert len(description.split()) <= 5
        assert 0 < len(system) <= 400
        assert "${" not in system and "**" not in system


def test_persona_filter() -> None:
    assert persona_from_prompt(
        "I want you to act as a Stand-Up Comedian. Tell jokes. My first request is 'cats'."
    ) == ("a stand-up comedian", "I want you to act as a Stand-Up Comedian. Tell jokes.")
    assert persona_from_prompt("Act as an SEO Specialist. Help me.") == (
        "an SEO specialist",
        "Act as an SEO Specialist. Help me.",
    )
    assert persona_from_prompt("I want you to act as a linux terminal. Reply.") is None
    assert persona_from_prompt("Act as a ${role}. Do things.") is None
    assert persona_from_prompt("Write me a poem about the sea.") is None
    assert persona_from_prompt("Act as a chef. " + "Cook well. " * 200) is None


def test_user_prompts() -> None:
    prompts = load_user_prompts()
    assert len(prompts) >= 300
    assert len(set(prompts)) == len(prompts)


def test_catalog_sizes_and_grammar() -> None:
    assert len(GOALS) >= 40 and len(TONES) >= 40 and len(STYLES) >= 40
    assert third_person("reply in French") == "replies in French"
    assert third_person("answer briefly") == "answers briefly"
    assert third_person("use emoji") == "uses emoji"
    assert third_person("speak in riddles") == "speaks in riddles"
    assert with_article("anxious") == "an anxious"
    assert with_article("UI designer") == "a UI designer"
    assert with_article("IT architect") == "an IT architect"
    assert addressed("convince the user to call their family", "me") == (
        "convince me to call my family"
    )
    assert addressed("find out how old the user is", "you") == "find out how old you are"


def test_qa_answers_derive_from_description() -> None:
    for spec in behavior_specs(max_personas=5):
        pairs = qa_pairs(spec)
        assert len(pairs) == len(CATEGORY_QUESTIONS[spec.category]) + 4
        core = spec.slots.get("desc") or spec.slots.get("goal") or spec.slots.get("tone")
        core = core or spec.slots["style"]
        assert any(core.lower() in answer.lower() for _, answer in pairs)
        assert all("{" not in answer for _, answer in pairs)
