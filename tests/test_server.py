"""`latentqa serve`: the JSON API over a real Reader on a tiny trained decoder."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from lit_fixtures import DIALOG, QUESTIONS, build_tiny_decoder

import latentqa.cli as cli
from latentqa.errors import LatentQAError
from latentqa.reader import Reader
from latentqa.scoring import EVIDENCE_THRESHOLD
from latentqa.server import MAX_MESSAGE_CHARS, BackgroundServer, create_app

OTHER = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 4


def n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Overlap:
    """Wraps a reader and records how many of its calls ever ran at the same time."""

    def __init__(self, reader: Reader) -> None:
        self.reader, self.active, self.most = reader, 0, 0
        self.spec, self.n_layers, self.device = reader.spec, reader.n_layers, reader.device
        self.target_name, self.decoder_path = reader.target_name, reader.decoder_path
        self._count = threading.Lock()

    def _enter(self) -> None:
        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)

    def _exit(self) -> None:
        with self._count:
            self.active -= 1

    def ask(self, *args, **kwargs):
        self._enter()
        try:
            time.sleep(0.005)  # widen the window in which an overlap would show
            return self.reader.ask(*args, **kwargs)
        finally:
            self._exit()

    def score(self, *args, **kwargs):
        self._enter()
        try:
            return self.reader.score(*args, **kwargs)
        finally:
            self._exit()


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Reader:
    model, decoder = build_tiny_decoder(tmp_path_factory.mktemp("server"))
    return Reader.load(str(model), decoder, device="cpu")


@pytest.fixture(scope="module")
def overlap(reader) -> Overlap:
    return Overlap(reader)


@pytest.fixture(scope="module")
def server(overlap):
    # 20 concurrent requests below: above the default queue cap (tested in test_server_bounds)
    with BackgroundServer(create_app(reader=overlap, max_waiting=32)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as session:
        yield session


def ask_body(dialog=DIALOG, questions=QUESTIONS, **extra) -> dict:
    return {"dialog": dialog, "questions": questions, "max_new_tokens": TOKENS, **extra}


def test_health_reports_what_is_running(client, reader):
    health = client.get("/api/health").json()
    assert health["status"] == "ready" and health["n_layers"] == reader.n_layers == 4
    assert health["read_layer"] == 2 and health["read_layers"] == [2]
    assert health["decoder"] == str(reader.decoder_path) and health["device"] == "cpu"
    assert health["target"] == reader.target_name
    assert health["limits"]["max_message_chars"] == MAX_MESSAGE_CHARS


def test_ask_and_score_match_the_reader(client, reader):
    response = client.post("/api/ask", json=ask_body())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answers"] == reader.ask(DIALOG, QUESTIONS, max_new_tokens=TOKENS)
    assert body["read_layers"] == [2]
    weighed = reader.ask(DIALOG, QUESTIONS, max_new_tokens=TOKENS, evidence=True)
    assert body["evidence"] == pytest.approx([a.evidence for a in weighed], abs=1e-4)
    assert body["logprob_real"] == pytest.approx([a.logprob_real for a in weighed], abs=1e-4)
    assert body["logprob_zeroed"] == pytest.approx([a.logprob_zeroed for a in weighed], abs=1e-4)
    assert body["logprob_reference"] == pytest.approx(
        [a.logprob_reference for a in weighed], abs=1e-4
    )
    assert body["evidence_threshold"] == EVIDENCE_THRESHOLD
    at_one = client.post("/api/ask", json=ask_body(layer=1)).json()
    assert at_one["answers"] == reader.ask(DIALOG, QUESTIONS, max_new_tokens=TOKENS, layer=1)
    assert at_one["read_layers"] == [1] and len(at_one["evidence"]) == len(QUESTIONS)
    single = client.post("/api/ask", json=ask_body(questions=QUESTIONS[:1])).json()
    assert len(single["answers"]) == len(single["evidence"]) == 1
    answers = ["A pirate captain.", "A French chef."]
    scores = client.post(
        "/api/score", json={"dialog": DIALOG, "question": QUESTIONS[0], "answers": answers}
    ).json()["scores"]
    assert scores == pytest.approx(reader.score(DIALOG, QUESTIONS[0], answers), abs=1e-4)
    normalized = client.post(
        "/api/score",
        json={
            "dialog": DIALOG,
            "question": QUESTIONS[0],
            "answers": answers,
            "normalize": True,
            "layer": 3,
        },
    ).json()
    expected = reader.score(DIALOG, QUESTIONS[0], answers, normalize=True, layer=3)
    assert normalized["scores"] == pytest.approx(expected, abs=1e-4)


def test_layer_scores_score_every_layer(client, reader):
    body = {"dialog": DIALOG, "question": QUESTIONS[0], "answers": ["A pirate captain.", "x"]}
    result = client.post("/api/layer-scores", json=body).json()
    assert result["layers"] == [0, 1, 2, 3] and result["read_layers"] == [2]
    for layer, row in zip(result["layers"], result["scores"], strict=True):
        expected = reader.score(DIALOG, QUESTIONS[0], body["answers"], normalize=True, layer=layer)
        assert row == pytest.approx(expected, abs=1e-4)
    some = client.post("/api/layer-scores", json={**body, "layers": [-1, 0]}).json()
    assert some["layers"] == [3, 0]


def test_concurrent_requests_take_turns_and_match_sequential_answers(client, reader, overlap):
    hooks = n_hooks(reader.model)
    cases = [
        (dialog, [question], layer)
        for dialog in (DIALOG, OTHER)
        for question in QUESTIONS
        for layer in (None, 1)
    ]
    expected = [reader.ask(d, q, max_new_tokens=TOKENS, layer=layer) for d, q, layer in cases]
    jobs = [index % len(cases) for index in range(20)]
    overlap.most = 0

    def one(index: int) -> list[str]:
        dialog, questions, layer = cases[index]
        response = client.post("/api/ask", json=ask_body(dialog, questions, layer=layer))
        assert response.status_code == 200, response.text
        return response.json()["answers"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(one, jobs))
    assert answers == [expected[index] for index in jobs]
    assert overlap.most == 1, "two model calls ran at the same time"
    assert n_hooks(reader.model) == hooks, "a forward hook was left on the model"


def test_health_answers_while_the_model_is_busy(client):
    body = {"dialog": DIALOG, "question": QUESTIONS[0], "answers": ["a"], "layers": [0] * 40}
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(client.post, "/api/layer-scores", json=body)
        started = time.monotonic()
        assert client.get("/api/health").json()["status"] == "ready"
        assert time.monotonic() - started < 5
        assert busy.result().status_code == 200


@pytest.mark.parametrize(
    ("send", "status", "message"),
    [
        (dict(json=ask_body(dialog=[])), 422, "the dialog is empty"),
        (
            dict(json=ask_body(dialog=[{"role": "user", "content": "sea " * 25_000}])),
            422,
            "dialog[0].content is too long: 100000 characters (the limit is 20000)",
        ),
        (
            dict(content=b'{"dialog": [', headers={"Content-Type": "application/json"}),
            400,
            "malformed JSON",
        ),
        (dict(json=ask_body(layer=7)), 400, "layer 7 is out of range"),
        (
            dict(json=ask_body(dialog=[{"role": "robot", "content": "Hi"}])),
            422,
            "dialog[0].role must be one of 'system', 'user' or 'assistant', got 'robot'",
        ),
        (dict(json=ask_body(questions=["  "])), 422, "questions[0] must not be empty"),
        (dict(json=ask_body(questions=[])), 422, "questions must not be empty"),
        (dict(json=ask_body(dialog=DIALOG[:1])), 400, "no user turn"),
        (dict(json=ask_body(dialog=[{"role": "user", "content": "sea " * 600}])), 400, "context"),
        (dict(json={"dialog": DIALOG}), 422, "questions is required"),
        (
            dict(content=b"x" * (3 << 20), headers={"Content-Type": "application/json"}),
            413,
            "too large",
        ),
    ],
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, send, status, message):
    response = client.post("/api/ask", **send)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and len(error) < 300
    again = client.post("/api/ask", json=ask_body(questions=QUESTIONS[:1]))
    assert again.status_code == 200 and len(again.json()["answers"]) == 1


def test_other_routes_and_errors_are_json(client):
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/api/ask").status_code == 405
    bad_layers = {"dialog": DIALOG, "question": "Q?", "answers": ["a"], "layers": [0, 9]}
    response = client.post("/api/layer-scores", json=bad_layers)
    assert response.status_code == 400 and "layer 9 is out of range" in response.json()["error"]
    page = client.get("/")
    assert (
        page.status_code == 200
        and "/static/app.js" in page.text
        and "http"
        not in "".join(line for line in page.text.splitlines() if "src=" in line or "href=" in line)
    )
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/secret.py").status_code == 404
    examples = client.get("/api/examples").json()
    assert examples and all(e["dialog"][0]["role"] == "system" for e in examples)


def test_openapi_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/ask", "/api/score", "/api/layer-scores", "/api/health"} <= set(schema["paths"])
    ask = schema["paths"]["/api/ask"]["post"]
    assert {"200", "400", "422", "503"} <= set(ask["responses"])
    assert {"AskRequest", "AskResponse", "ScoreRequest", "Health"} <= set(
        schema["components"]["schemas"]
    )
    response = schema["components"]["schemas"]["AskResponse"]
    assert {"answers", "evidence", "logprob_real", "logprob_zeroed", "evidence_threshold"} <= set(
        response["required"]
    )
    assert response["properties"]["evidence"]["items"]["type"] == "number"
    assert "other dialogs" in response["properties"]["evidence"]["description"]
    assert "logprob_reference" in response["required"]
    docs = client.get("/docs")  # our own page: FastAPI's loads scripts from a CDN
    assert docs.status_code == 200 and "/static/docs.js" in docs.text and "cdn" not in docs.text
    assert client.get("/redoc").status_code == 404


def test_loading_then_ready_and_a_failed_load(reader):
    release = threading.Event()

    def slow() -> Reader:
        release.wait(30)
        return reader

    with TestClient(create_app(slow, target="tiny", device="cpu")) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "loading" and health["target"] == "tiny"
        waiting = client.post("/api/ask", json=ask_body())
        assert waiting.status_code == 503 and "still loading" in waiting.json()["error"]
        assert waiting.headers["retry-after"]
        assert client.get("/").status_code == 200
        release.set()
        client.app.state.host.wait(30)
        assert client.get("/api/health").json()["status"] == "ready"
        assert client.post("/api/ask", json=ask_body()).status_code == 200

    def broken() -> Reader:
        raise LatentQAError("decoder folder /nowhere does not exist")

    with TestClient(create_app(broken)) as client:
        client.app.state.host.wait(30)
        health = client.get("/api/health").json()
        assert health["status"] == "error" and "/nowhere does not exist" in health["message"]
        failed = client.post("/api/ask", json=ask_body())
        assert failed.status_code == 503 and "failed to load" in failed.json()["error"]


def test_cli_serve_binds_loopback_and_warns_otherwise(monkeypatch, capsys):
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    if "serve" not in cli.SUBCOMMAND_MODULES:
        monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", [*cli.SUBCOMMAND_MODULES, "serve"])
    # The default target and its shipped decoder pass the preflight; the model is not loaded.
    assert cli.main(["serve", "--port", "8123"]) == 0
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8123
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["serve", "--host", "0.0.0.0"]) == 0
    assert calls[-1]["host"] == "0.0.0.0" and "warning" in capsys.readouterr().err
    assert cli.main(["serve", "--port", "70000"]) == 2
