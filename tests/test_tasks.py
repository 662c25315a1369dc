"""Training tasks that force reading: mix parsing, balance, options, context windows."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lit_fixtures import write_tiny_data, write_tiny_model
from tiny import make_tokenizer

from latentqa.data.format import load_latentqa
from latentqa.decoder.folder import DecoderSpec
from latentqa.decoder.inputs import flatten_reads
from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt_items import QUESTION
from latentqa.models import load_model
from latentqa.questions import (
    INSTRUCTION_QUESTION,
    NO,
    RECONSTRUCT_QUESTION,
    YES,
    choice_question,
    yes_no_question,
)
from latentqa.schedule import epoch_permutation
from latentqa.train.config import TrainConfig
from latentqa.train.prepare import prepare_data
from latentqa.train.tasks import (
    CONTEXT_TOKENS,
    CONTEXT_WINDOW,
    N_CHOICES,
    TASKS,
    Fact,
    TaskSampler,
    derived_qa,
    parse_task_mix,
)
from latentqa.train.trainer import train
from latentqa.typed_config import config_from_dict

LABELS = [f"persona-{name}" for name in ("pirate", "chef", "spy", "judge", "poet", "nurse")]


def facts() -> list[Fact]:
    out = []
    for i, label in enumerate(LABELS):
        name = label.split("-")[1]
        out.append(Fact(i, label, "Who is it?", f"A {name}."))
        out.append(Fact(i, label, RECONSTRUCT_QUESTION, f"You are a {name}, always."))
    return out


def sampler(seed: int = 0, texts=("The quick brown fox jumps over the lazy dog again.",)):
    hidden = [(i, f"You are a {label}.") for i, label in enumerate(LABELS)]
    return TaskSampler(facts(), hidden, list(texts), make_tokenizer(), seed)


def test_parse_task_mix_normalises_and_rejects_unknown_tasks():
    assert parse_task_mix("open=1,yes_no=3") == {"open": 0.25, "yes_no": 0.75}
    assert parse_task_mix({"context": 2}) == {"context": 1.0}
    assert parse_task_mix("choice") == {"choice": 1.0}
    for bad in ("bogus=1", "open=x", "open=0", "open=-1", "open=inf"):
        with pytest.raises(LatentQAError):
            parse_task_mix(bad)
    with pytest.raises(LatentQAError, match="unknown training task"):
        TrainConfig(data="d", out="o", task_mix="open=1,telepathy=1")


def test_derived_qa_from_release_labels():
    pairs = dict(derived_qa("goal-metacognition-problem-solving"))
    assert "A goal to pursue." in pairs.values()
    assert "Metacognition problem solving." in pairs.values()
    assert derived_qa("sqa-eval-o1-scenario-132") == []


def test_a_release_prompt_answers_the_evaluation_question_in_the_built_in_form():
    prompt = "  Please always answer like a pirate. Never break character.  "
    pairs = derived_qa("persona-pirate", prompt)
    assert (INSTRUCTION_QUESTION, "It was instructed to always answer like a pirate.") in pairs
    assert INSTRUCTION_QUESTION == QUESTION  # the question eval system-prompt asks
    assert all(q != INSTRUCTION_QUESTION for q, _ in derived_qa("persona-pirate", " "))
    # A prompt the rules cannot rewrite does not answer it in another style.
    declared = derived_qa("persona-pirate", "You are a pirate.")
    assert all(q != INSTRUCTION_QUESTION for q, _ in declared)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_yes_no_is_balanced_and_its_no_answers_are_other_labels(seed):
    examples = sampler(seed).sample({"yes_no": 1.0}, 200, context_offset=100)
    answers = Counter(e.answer for e in examples)
    assert set(answers) == {YES, NO}
    assert 0.35 < answers[YES] / 200 < 0.65  # 50/50 in expectation
    truth = {(f.dialog, f.question): f.answer for f in facts()}
    for e in examples:
        question = next(q for (d, q) in truth if d == e.dialog and e.question.startswith(q))
        candidate = e.question.split('"')[1]
        assert e.question == yes_no_question(question, candidate)
        assert (candidate == truth[e.dialog, question]) == (e.answer == YES)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), negatives=st.sampled_from(["read", "both"]))
def test_read_negatives_are_pairs_that_only_the_read_tells_apart(seed, negatives):
    s = TaskSampler(facts(), [], [], make_tokenizer(), seed, negatives=negatives)
    examples = s.sample({"yes_no": 1.0}, 200, context_offset=100)
    truth = {(f.dialog, f.question): f.answer for f in facts()}
    label = {f.dialog: f.label for f in facts()}
    pairs: dict[int, list] = {}
    for e in examples:
        question = next(q for (_, q) in truth if e.question.startswith(q + "\n"))
        candidate = e.question.split('"')[1]
        # The answer is yes exactly when the read dialog is the candidate's own.
        assert (candidate == truth[e.dialog, question]) == (e.answer == YES)
        if e.pair >= 0:
            pairs.setdefault(e.pair, []).append(e)
    complete = [p for p in pairs.values() if len(p) == 2]
    assert len(complete) >= len(pairs) - 1  # only the last draw may be cut off
    for yes, no in complete:
        assert (yes.answer, no.answer) == (YES, NO) and yes.question == no.question
        assert label[yes.dialog] != label[no.dialog]
    paired = sum(len(p) for p in pairs.values())
    assert paired == 200 if negatives == "read" else 0 < paired < 200
    # The example order keeps each pair next to each other.
    groups = [e.dialog if e.pair < 0 else -1 - e.pair for e in examples]
    order = epoch_permutation(len(examples), seed, 0, dialogs=groups, share=4)
    where = {i: k for k, i in enumerate(order)}
    for i, e in enumerate(examples[:-1]):
        if e.pair >= 0 and examples[i + 1].pair == e.pair:
            assert abs(where[i] - where[i + 1]) == 1


@pytest.mark.parametrize("negatives", ["answer", "read"])
def test_distractors_come_from_the_facts_own_folder(negatives):
    # Two folders answering the same question in different styles: a "no" drawn across
    # folders could be told apart by style alone.
    two = [Fact(i, f"a{i}", "Who?", f"Style A {i}.", 0) for i in range(6)]
    two += [Fact(10 + i, f"b{i}", "Who?", f"style b {i}", 1) for i in range(6)]
    s = TaskSampler(two, [], [], make_tokenizer(), 0, negatives=negatives)
    folder = {f.dialog: f.source for f in two} | {f.answer: f.source for f in two}
    for e in s.sample({"yes_no": 1.0, "choice": 1.0}, 300, context_offset=100):
        options = [line[2:] for line in e.question.splitlines() if line.startswith("- ")]
        candidates = options or [e.question.split('"')[1]]
        assert {folder[c] for c in candidates} == {folder[e.dialog]}


@pytest.mark.parametrize("negatives", ["answer", "both", "read"])
def test_a_label_in_two_folders_draws_distractors_from_each(negatives):
    # A replies folder (`latentqa data replies`) holds its source folder's labels with
    # other dialogs: each folder draws from the labels it holds, and every draw works.
    base = [Fact(i, f"a{i}", "Who?", f"Style A {i}.", 0) for i in range(6)]
    replies = [Fact(10 + i, f"a{i}", "Who?", f"Style A {i}.", 1) for i in range(3)]
    other = [Fact(20 + i, f"b{i}", "Who?", f"style b {i}", 2) for i in range(6)]
    s = TaskSampler(base + replies + other, [], [], make_tokenizer(), 0, negatives=negatives)
    folder_of = {f.dialog: f.source for f in base + replies + other}
    held = {src: {f.answer for f in base + replies + other if f.source == src} for src in (0, 1, 2)}
    drawn = s.sample({"yes_no": 1.0}, 400, context_offset=100)
    assert {folder_of[e.dialog] for e in drawn} == {0, 1, 2}
    for e in drawn:
        candidate = e.question.split('"')[1]
        if e.pair < 0:  # an answer negative: the candidate is of the read's own folder
            assert candidate in held[folder_of[e.dialog]]


def test_task_questions_restrict_open_yes_no_and_choice():
    only = TaskSampler(facts(), [], [], make_tokenizer(), 0, questions=[RECONSTRUCT_QUESTION])
    for e in only.sample({"open": 1.0, "yes_no": 1.0}, 100, context_offset=100):
        assert e.question.startswith(RECONSTRUCT_QUESTION)
    with pytest.raises(LatentQAError, match=r"no training QA pair asks 'Why\?'"):
        TaskSampler(facts(), [], [], make_tokenizer(), 0, questions=["Why?"])
    with pytest.raises(LatentQAError, match="negatives"):
        TaskSampler(facts(), [], [], make_tokenizer(), 0, negatives="text")
    with pytest.raises(LatentQAError, match="task-questions"):
        TrainConfig(data="d", out="o", task_questions=[" "])
    with pytest.raises(LatentQAError, match="share-reads"):
        TrainConfig(data="d", out="o", yes_no_negatives="read", share_reads=1)


def test_choice_lists_gold_among_distinct_options_of_the_same_question():
    examples = sampler().sample({"choice": 1.0}, 50, context_offset=100)
    truth = {(f.dialog, f.question): f.answer for f in facts()}
    for e in examples:
        question = e.question.splitlines()[0]
        options = [line[2:] for line in e.question.splitlines() if line.startswith("- ")]
        assert len(options) == N_CHOICES == len(set(options))
        assert e.answer == truth[e.dialog, question] and e.answer in options
        assert e.question == choice_question(question, options)
    # The gold option's position is random: the prior alone cannot pick it.
    positions = Counter(
        [line[2:] for line in e.question.splitlines() if line.startswith("- ")].index(e.answer)
        for e in examples
    )
    assert len(positions) >= 3


def test_context_windows_predict_the_neighbouring_tokens():
    s = sampler(texts=["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"])
    examples = s.sample({"context": 1.0}, 40, context_offset=1000)
    assert [e.dialog for e in examples] == list(range(1000, 1040))
    tokenizer = s.tokenizer
    for e, window in zip(examples, s.context_dialogs, strict=True):
        assert CONTEXT_WINDOW[0] <= window.read_length <= CONTEXT_WINDOW[1]
        text = tokenizer.decode(window.input_ids)
        assert text == window.text
        answer_tokens = tokenizer(e.answer, add_special_tokens=False)["input_ids"]
        assert len(answer_tokens) <= CONTEXT_TOKENS[1] + 2
        if "after" in e.question:  # the window is the end of the text read so far
            assert e.answer not in tokenizer.decode(window.input_ids[window.read_start :])
        else:
            before = tokenizer.decode(window.input_ids[: window.read_start])
            assert before.rstrip().endswith(e.answer)


def test_sampling_is_a_pure_function_of_the_seed():
    a = sampler(3).sample({t: 1.0 for t in TASKS}, 60, 100)
    b = sampler(3).sample({t: 1.0 for t in TASKS}, 60, 100)
    c = sampler(4).sample({t: 1.0 for t in TASKS}, 60, 100)
    assert a == b and a != c
    assert {e.task for e in a} == set(TASKS)


def test_missing_material_for_a_task_is_a_clear_error():
    empty = TaskSampler(facts()[:1], [], [], make_tokenizer(), 0)
    with pytest.raises(LatentQAError, match="nothing for task"):
        empty.sample({"yes_no": 1.0, "context": 1.0}, 4, 0)


def test_flatten_reads_mean_pool_gives_one_vector_per_layer():
    span = torch.randn(2, 7, 16)
    pooled = flatten_reads(span, 5, "mean")
    assert pooled.shape == (2, 16)
    torch.testing.assert_close(pooled, span[:, -5:].mean(1))
    assert flatten_reads(span, 5).shape == (10, 16)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    data = write_tiny_data(root / "data")
    release = root / "release"
    release.mkdir()
    items = [
        {"label": f"goal-{w}-things", "system": f"Always talk about {w}.", "stimulus_user": "Hi"}
        for w in ("cats", "dogs", "boats", "trains", "stars", "rocks")
    ]
    (release / "system.json").write_text(json.dumps(items))  # no qa.json, as released
    return write_tiny_model(root / "model"), data, release


def test_release_folder_loads_without_qa(workspace):
    _, _, release = workspace
    with pytest.raises(LatentQAError, match=r"qa\.json"):
        load_latentqa(release)
    assert len(load_latentqa(release, require_qa=False).behaviors) == 6


def prepared_over_release(workspace, out: Path, **options):
    """``prepare_data`` on the tiny built-in data plus the release folder, batch 4."""
    model, data, release = workspace
    cfg = config_from_dict(
        TrainConfig,
        dict(
            data=str(data),
            out=str(out),
            target=str(model),
            extra_data=[str(release)],
            batch_size=4,
            **options,
        ),
    )
    _, tokenizer = load_model(cfg.target, device="cpu", dtype="float32")
    return prepare_data(cfg, tokenizer)


def test_prepare_data_mixes_tasks_over_release_prompts(workspace, tmp_path):
    prepared = prepared_over_release(
        workspace,
        tmp_path,
        task_mix="open=1,yes_no=1,choice=1,reconstruct=1,context=1",
        steps=20,
        eval_examples=32,
    )
    assert len(prepared.train) == 80  # steps x batch, each example used once
    assert set(prepared.task_counts) == set(TASKS)
    reconstructed = {a for _, q, a in prepared.train if q == RECONSTRUCT_QUESTION}
    assert any(a.startswith("Always talk about") for a in reconstructed)  # release prompts
    assert all(0 <= d < len(prepared.dialogs) for d, _, _ in prepared.train)
    assert {item.task for item in prepared.eval_items} > {"open"}


def test_prepare_data_with_read_pairs_on_the_evaluation_question(workspace, tmp_path):
    prepared = prepared_over_release(
        workspace,
        tmp_path,
        task_mix="yes_no=1",
        task_questions=[INSTRUCTION_QUESTION],
        yes_no_negatives="read",
        steps=10,
        eval_examples=16,
    )
    assert len(prepared.train) == 40
    assert all(q.startswith(INSTRUCTION_QUESTION + "\n") for _, q, _ in prepared.train)
    assert Counter(a for _, _, a in prepared.train) == {YES: 20, NO: 20}
    # Each pair has a group key of its own; the two examples read different dialogs.
    by_group = Counter(prepared.groups)
    assert all(key < 0 and count == 2 for key, count in by_group.items())
    for key in by_group:
        (yes, no) = [prepared.train[i] for i, g in enumerate(prepared.groups) if g == key]
        assert yes[1] == no[1] and yes[0] != no[0]


def test_training_with_a_mix_and_mean_pooling(workspace, tmp_path):
    model, data, release = workspace
    cfg = config_from_dict(
        TrainConfig,
        dict(
            data=str(data),
            out=str(tmp_path / "run"),
            target=str(model),
            extra_data=[str(release)],
            task_mix="yes_no=1,reconstruct=1,context=1",
            read_pool="mean",
            steps=4,
            batch_size=4,
            eval_every=0,
            save_every=0,
            eval_examples=16,
            dtype="float32",
            lr=1e-2,
        ),
    )
    result = train(cfg, progress=False)
    spec = DecoderSpec.load(result.out)
    assert spec.pool == "mean"
    assert sum(spec.extra["task_counts"].values()) == 16
    # The extra data as given and resolved (the probe finds it from any folder).
    assert spec.extra["extra_data_paths"] == [str(Path(release).resolve())]
    assert {"loss_real", "loss_zeroed", "loss_shuffled"} <= set(result.final_metrics)
    assert any(key.startswith("loss_real_") for key in result.final_metrics)
    assert Path(result.out, "adapter_model.safetensors").is_file()


def test_a_dialog_without_system_prompt_reads_the_same_span_as_one_with_it_masked():
    from tiny import GEMMA_TEMPLATE

    from latentqa.chat import encode_dialog

    tokenizer = make_tokenizer()  # ChatML that inserts a default system prompt
    user = {"role": "user", "content": "Hello there, how are you?"}
    masked = encode_dialog(tokenizer, [{"role": "system", "content": "Be a pirate."}, user], 1)
    plain = encode_dialog(tokenizer, [user], 0, mask_default_system=True)
    assert plain.read_start > 0
    assert plain.input_ids[plain.read_start :] == masked.input_ids[masked.read_start :]
    assert encode_dialog(tokenizer, [user], 0).read_start == 0  # unchanged by default
    gemma = make_tokenizer(GEMMA_TEMPLATE)  # no default system prompt: nothing to leave out
    assert encode_dialog(gemma, [user], 0, mask_default_system=True).read_start == 0


def test_extra_data_that_names_a_heldout_behavior_is_left_out():
    from latentqa.data.format import Behavior, LatentQADataset
    from latentqa.train.prepare import drop_heldout_lookalikes

    labels = ["persona-tone-passive-aggressive", "goal-passive-income", "persona-spy-novelist"]
    dataset = LatentQADataset(tuple(Behavior(label, "system", system="x") for label in labels))
    kept, dropped = drop_heldout_lookalikes(dataset, ["tone-passive-aggressive", "persona-spy"])
    assert dropped == 2 and kept.labels == ["goal-passive-income"]


def test_standardized_reading_is_recorded_and_applied_when_reading(workspace, tmp_path):
    from latentqa.reader import Reader

    model, data, _ = workspace
    cfg = config_from_dict(
        TrainConfig,
        dict(
            data=str(data),
            out=str(tmp_path / "run"),
            target=str(model),
            standardize=True,
            steps=2,
            batch_size=4,
            eval_every=0,
            save_every=0,
            eval_examples=8,
            dtype="float32",
        ),
    )
    result = train(cfg, progress=False)
    spec = DecoderSpec.load(result.out)
    assert len(spec.vector_mean) == len(spec.vector_std) == 32  # the tiny model's width
    reader = Reader.load(str(model), result.out, device="cpu")
    dialog = [{"role": "system", "content": "You are a spy."}, {"role": "user", "content": "Hi"}]
    raw = Reader.base(str(model), read_layers=spec.read_layers, device="cpu").read(dialog)
    expected = (raw - torch.tensor(spec.vector_mean)) / torch.tensor(spec.vector_std)
    torch.testing.assert_close(reader.read(dialog), expected, rtol=1e-4, atol=1e-4)
