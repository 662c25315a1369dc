"""A decoder trained on yes/no questions picks among options by its yes/no margin: the
margin equals the two answers' scores, the spec knows the training mix, and the picks
(latentqa.picks, the demo's) follow it, per dialog and pooled over dialogs."""

from __future__ import annotations

import pytest
import torch
from lit_fixtures import DIALOG, tiny_train_config, write_tiny_data, write_tiny_model

import latentqa.train.trainer as trainer
from latentqa.decoder.folder import DecoderSpec
from latentqa.errors import LatentQAError
from latentqa.picks import choose, option_scores
from latentqa.questions import NO, YES, yes_no_question
from latentqa.reader import Reader

QUESTION = "What was the assistant instructed to do?"
OPTIONS = ["It was instructed to act as a pirate.", "It was instructed to be terse.", "Hi."]


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("yes-no-picks")
    workspace = write_tiny_model(root / "model"), write_tiny_data(root / "data")
    common = dict(steps=2, batch_size=4, warmup_steps=1, eval_every=0, save_every=0)
    common |= dict(device="cpu", read_pool="mean", read_layers=[1, 2], projector="linear")
    out = {}
    for name, mix in (("yes_no", "yes_no=1,open=1"), ("open", "open=1")):
        folder = root / name
        trainer.train(tiny_train_config(workspace, folder, task_mix=mix, **common), progress=False)
        out[name] = Reader.load(str(workspace[0]), str(folder), device="cpu")
    return out


def test_the_spec_knows_whether_the_decoder_was_trained_on_yes_no(decoders):
    assert decoders["yes_no"].spec.picks_by_yes_no
    assert not decoders["open"].spec.picks_by_yes_no
    # A decoder folder without a recorded mix (older ones, hand-made ones) picks by likelihood.
    assert not DecoderSpec(**{**vars(decoders["open"].spec), "extra": {}}).picks_by_yes_no


def test_a_margin_is_the_yes_score_minus_the_no_score(decoders):
    reader = decoders["yes_no"]
    vectors = reader.read(DIALOG)
    margins = reader.yes_no_margins(vectors, QUESTION, OPTIONS)
    for option, margin in zip(OPTIONS, margins, strict=True):
        yes, no = reader.score_vectors(
            vectors, yes_no_question(QUESTION, option), [YES, NO], normalize=True
        )
        assert margin == pytest.approx(yes - no, abs=1e-4)
    # The margins come from the read: other vectors, other margins.
    assert reader.yes_no_margins(torch.zeros_like(vectors), QUESTION, OPTIONS) != margins
    with pytest.raises(LatentQAError):
        reader.yes_no_margins(vectors, QUESTION, [])


def test_options_are_scored_by_yes_no_for_a_yes_no_decoder_only(decoders):
    dialogs = [DIALOG, [{"role": "user", "content": "Tell me a story."}]]
    reader = decoders["yes_no"]
    scores = option_scores(reader, dialogs, QUESTION, OPTIONS)
    expected = [reader.yes_no_margins(v, QUESTION, OPTIONS) for v in reader.read_many(dialogs)]
    for got, want in zip(scores, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    plain = decoders["open"]
    gains = option_scores(plain, dialogs, QUESTION, OPTIONS)
    refs = plain.reference_reads()
    prior = [
        sum(s) / len(refs)
        for s in zip(
            *(plain.score_vectors(r, QUESTION, OPTIONS, normalize=True) for r in refs),
            strict=True,
        )
    ]
    real = plain.score_vectors(plain.read(DIALOG), QUESTION, OPTIONS, normalize=True)
    assert gains[0] == pytest.approx([r - p for r, p in zip(real, prior, strict=True)], abs=1e-5)


@pytest.mark.parametrize("name", ["yes_no", "open"])
def test_the_pooled_pick_sums_each_dialogs_scores(decoders, name):
    reader = decoders[name]
    dialogs = [DIALOG, [{"role": "user", "content": "Tell me a story."}], DIALOG[-1:]]
    choice = choose(reader, dialogs, QUESTION, OPTIONS)
    each = [option_scores(reader, [d], QUESTION, OPTIONS)[0] for d in dialogs]
    for got, want in zip(choice.scores, each, strict=True):
        assert got == pytest.approx(want, abs=1e-5)  # a dialog's scores do not depend on the others
    assert choice.pooled == pytest.approx([sum(c) for c in zip(*each, strict=True)], abs=1e-4)
    assert choice.picks == [max(range(3), key=row.__getitem__) for row in choice.scores]
    assert choice.pooled[choice.pooled_pick] == max(choice.pooled)
    # One dialog: the pooled pick is that dialog's pick.
    alone = choose(reader, dialogs[:1], QUESTION, OPTIONS)
    assert alone.pooled_pick == alone.picks[0] == choice.picks[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [(["only one"], "at least two"), (["a", " "], "empty"), (["a", "a"], "repeat")],
)
def test_bad_options_get_a_clear_error_before_any_read(decoders, options, message):
    with pytest.raises(LatentQAError, match=message):
        choose(decoders["open"], [DIALOG], QUESTION, options)
    with pytest.raises(LatentQAError, match="at least one dialog"):
        choose(decoders["open"], [], QUESTION, OPTIONS)
