"""The server's bounds, over fake readers (no model): layer cap, queue cap, deadline,
disconnects, trusted Host on loopback, generic 500 answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

import latentqa.cli as cli
from latentqa.cli import serve as serve_cli
from latentqa.server import BackgroundServer, create_app
from latentqa.server.host import DEFAULT_MAX_WAITING, DEFAULT_REQUEST_TIMEOUT, ModelHost
from latentqa.server.http_errors import INTERNAL_ERROR, host_name
from latentqa.server.schemas import MAX_LAYERS

DIALOG = [{"role": "user", "content": "Hello there."}]
SCORE = {"dialog": DIALOG, "question": "Who?", "answers": ["a", "b"]}
ASK = {"dialog": DIALOG, "questions": ["Who?"], "max_new_tokens": 4}


@dataclass
class FakeAnswer:
    text: str
    evidence: float = 0.5
    logprob_real: float = -1.0
    logprob_zeroed: float = -1.5
    logprob_reference: float = -1.4
    threshold: float = 0.1


@dataclass
class FakeReader:
    """Answers at once, or after ``delay`` seconds, or when ``gate`` opens; records calls."""

    n_layers: int = 4
    delay: float = 0.0
    gate: threading.Event | None = None
    fail: Exception | None = None
    spec: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(read_layers=[2]))
    target_name: str = "fake"
    decoder_path: str = "fake-decoder"
    device: str = "cpu"
    calls: list = field(default_factory=list)
    active: int = 0
    most: int = 0

    def __post_init__(self) -> None:
        self._count = threading.Lock()
        self.started = threading.Event()

    def _work(self, what: str, layer: int | None) -> None:
        with self._count:
            self.active += 1
            self.most = max(self.most, self.active)
            self.calls.append((what, layer))
        self.started.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(30), "the test never opened the gate"
            time.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        finally:
            with self._count:
                self.active -= 1

    def ask(self, dialog, questions, *, subject=None, evidence=False, layer=None, **options):
        self._work("ask", layer)
        return [FakeAnswer("x") if evidence else "x" for _ in questions]

    def score(self, dialog, question, answers, normalize=False, layer=None):
        self._work("score", layer)
        return [float(layer or 0) for _ in answers]


def served(reader: FakeReader, **options) -> BackgroundServer:
    return BackgroundServer(create_app(reader=reader, **options))


@contextmanager
def running(reader: FakeReader, **options) -> Iterator[tuple[httpx.Client, ModelHost]]:
    """A server on 127.0.0.1 around ``reader``, and a client for it."""
    with served(reader, **options) as server:  # noqa: SIM117
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client, host_of(server)


def host_of(server: BackgroundServer) -> ModelHost:
    return server._server.config.app.state.host


@pytest.fixture
def server_log(monkeypatch, caplog):
    """Records of the ``latentqa.server`` logger, even after `latentqa serve` configured it."""
    logger = logging.getLogger("latentqa.server")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.ERROR, logger="latentqa.server"):
        yield caplog


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def one_line(response: httpx.Response) -> str:
    error = response.json()["error"]
    assert isinstance(error, str) and "\n" not in error and len(error) < 400
    return error


# Layers: deduplicated and capped.


def test_layer_scores_score_each_distinct_layer_once():
    reader = FakeReader()
    with TestClient(create_app(reader=reader)) as client:
        response = client.post("/api/layer-scores", json={**SCORE, "layers": [0] * 512})
        assert response.status_code == 200, response.text
        assert response.json()["layers"] == [0] and len(reader.calls) == 1
        reader.calls.clear()
        body = client.post("/api/layer-scores", json={**SCORE, "layers": [1, -1, 3, 1, 0, -4]})
        assert body.json()["layers"] == [1, 3, 0]
        assert body.json()["scores"] == [[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]
        assert [layer for _, layer in reader.calls] == [1, 3, 0]


def test_layer_scores_cap_distinct_layers_with_a_clear_error():
    reader = FakeReader(n_layers=100)
    with TestClient(create_app(reader=reader)) as client:
        many = client.post("/api/layer-scores", json={**SCORE, "layers": list(range(65))})
        assert many.status_code == 400
        error = one_line(many)
        assert f"at most {MAX_LAYERS}" in error and "65 distinct" in error and "split" in error
        every = client.post("/api/layer-scores", json=SCORE)  # 100 layers by default
        assert every.status_code == 400 and "pass `layers`" in one_line(every)
        assert reader.calls == []
        fits = client.post("/api/layer-scores", json={**SCORE, "layers": list(range(64)) * 2})
        assert fits.status_code == 200 and len(reader.calls) == MAX_LAYERS
        too_long = client.post("/api/layer-scores", json={**SCORE, "layers": [0] * 513})
        assert too_long.status_code == 422
        assert client.get("/api/health").json()["limits"]["max_layers"] == MAX_LAYERS


# The queue: at most max_waiting requests wait; one more gets 503 at once.


def test_a_full_queue_answers_503_and_health_stays_fast():
    gate = threading.Event()
    reader = FakeReader(gate=gate)
    with running(reader, max_waiting=2) as (client, host):
        with ThreadPoolExecutor(max_workers=3) as pool:
            admitted = [pool.submit(client.post, "/api/score", json=SCORE) for _ in range(3)]
            wait_until(lambda: host.waiting == 3 and reader.started.is_set())
            started = time.monotonic()
            refused = client.post("/api/ask", json=ASK)
            assert time.monotonic() - started < 2
            assert refused.status_code == 503 and refused.json()["status"] == "busy"
            assert "try again" in one_line(refused) and refused.headers["retry-after"]
            started = time.monotonic()
            assert client.get("/api/health").json()["status"] == "ready"
            assert time.monotonic() - started < 2
            gate.set()
            assert [f.result().status_code for f in admitted] == [200, 200, 200]
        assert host.waiting == 0 and len(reader.calls) == 3 and reader.most == 1
        assert client.post("/api/ask", json=ASK).status_code == 200


def test_max_waiting_zero_serves_one_request_at_a_time():
    gate = threading.Event()
    reader = FakeReader(gate=gate)
    app = create_app(reader=reader, max_waiting=0)
    with TestClient(app) as client, ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(client.post, "/api/score", json=SCORE)
        wait_until(reader.started.is_set)
        assert client.post("/api/score", json=SCORE).status_code == 503
        gate.set()
        assert first.result().status_code == 200


# Deadline: the request answers 504 at its deadline; calls not yet started never run.


def test_a_request_past_its_deadline_gets_504_and_its_remaining_calls_never_run():
    reader = FakeReader(n_layers=40, delay=0.1)
    with running(reader, request_timeout=0.5) as (client, host):
        started = time.monotonic()
        response = client.post("/api/layer-scores", json={**SCORE, "layers": list(range(40))})
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert "0.5 s" in one_line(response) and "fewer layers" in one_line(response)
        assert elapsed < 0.5 + 1.0
        time.sleep(0.4)
        made = len(reader.calls)
        assert 1 <= made < 15
        time.sleep(0.4)
        assert len(reader.calls) == made, "calls went on after the deadline"
        assert host.waiting == 0


def test_a_request_that_times_out_in_the_queue_never_runs():
    gate = threading.Event()
    reader = FakeReader(gate=gate)
    with running(reader, request_timeout=0.6) as (client, _):
        with ThreadPoolExecutor(max_workers=1) as pool:
            first = pool.submit(client.post, "/api/score", json={**SCORE, "question": "First?"})
            wait_until(reader.started.is_set)
            started = time.monotonic()
            queued = client.post("/api/ask", json=ASK)
            assert queued.status_code == 504 and time.monotonic() - started < 2
            assert first.result().status_code == 504  # it held the model past its deadline
        gate.set()
        time.sleep(0.3)
        assert [what for what, _ in reader.calls] == ["score"], "the queued call ran"
        assert client.post("/api/score", json=SCORE).status_code == 200


# Disconnects: a request whose client is gone stops between model calls.


def test_work_stops_when_the_client_disconnects():
    reader = FakeReader(n_layers=40, delay=0.1)
    with served(reader, request_timeout=60) as server:
        with (
            httpx.Client(base_url=server.url, timeout=0.4) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.post("/api/layer-scores", json={**SCORE, "layers": list(range(40))})
        host = host_of(server)
        wait_until(lambda: host.waiting == 0, timeout=5)
        made = len(reader.calls)
        time.sleep(0.4)
        assert len(reader.calls) == made < 20, "calls went on after the client left"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/api/score", json=SCORE).status_code == 200


# Trusted Host on a loopback address (DNS rebinding).


@pytest.fixture(scope="module")
def loopback():
    with running(FakeReader()) as (client, _):
        yield client


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("127.0.0.1", 200),
        ("127.0.0.1:8000", 200),
        ("localhost:1234", 200),
        ("LOCALHOST", 200),
        ("[::1]:80", 200),
        ("evil.example", 400),
        ("evil.example:8000", 400),
        ("127.0.0.1.evil.example", 400),
        ("localhost@evil.example", 400),
        ("my-box", 400),
    ],
)
def test_a_loopback_server_answers_only_loopback_host_names(loopback, header, status):
    response = loopback.get("/api/health", headers={"Host": header})
    assert response.status_code == status, response.text
    if status == 400:
        error = one_line(response)
        assert "DNS rebinding" in error and "--allow-host" in error
        assert loopback.post("/api/score", json=SCORE, headers={"Host": header}).status_code == 400


def test_allowed_hosts_extend_the_loopback_names():
    with running(FakeReader(), allowed_hosts=["My-Box"]) as (client, _):
        assert client.get("/api/health", headers={"Host": "my-box:8000"}).status_code == 200
        assert client.get("/api/health", headers={"Host": "other"}).status_code == 400
    with running(FakeReader(), allowed_hosts=["*"]) as (client, _):
        assert client.get("/api/health", headers={"Host": "other"}).status_code == 200


def test_host_name_parsing():
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == "[::1]" and host_name("[::1]") == "[::1]"
    assert host_name("localhost.") == "localhost"
    assert host_name("::1") == "::1"  # not a valid Host header; never equals "[::1]"


# 500: a generic body, the detail in the log.


def test_a_failing_model_call_gets_a_generic_500_and_the_detail_is_logged(server_log):
    reader = FakeReader(fail=RuntimeError("exploded reading /home/secret/weights.bin"))
    with TestClient(create_app(reader=reader)) as client:
        response = client.post("/api/score", json=SCORE)
        assert response.status_code == 500
        assert response.json() == {"error": INTERNAL_ERROR}
        reader.fail = None
        assert client.post("/api/score", json=SCORE).status_code == 200
    assert "/home/secret/weights.bin" in server_log.text


class BrokenReader(FakeReader):
    @property
    def n_layers(self) -> int:  # describe_reader reads it outside any model call
        raise ValueError("no layers in /home/secret/config.json")

    @n_layers.setter
    def n_layers(self, value: int) -> None:
        pass


def test_an_unexpected_error_outside_a_model_call_gets_a_generic_500(server_log):
    with TestClient(create_app(reader=BrokenReader())) as client:
        response = client.get("/api/health")
        assert response.status_code == 500
        assert response.json() == {"error": INTERNAL_ERROR}
        assert client.get("/").status_code == 200
    assert "/home/secret/config.json" in server_log.text


# A load test: 50 concurrent mixed requests on 127.0.0.1.


def test_load_of_mixed_slow_and_abandoned_requests():
    """50 concurrent requests: 6 slow ones first (2 abandoned by their client), then a burst
    of 44 mixed ones. The queue cap answers 503, health stays fast, nothing outlives its
    deadline, calls never overlap and stop when every request has ended."""
    reader = FakeReader(n_layers=64, delay=0.1)
    timeout = 1.5  # a "long" request needs 64 x 0.1 s unbounded: far past its deadline
    # Bounds below are loose (a loaded CI machine is slow) yet below an unbounded 6.4 s.
    slack = 3.5
    first = ["long", "long", "abandon", "abandon", "layers", "layers"]
    burst = [["ask", "score", "layers", "long", "abandon"][i % 5] for i in range(44)]
    requests = {
        "ask": ("/api/ask", ASK),
        "score": ("/api/score", SCORE),
        "layers": ("/api/layer-scores", {**SCORE, "layers": [0, 1, 2]}),
        "long": ("/api/layer-scores", {**SCORE, "layers": list(range(64))}),
        "abandon": ("/api/layer-scores", {**SCORE, "layers": list(range(64))}),
    }
    outcomes: list[tuple[str, int | str, float]] = []
    record = threading.Lock()
    ready = threading.Barrier(len(burst))
    health_times: list[float] = []
    with served(reader, max_waiting=8, request_timeout=timeout) as server:
        host = host_of(server)

        def one(kind: str, wave: threading.Barrier | None) -> None:
            path, body = requests[kind]
            patience = 0.4 if kind == "abandon" else 30
            with httpx.Client(base_url=server.url, timeout=patience) as client:
                if wave is not None:
                    wave.wait(10)
                started = time.monotonic()
                try:
                    status: int | str = client.post(path, json=body).status_code
                except httpx.TimeoutException:
                    status = "gone"  # the client closes the connection
            with record:
                outcomes.append((kind, status, time.monotonic() - started))

        def health() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(20):
                    started = time.monotonic()
                    assert client.get("/api/health").status_code == 200
                    health_times.append(time.monotonic() - started)
                    time.sleep(0.05)

        with ThreadPoolExecutor(max_workers=len(first) + len(burst) + 1) as pool:
            jobs = [pool.submit(one, kind, None) for kind in first]
            wait_until(lambda: host.waiting >= len(first) or bool(outcomes))
            jobs += [pool.submit(one, kind, ready) for kind in burst]
            jobs.append(pool.submit(health))
            for job in jobs:
                job.result()
        wait_until(lambda: host.waiting == 0, timeout=5)
        made = len(reader.calls)
        time.sleep(0.3)
        assert len(reader.calls) == made, "model calls went on after every request ended"
        # Once the load is over, the server answers again at once.
        with httpx.Client(base_url=server.url, timeout=30) as client:
            after = [
                client.post(requests[kind][0], json=requests[kind][1]).status_code
                for kind in ("ask", "score")
            ]
        assert after == [200, 200], after

    statuses = [status for _, status, _ in outcomes]
    assert len(outcomes) == 50
    assert set(statuses) <= {200, 503, 504, "gone"}, statuses
    assert [status for _, status, _ in outcomes if status == "gone"], "no request was abandoned"
    # How many quick requests are served under the load depends on the machine's speed
    # (2 busy cores have served 1 of the burst's 17 quick ones in time, and on one CI run
    # none: every admitted one queued behind long ones past its deadline), so serving is
    # checked once the load is over (``after`` above), not counted here.
    assert statuses.count(503) >= 20 and statuses.count(504) >= 2
    assert all(status in (503, 504) for kind, status, _ in outcomes if kind == "long")
    for kind, status, seconds in outcomes:
        if status != "gone":
            assert seconds < timeout + slack, (kind, status, seconds)
    assert max(health_times) < slack
    assert reader.most == 1, "two model calls ran at the same time"


# The command line.


def test_cli_serve_passes_the_bounds(monkeypatch):
    import uvicorn

    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    logger = logging.getLogger("latentqa.server")  # keep `serve` from configuring it
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    assert serve_cli.DEFAULT_MAX_WAITING == DEFAULT_MAX_WAITING
    assert serve_cli.DEFAULT_REQUEST_TIMEOUT == DEFAULT_REQUEST_TIMEOUT
    assert cli.main(["serve"]) == 0  # the default target and its shipped decoder
    host = apps[-1].state.host
    assert (host.max_waiting, host.request_timeout) == (DEFAULT_MAX_WAITING, 120.0)
    argv = ["serve", "--max-waiting", "3", "--request-timeout", "5", "--allow-host", "box"]
    assert cli.main(argv) == 0
    host = apps[-1].state.host
    assert (host.max_waiting, host.request_timeout) == (3, 5.0)
    for bad in (["--max-waiting", "-1"], ["--request-timeout", "0"], ["--request-timeout", "nan"]):
        assert cli.main(["serve", *bad]) == 2
    assert len(apps) == 2
