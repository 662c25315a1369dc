"""`/api/steer`: steering from the page's API, in the background, one run at a time.

Runs steer the tiny sensitive model of the ``paths`` fixture with its tiny decoder (CPU,
seconds); runs that must stay in a phase get a factory that waits on a gate.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from lit_fixtures import STEER_PROMPTS

import latentqa.cli as cli
from latentqa.server import create_app
from latentqa.server.schemas import MAX_STEER_PROMPTS, MAX_STEER_STEPS
from latentqa.server.steering import SteeringRunner
from latentqa.steer.model import SteerableModel

CONTROL = [["What is the emotional tone of the assistant's replies?", "Its replies are cheerful."]]
RUN = {"pairs": CONTROL, "prompts": STEER_PROMPTS[:2], "steps": 3, "max_new_tokens": 4}


class Unread:
    """A loaded reader the steering tests never read with (steering has a model of its own)."""

    spec = SimpleNamespace(read_layers=[1])
    n_layers = 4
    target_name = None
    decoder_path = "unused"
    device = "cpu"


def steering_app(paths, **options):
    options.setdefault("steer_decoder", paths["decoder"])
    return create_app(reader=Unread(), target=paths["model"], device="cpu", **options)


def runner_of(client: TestClient) -> SteeringRunner:
    return client.app.state.steering


def finished(client: TestClient, run_id: str, timeout: float = 120.0) -> dict:
    """Poll the run, as the page does, until it is no longer running."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/steer/{run_id}")
        assert response.status_code == 200, response.text
        status = response.json()
        if status["state"] != "running":
            return status
        assert time.monotonic() < deadline, f"the run did not finish: {status}"
        time.sleep(0.05)


def one_line(response) -> str:
    error = response.json()["error"]
    assert isinstance(error, str) and "\n" not in error and len(error) < 400
    return error


def test_a_run_completes_with_before_and_after_completions_and_losses(paths):
    with TestClient(steering_app(paths)) as client:
        started = client.post("/api/steer", json=RUN)
        assert started.status_code == 202, started.text
        first = started.json()
        assert first["state"] == "running" and first["steps"] == 3 and first["after"] == []
        status = finished(client, first["id"])
        assert status["state"] == "done" and status["error"] is None, status
        assert status["phase"] == "finished" and status["step"] == 3
        assert status["prompts"] == RUN["prompts"]
        assert len(status["before"]) == len(status["after"]) == len(RUN["prompts"])
        assert all(isinstance(text, str) for text in status["before"] + status["after"])
        assert len(status["losses"]) == 3 and isinstance(status["initial_loss"], float)
        assert status["decoder"].endswith("decoder") and status["seconds"] > 0
        # A second run reuses the loaded model with a fresh steering adapter.
        model = runner_of(client)._steerable
        again = client.post("/api/steer", json={**RUN, "prompts": STEER_PROMPTS[:1], "steps": 1})
        assert again.status_code == 202, again.text
        status = finished(client, again.json()["id"])
        assert status["state"] == "done" and len(status["after"]) == 1 and status["step"] == 1
        assert runner_of(client)._steerable is model and model.has_steering
        # Earlier runs stay readable.
        assert client.get(f"/api/steer/{first['id']}").json()["state"] == "done"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"pairs": []}, "pairs must not be empty"),
        ({"pairs": [["Only a question?"]]}, "pair of two strings, got 1 item"),
        ({"pairs": [["Q?", "A.", "more"]]}, "pairs[0] must be a [question, answer] pair"),
        ({"pairs": [["  ", "A."]]}, "pairs[0][0] must not be empty"),
        ({"pairs": [{"question": "Q?", "answer": ""}]}, "pairs[0][1] must not be empty"),
        ({"prompts": []}, "prompts must not be empty"),
        ({"prompts": ["hi"] * (MAX_STEER_PROMPTS + 1)}, f"at most {MAX_STEER_PROMPTS}"),
        ({"prompts": ["fine", " "]}, "prompts[1] must not be empty"),
        ({"prompts": ["x" * 1001]}, "prompts[0] is too long"),
        ({"steps": 0}, "steps must be at least 1, got 0"),
        ({"steps": MAX_STEER_STEPS + 1}, f"steps must be at most {MAX_STEER_STEPS}"),
        ({"steps": "20"}, "steps: Input should be a valid integer"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"pairs": "x"}, "pairs: Input should be a valid list"),
        (
            {"pairs": ["Q? A."]},
            "pairs[0] must be a [question, answer] pair of two strings, got a str",
        ),
        ({"layers": [1]}, "layers is not a known field"),
    ],
)
def test_bad_input_gets_422_with_a_clear_message_and_starts_nothing(paths, change, words):
    with TestClient(steering_app(paths)) as client:
        response = client.post("/api/steer", json={**RUN, **change})
        assert response.status_code == 422, response.text
        assert words in one_line(response)
        assert runner_of(client).thread is None


