"""Which layers the server reads: a decoder with a projector reads only its own read
layers, so health lists them, the chart's default covers them alone, and any other layer
is refused with the reason; a decoder without one reads every layer."""

from __future__ import annotations

import httpx
import pytest
from lit_fixtures import DIALOG, QUESTIONS, build_tiny_decoder

from latentqa.reader import Reader
from latentqa.server import BackgroundServer, create_app

PROJECTED = dict(read_layers=[1, 2], read_pool="mean", projector="linear")


@pytest.fixture(scope="module")
def projected(tmp_path_factory) -> Reader:
    model, decoder = build_tiny_decoder(tmp_path_factory.mktemp("projected"), **PROJECTED)
    return Reader.load(str(model), decoder, device="cpu")


@pytest.fixture(scope="module")
def client(projected):
    server = BackgroundServer(create_app(reader=projected))
    with server, httpx.Client(base_url=server.url, timeout=120) as session:
        yield session


def test_a_projector_reads_its_own_layers_and_a_plain_decoder_every_layer(projected):
    assert projected.readable_layers == [1, 2]
    plain = Reader.base_like(projected.spec, projected.target_name, device="cpu")
    assert plain.decoder.projector is None
    assert plain.readable_layers == list(range(projected.n_layers))


def test_health_lists_the_layers_each_loaded_decoder_reads(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ready"
    assert list(health["readable_layers"].values()) == [[1, 2]]
    assert next(iter(health["readable_layers"])) == health["decoders"][0]


def test_the_chart_scores_the_readable_layers_and_refuses_others(client, projected):
    body = {"dialog": DIALOG, "question": QUESTIONS[0], "answers": ["A pirate captain.", "x"]}
    result = client.post("/api/layer-scores", json=body).json()
    assert result["layers"] == [1, 2] and result["read_layers"] == [1, 2]
    for layer, row in zip(result["layers"], result["scores"], strict=True):
        expected = projected.score(DIALOG, QUESTIONS[0], body["answers"], True, layer=layer)
        assert row == pytest.approx(expected, abs=1e-4)
    refused = client.post("/api/layer-scores", json={**body, "layers": [0]})
    assert refused.status_code == 400
    assert "maps reads of layers [1, 2] only" in refused.json()["error"]
