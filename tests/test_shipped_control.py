"""The shipped control decoder (the decoder steering uses): its folder and (slow) that it
reads the tone of a reply."""

from __future__ import annotations

import json

import pytest
from slow_marks import needs_embedded

from latentqa.decoder.folder import DecoderSpec, open_decoder_folder, shipped_decoder
from latentqa.models import EMBEDDED_MODEL
from latentqa.steer.model import STEERING_DECODER, steering_decoder

FOLDER = shipped_decoder(EMBEDDED_MODEL, "control")


def test_folder_is_small_complete_and_reads_replies():
    folder, spec = open_decoder_folder(EMBEDDED_MODEL, STEERING_DECODER)
    assert folder == FOLDER and isinstance(spec, DecoderSpec) and spec.target == EMBEDDED_MODEL
    assert spec.extra["reads"] == "reply"  # steering and Reader.encode read the reply
    assert spec.read_layers == [12] and spec.write_layer == 12
    assert (folder / "adapter_model.safetensors").stat().st_size <= 25 * 2**20
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_MODEL
    assert (folder / "TRAINING.md").read_text().startswith("# The shipped control decoder")
    assert steering_decoder(EMBEDDED_MODEL, None) == STEERING_DECODER


@pytest.mark.slow
@needs_embedded
def test_it_reads_the_tone_of_a_reply():
    from latentqa.data.control import TONE_QUESTION, VALENCE_QUESTION
    from latentqa.reader import Reader

    reader = Reader.load(EMBEDDED_MODEL, STEERING_DECODER, device="cpu")
    user = {"role": "user", "content": "How was your weekend?"}
    replies = {
        "cheerful": "It was wonderful! I loved every minute, and the sunshine made me so happy!",
        "gloomy": "It was awful. Everything went wrong and I just feel empty and hopeless.",
    }
    valence, tone = {}, {}
    for name, reply in replies.items():
        dialog = [user, {"role": "assistant", "content": reply}]
        positive, negative = reader.score(dialog, VALENCE_QUESTION, ["Positive.", "Negative."])
        valence[name] = positive - negative
        cheerful, gloomy = reader.score(
            dialog, TONE_QUESTION, ["Its replies are cheerful.", "Its replies are gloomy."]
        )
        tone[name] = cheerful - gloomy
    assert valence["cheerful"] > 0 > valence["gloomy"], valence
    assert tone["cheerful"] > 0 > tone["gloomy"], tone
