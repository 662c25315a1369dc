"""The shipped relations decoder: its folder, its held-out facts, and (slow) that it reads."""

from __future__ import annotations

import json

import pytest
from slow_marks import needs_embedded

from latentqa.decoder.folder import (
    SHIPPED_NAMES,
    DecoderSpec,
    decoder_folder,
    open_decoder_folder,
    shipped_decoder,
)
from latentqa.errors import LatentQAError
from latentqa.evals.relations_data import find_relation_data, load_relation_data
from latentqa.models import EMBEDDED_MODEL

FOLDER = shipped_decoder(EMBEDDED_MODEL, "relations")


def test_shipped_names_resolve():
    assert decoder_folder(EMBEDDED_MODEL, "shipped:relations") == FOLDER
    assert decoder_folder(EMBEDDED_MODEL, None) == shipped_decoder(EMBEDDED_MODEL)
    assert decoder_folder(EMBEDDED_MODEL, "shipped:default") == shipped_decoder(EMBEDDED_MODEL)
    assert set(SHIPPED_NAMES) == {"default", "relations", "control"}
    with pytest.raises(LatentQAError, match="shipped:default, shipped:relations, shipped:control"):
        decoder_folder(EMBEDDED_MODEL, "shipped:nope")
    with pytest.raises(LatentQAError, match="no decoder ships for target"):
        decoder_folder("some/other-model", "shipped:relations")


def test_folder_is_small_and_complete():
    folder, spec = open_decoder_folder(EMBEDDED_MODEL, "shipped:relations")
    assert isinstance(spec, DecoderSpec) and spec.target == EMBEDDED_MODEL
    assert (folder / "adapter_model.safetensors").stat().st_size <= 25 * 2**20
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == EMBEDDED_MODEL
    assert (folder / "TRAINING.md").is_file()


def test_held_out_facts_ship_beside_it():
    assert find_relation_data(None, FOLDER, None) == FOLDER
    rel = load_relation_data(FOLDER)
    held = {item.fact.subject for item in rel.items if item.split == "heldout"}
    trained = {item.fact.subject for item in rel.train}
    assert held and trained and held.isdisjoint(trained)
    assert {item.fact.relation for item in rel.items} >= {"language", "demonym", "capital"}


@pytest.mark.slow
@needs_embedded
def test_it_reads_held_out_countries():
    from latentqa.evals.relations import evaluate_relations
    from latentqa.reader import Reader

    reader = Reader.load(EMBEDDED_MODEL, "shipped:relations", device="cpu")
    result = evaluate_relations(reader, n=6, methods=("lit", "lit_zeroed"), max_new_tokens=24)
    lit, zeroed = result["methods"]["lit"]["accuracy"], result["methods"]["lit_zeroed"]["accuracy"]
    # Measured on the full held-out set: 0.94 vs 0.18 (docs/relations-experiments.md).
    assert lit >= zeroed + 0.3, (lit, zeroed)
    dialog = [{"role": "user", "content": "Tell me about France."}]
    question = "What is the official language of this country?"
    (answer,) = reader.ask(dialog, [question], subject="France")
    assert "French" in answer
