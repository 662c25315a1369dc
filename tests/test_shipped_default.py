"""The shipped default decoder: a small, complete folder that reads as it was trained to,
and (slow) picks hidden behaviours from the target's activations, not from the question."""

from __future__ import annotations

import json

import pytest
import torch
from slow_marks import needs_embedded

from latentqa.decoder.folder import open_decoder_folder
from latentqa.decoder.projector import PROJECTOR_FILE, Projector
from latentqa.models import EMBEDDED_MODEL


def test_folder_is_small_complete_and_reads_pooled_layers():
    folder, spec = open_decoder_folder(EMBEDDED_MODEL, None)
    weights = folder / "adapter_model.safetensors", folder / PROJECTOR_FILE
    assert sum(path.stat().st_size for path in weights) <= 25 * 10**6  # issue #23's bound
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        EMBEDDED_MODEL
    )
    assert (folder / "TRAINING.md").read_text().startswith("# The shipped decoder")
    assert (spec.read_layers, spec.pool, spec.projector) == ([8, 15, 22], "mean", "linear")
    assert spec.prompt_order == "question-first" and spec.picks_by_yes_no
    assert spec.vector_mean is not None and len(spec.vector_mean) == spec.hidden_size
    projector = Projector.load(folder)
    assert projector.n_slots == spec.n_slots == 3
    assert torch.isfinite(projector.weight).all()


@pytest.mark.slow
@needs_embedded
def test_its_picks_follow_the_read_and_not_the_question():
    from latentqa.cli.demo import DEMO, QUESTIONS
    from latentqa.picks import option_scores
    from latentqa.reader import Reader

    reader = Reader.load(EMBEDDED_MODEL, device="cpu")
    dialogs = [[{"role": "system", "content": d["system"]}, {"role": "user", "content": d["user"]}]
               for d in DEMO]  # fmt: skip
    options = [d["instructed"] for d in DEMO]
    question = QUESTIONS[0]
    scores = option_scores(reader, dialogs, question, options)
    picks = [max(range(len(options)), key=row.__getitem__) for row in scores]
    # The picks move with the dialog (how many are right, 4 dialogs cannot tell: see the
    # held-out test below).
    assert len(set(picks)) > 1, picks
    # Without its system prompt the same user turn gives other margins: the read decides.
    bare = [[d[1]] for d in dialogs]
    assert option_scores(reader, bare, question, options) != scores
    assert reader.yes_no_margins(torch.zeros(3, 576), question, options) != scores[0]


@pytest.mark.slow
@needs_embedded
def test_it_reads_held_out_prompts_far_better_than_shuffled_reads():
    from latentqa.evals.system_prompt import evaluate_system_prompt
    from latentqa.reader import Reader

    reader = Reader.load(EMBEDDED_MODEL, device="cpu")
    result = evaluate_system_prompt(
        reader,
        None,
        n=40,  # the --quick subset
        methods=["lit", "lit_shuffled"],
        open_answers=False,
        likelihood=False,
        black_box=False,
    )
    lit, shuffled = (result["methods"][m] for m in ("lit", "lit_shuffled"))
    pick = (lit["mc_yes_no_accuracy"], shuffled["mc_yes_no_accuracy"])
    paired = (lit["paired_yes_no_accuracy"], shuffled["paired_yes_no_accuracy"])
    # Measured on these 40 items (phase G3): picks 0.425 against 0.300, paired yes/no 0.675
    # against 0.400 (all 177: 0.475 against 0.192, 0.774 against 0.497). 40 picks are
    # few, so the margin is asked of the paired measure (two questions an item); the
    # bounds leave room for a few items to flip on another machine's float round-off.
    assert pick[0] >= 0.3 and pick[0] > pick[1], pick
    assert paired[0] >= paired[1] + 0.15 and paired[0] >= 0.6, paired