def test_a_second_start_while_one_runs_is_refused_and_stop_frees_the_slot(paths):
    gate = threading.Event()

    def slow_load() -> SteerableModel:
        assert gate.wait(60), "the test never opened the gate"
        return SteerableModel.load(paths["model"], paths["decoder"], device="cpu")

    with TestClient(steering_app(paths, steer_factory=slow_load)) as client:
        first = client.post("/api/steer", json=RUN).json()
        refused = client.post("/api/steer", json=RUN)
        assert refused.status_code == 409, refused.text
        error = one_line(refused)
        assert "a steering run is in progress" in error and first["id"] in error
        assert refused.json()["status"] == "steering" and refused.json()["id"] == first["id"]
        # The rest of the server keeps answering while the run is busy.
        started = time.monotonic()
        assert client.get("/api/health").status_code == 200 and client.get("/").status_code == 200
        assert time.monotonic() - started < 2
        assert client.get(f"/api/steer/{first['id']}").json()["phase"] == "loading"
        stopping = client.post(f"/api/steer/{first['id']}/stop")
        assert stopping.status_code == 200 and stopping.json()["state"] == "running"
        gate.set()
        status = finished(client, first["id"])
        assert status["state"] == "stopped" and status["error"] == "stopped on request"
        assert status["after"] == [] and status["step"] == 0
        # The slot is free again, and the model loaded by the stopped run is used.
        again = client.post("/api/steer", json={**RUN, "steps": 1})
        assert again.status_code == 202, again.text
        assert finished(client, again.json()["id"])["state"] == "done"


def test_a_run_nobody_polls_stops_and_unknown_runs_are_404(paths):
    gate = threading.Event()

    def slow_load() -> SimpleNamespace:
        assert gate.wait(60)
        return SimpleNamespace(decoder_path="never used")

    with TestClient(steering_app(paths, steer_factory=slow_load)) as client:
        runner_of(client).abandon_after = 0.2
        run_id = client.post("/api/steer", json=RUN).json()["id"]
        time.sleep(0.5)
        gate.set()
        runner_of(client).thread.join(30)
        status = client.get(f"/api/steer/{run_id}").json()
        assert status["state"] == "stopped" and "no client asked" in status["error"]
        missing = client.get("/api/steer/not-a-run")
        assert missing.status_code == 404 and "no steering run" in one_line(missing)
        assert client.post("/api/steer/not-a-run/stop").status_code == 404


def test_a_failing_run_reports_why_and_the_next_one_may_start(paths, tmp_path):
    missing = tmp_path / "no-decoder"
    with TestClient(steering_app(paths, steer_decoder=str(missing))) as client:
        for _ in range(2):
            started = client.post("/api/steer", json=RUN)
            assert started.status_code == 202, started.text
            status = finished(client, started.json()["id"])
            assert status["state"] == "failed" and "no-decoder" in status["error"]
            assert "\n" not in status["error"] and status["before"] == []


def test_steering_waits_for_the_reader_when_the_app_names_no_target(paths):
    release = threading.Event()

    def slow() -> Unread:
        release.wait(30)
        reader = Unread()
        reader.target_name = paths["model"]
        return reader

    app = create_app(slow, steer_decoder=paths["decoder"])
    with TestClient(app) as client:
        refused = client.post("/api/steer", json=RUN)
        assert refused.status_code == 503 and "loading" in one_line(refused)
        release.set()
        assert app.state.host.wait(30)
        started = client.post("/api/steer", json={**RUN, "steps": 1})
        assert started.status_code == 202, started.text
        assert finished(client, started.json()["id"])["state"] == "done"


def test_the_api_reference_lists_the_steering_routes(paths):
    with TestClient(steering_app(paths)) as client:
        schema = client.get("/openapi.json").json()
        assert {"/api/steer", "/api/steer/{run_id}", "/api/steer/{run_id}/stop"} <= set(
            schema["paths"]
        )
        limits = client.get("/api/health").json()["limits"]
        assert limits["max_steer_steps"] == MAX_STEER_STEPS
        assert client.get("/static/steer.js").status_code == 200


def test_cli_serve_takes_a_steering_decoder(paths, monkeypatch, capsys, tmp_path):
    import logging

    import uvicorn

    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    logger = logging.getLogger("latentqa.server")  # keep `serve` from configuring it
    monkeypatch.setattr(logger, "handlers", [logging.NullHandler()])
    base = ["serve", "--target", paths["model"], "--decoder", paths["decoder"], "--device", "cpu"]
    assert cli.main([*base, "--steer-decoder", paths["decoder"]]) == 0
    assert isinstance(apps[-1].state.steering, SteeringRunner)
    capsys.readouterr()
    assert cli.main([*base, "--steer-decoder", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err and len(apps) == 1
