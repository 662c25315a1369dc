"""``latentqa eval control-reading`` with a tiny decoder: the shared tries pick what one
row per option picks, and the command's figures are well formed."""

from __future__ import annotations

import pytest
import torch
from lit_fixtures import build_tiny_decoder

from latentqa.data.control import build_control_dataset
from latentqa.evals import control_reading as cr
from latentqa.reader import Reader


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-reading")
    model, decoder = build_tiny_decoder(root)
    return Reader.load(str(model), decoder, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-data")
    build_control_dataset(root, seed=0)
    return root


def _accuracy_row_by_row(reader, items, vectors) -> float:
    """The accuracy with every option scored alone (one prompt per row)."""
    hits = 0
    for v, item in zip(vectors, items, strict=True):
        scores = [reader.score_rows([v], [item.question], [o])[0] for o in item.options]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == item.gold)
    return hits / len(items)


def test_shared_scoring_picks_what_row_by_row_scoring_picks(reader, data):
    items = cr.reading_items(data / "heldout", 6, seed=0)
    for name in ("valence", "tone"):
        chosen = items[name]
        vectors = [reader.decoder.inputs(span) for span in cr._spans(reader, chosen)]
        zeros: dict[tuple, torch.Tensor] = {}
        zeroed = [zeros.setdefault((*v.shape, v.dtype), torch.zeros_like(v)) for v in vectors]
        for given in (vectors, zeroed):
            assert cr._accuracy(reader, chosen, given) == _accuracy_row_by_row(
                reader, chosen, given
            )


def test_evaluation_reports_every_method_per_question(reader, data):
    result = cr.evaluate_control_reading(reader, data, n=4, n_probe=4, seed=0)
    assert result["task"] == "control-reading"
    assert set(result["methods"]) == set(cr.METHODS)
    for figures in result["methods"].values():
        assert set(figures) == set(result["n_per_question"])
        assert all(0.0 <= value <= 1.0 for value in figures.values())
