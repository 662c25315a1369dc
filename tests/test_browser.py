"""The page end to end: headless Chromium (Debian's package) driven by Playwright's client.

Uses the system browser at /usr/bin/chromium (``apt-get install chromium``); never
``playwright install``. Skipped, with the reason, where Chromium or playwright is missing.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path

import httpx
import pytest
from lit_fixtures import DIALOG, QUESTIONS, build_tiny_decoder

from latentqa.reader import Reader
from latentqa.server import BackgroundServer, create_app
from latentqa.server.examples import RELATIONS_DECODER


def _load_script(name: str):
    """A module of scripts/ (not a package: the scripts run from the repository)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


screenshot = _load_script("screenshot")
CHROMIUM_ARGS, capture, find_chromium = (
    screenshot.CHROMIUM_ARGS,
    screenshot.capture,
    screenshot.find_chromium,
)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not found at /usr/bin/chromium (apt-get install chromium)"
)
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> Reader:
    model, decoder = build_tiny_decoder(tmp_path_factory.mktemp("browser"))
    return Reader.load(str(model), decoder, device="cpu")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_type_a_dialog_ask_and_chart(reader, page, tmp_path):
    with BackgroundServer(create_app(reader=reader)) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#status.ready")
        assert "ready" in page.inner_text("#status").lower()
        assert page.inner_text("#info-device") == "cpu"
        assert page.inner_text("#info-layers").startswith("4")
        # Type a dialog of our own instead of the example.
        while page.locator("#turns .remove").count():
            page.locator("#turns .remove").first.click()
        page.click("[data-add=system]")
        page.locator("#turns .content").nth(0).fill(DIALOG[0]["content"])
        page.click("[data-add=user]")
        page.locator("#turns .content").nth(1).fill(DIALOG[1]["content"])
        page.fill("#questions", "\n".join(QUESTIONS))
        page.fill("#max-tokens", "4")
        page.select_option("#layer", "1")
        page.click("#ask")
        page.wait_for_function("document.querySelectorAll('#answers .a.answer').length === 2")
        shown = page.locator("#answers .a.answer").all_inner_texts()
        expected = reader.ask(DIALOG, QUESTIONS, max_new_tokens=4, layer=1)
        assert shown == [answer or "(empty answer)" for answer in expected]
        assert page.is_hidden("#ask-error")
        # Beside each answer: its evidence (real vs zeroed activations), with a tooltip.
        weighed = reader.ask(DIALOG, QUESTIONS, max_new_tokens=4, layer=1, evidence=True)
        badges = page.locator("#answers .evidence")
        assert badges.count() == len(QUESTIONS)
        for index, answer in enumerate(weighed):
            badge = badges.nth(index)
            text = badge.inner_text()
            assert re.fullmatch(r"(read|guessed) [+\u2212]\d+\.\d\d nats/token", text), text
            assert text.startswith(answer.label)
            shown_value = float(text.split()[1].replace("\u2212", "-"))
            assert shown_value == pytest.approx(answer.evidence, abs=0.011)
            tooltip = badge.get_attribute("title")
            assert "reference dialogs" in tooltip and "zeroed" in tooltip
        assert "16 other dialogs" in page.inner_text("#evidence-legend")
        # The per-layer chart: one bar per layer and candidate answer.
        page.fill("#chart-question", QUESTIONS[0])
        page.fill("#chart-answers", "A pirate captain.\nA French chef.")
        page.click("#chart-run")
        page.wait_for_selector("#chart .legend:has-text('4 layers scored')")  # filled in parts
        assert page.locator("#chart svg rect[fill]").count() == 4 * 2
        # A bad request shows the server's message and the page keeps working.
        page.locator("#turns .remove").nth(1).click()
        page.click("#ask")
        page.wait_for_selector("#ask-error:not([hidden])")
        assert "no user turn" in page.inner_text("#ask-error")
        page.click("[data-add=user]")
        page.locator("#turns .content").nth(1).fill(DIALOG[1]["content"])
        page.click("#ask")
        page.wait_for_function("document.querySelectorAll('#answers .a.answer').length === 2")
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000


def test_api_docs_page_renders_the_schema(reader, page):
    with BackgroundServer(create_app(reader=reader)) as server:
        page.goto(server.url + "/docs")
        page.wait_for_selector("#endpoints .card")
        text = page.inner_text("#endpoints")
        routes = ("/api/ask", "/api/score", "/api/layer-scores", "/api/health", "/api/steer")
        for route in routes:
            assert route in text
        assert "max length 20000" in text


def test_page_shows_loading_then_ready(reader, page):
    release = threading.Event()

    def slow() -> Reader:
        release.wait(60)
        return reader

    with BackgroundServer(create_app(slow, target="tiny-model", device="cpu")) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#status.loading")
        assert "loading" in page.inner_text("#status").lower()
        assert page.is_disabled("#ask") and page.inner_text("#info-target") == "tiny-model"
        # The example dialog is there while the model loads.
        assert page.locator("#turns .turn").count() >= 2
        release.set()
        page.wait_for_selector("#status.ready")
        assert page.is_enabled("#ask")


def test_screenshot_helper_asks_charts_and_writes_a_png(reader, browser, tmp_path):
    with BackgroundServer(create_app(reader=reader)) as server:
        out = tmp_path / "docs" / "screenshot.png"
        shot = capture(server.url, out, browser=browser, max_new_tokens=3)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_a_projector_decoder_offers_and_charts_its_own_read_layers(tmp_path, page, browser):
    options = dict(read_layers=[1, 2], read_pool="mean", projector="linear")
    model, folder = build_tiny_decoder(tmp_path / "projected", **options)
    projected = Reader.load(str(model), folder, device="cpu")
    other = Reader.base(str(model), read_layers=[1], device="cpu")
    decoders = {RELATIONS_DECODER: lambda: other}
    with BackgroundServer(create_app(reader=projected, decoders=decoders)) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#status.ready")
        layers = page.locator("#layer option")
        assert [layers.nth(i).get_attribute("value") for i in range(layers.count())] == [
            "",
            "1",
            "2",
        ]
        assert "reads layers 1, 2 only" in page.inner_text("#chart-scope")
        page.click("#chart-run")
        page.wait_for_selector("#chart .legend:has-text('2 layers scored')")
        answers = len(page.input_value("#chart-answers").strip().splitlines())
        assert page.locator("#chart svg rect[fill]").count() == 2 * answers
        # The other decoder (no projector) is offered every layer again.
        page.select_option("#decoder", RELATIONS_DECODER)
        assert layers.count() == 1 + projected.n_layers and page.is_hidden("#chart-scope")
        # The screenshot script charts the shipped decoder the same way.
        shot = capture(server.url, tmp_path / "shot.png", browser=browser, max_new_tokens=3)
        assert shot.stat().st_size > 20_000


def test_country_fact_example_asks_the_relations_decoder_about_the_subject(reader, page):
    other = Reader.base(reader.target_name, read_layers=[1], device="cpu")
    decoders = {RELATIONS_DECODER: lambda: other}
    with BackgroundServer(create_app(reader=reader, decoders=decoders)) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#status.ready")
        options = page.locator("#decoder option")
        assert [options.nth(i).get_attribute("value") for i in range(2)] == [
            "default",
            RELATIONS_DECODER,
        ]
        assert page.input_value("#decoder") == "default"
        page.select_option("#example", label="Country fact")
        assert page.input_value("#decoder") == RELATIONS_DECODER
        assert page.input_value("#subject") == "Japan"
        page.fill("#max-tokens", "3")
        with page.expect_request("**/api/ask") as sent:
            page.click("#ask")
        body = sent.value.post_data_json
        assert body["decoder"] == RELATIONS_DECODER and body["subject"] == "Japan"
        page.wait_for_function("document.querySelectorAll('#answers .a.answer').length === 2")
        shown = page.locator("#answers .a.answer").all_inner_texts()
        dialog = [{"role": "user", "content": "Tell me about Japan."}]
        expected = other.ask(dialog, body["questions"], max_new_tokens=3, subject="Japan")
        assert shown == [answer or "(empty answer)" for answer in expected]
        assert "decoder shipped:relations" in page.inner_text("#answers")
        # Another example reads the whole dialog with the server's own decoder again.
        page.select_option("#example", label="Hidden persona")
        assert page.input_value("#decoder") == "default"
        assert page.input_value("#subject") == ""


def test_steer_tab_steers_and_shows_completions_before_and_after(reader, page):
    app = create_app(reader=reader, steer_decoder=str(reader.decoder_path))
    prompt = "Hello, how are you today?"
    with BackgroundServer(app) as server:
        page.goto(server.url + "/")
        assert page.is_hidden("#panel-steer") and page.is_visible("#panel-read")
        page.click("#tab-steer")
        assert page.get_attribute("#tab-steer", "aria-selected") == "true"
        assert page.is_hidden("#panel-read") and page.is_visible("#steer-run")
        # The server's message for a bad request shows on the page.
        page.get_by_role("button", name="Remove pair 1").click()
        page.click("#steer-run")
        page.wait_for_selector("#steer-error:not([hidden])")
        assert "pairs must not be empty" in page.inner_text("#steer-error")
        page.click("#steer-add-pair")
        page.get_by_label("Question 1").fill(QUESTIONS[0])
        page.get_by_label("Answer 1").fill("The assistant is a pirate captain.")
        page.fill("#steer-prompts", prompt)
        page.fill("#steer-steps", "2")
        page.fill("#steer-tokens", "4")
        with page.expect_response("**/api/steer") as started:
            page.click("#steer-run")
        assert started.value.status == 202
        run_id = started.value.json()["id"]
        page.wait_for_selector("#steer-status:has-text('Done')")
        assert "2 steps" in page.inner_text("#steer-status")
        assert page.is_hidden("#steer-error") and page.is_enabled("#steer-run")
        assert page.get_attribute("#steer-bar", "value") == "2"
        assert page.locator("#steer-loss polyline").count() == 1
        status = httpx.get(f"{server.url}/api/steer/{run_id}").json()
        assert status["state"] == "done" and status["prompts"] == [prompt]
        rows = page.locator("#steer-results tbody tr")
        assert rows.count() == 1 and page.locator("#steer-results td.pending").count() == 0
        shown = rows.first.locator("td").all_inner_texts()
        expected = [prompt, *(text or "(empty)" for text in (*status["before"], *status["after"]))]
        assert [text.strip() for text in shown] == expected
        # A run started elsewhere holds the slot: the page says so, follows it and stops it.
        body = {"pairs": [[QUESTIONS[0], "A pirate."]], "prompts": [prompt], "steps": 200}
        assert httpx.post(f"{server.url}/api/steer", json=body).status_code == 202
        page.click("#steer-run")
        page.wait_for_selector("#steer-error:not([hidden])")
        assert "a steering run is in progress" in page.inner_text("#steer-error")
        page.click("#steer-stop")
        page.wait_for_selector("#steer-status:has-text('The run stopped')")
        assert "stopped on request" in page.inner_text("#steer-error")
        assert page.is_enabled("#steer-run") and page.is_hidden("#steer-stop")
        # Back to the Read tab with the keyboard.
        page.focus("#tab-steer")
        page.keyboard.press("ArrowLeft")
        assert page.is_visible("#panel-read") and page.is_hidden("#panel-steer")
