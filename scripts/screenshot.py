"""Take the README screenshot of the page: ``python scripts/screenshot.py``.

Serves the page on a free loopback port, opens it in headless Chromium (the system
browser, e.g. Debian's ``chromium`` package, driven by Playwright's Python client;
never ``playwright install``), asks the first example's questions, charts its answer
over the layers and saves a full-page PNG.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Flags for a sandbox-free, offline, quiet headless Chromium."""


def find_chromium() -> str | None:
    """The system Chromium binary, or ``None``."""
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def capture(
    url: str,
    out: str | Path,
    *,
    chromium: str | None = None,
    browser: Any = None,
    max_new_tokens: int = 24,
    width: int = 1280,
    timeout_s: float = 600.0,
) -> Path:
    """Open the page at ``url``, ask and chart the first example, save a screenshot.

    Args:
        url: The server's base URL.
        out: The PNG to write.
        chromium: The browser binary (default: :func:`find_chromium`).
        browser: An already launched Playwright ``Browser`` to use instead.
        max_new_tokens: Answer length for the screenshot.
        width: Viewport width in CSS pixels.
        timeout_s: How long to wait for each step (the model may be slow on CPU).

    Returns:
        The path written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if browser is not None:
        _shoot(browser, url, out, max_new_tokens, width, timeout_s)
        return out
    from playwright.sync_api import sync_playwright

    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("Chromium not found (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=binary, headless=True, args=CHROMIUM_ARGS
        )
        try:
            _shoot(launched, url, out, max_new_tokens, width, timeout_s)
        finally:
            launched.close()
    return out


def _shoot(browser: Any, url: str, out: Path, tokens: int, width: int, timeout_s: float) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(timeout_s * 1000)
        page.goto(url.rstrip("/") + "/")
        page.wait_for_selector("#status.ready")
        page.fill("#max-tokens", str(tokens))
        page.click("#ask")
        page.wait_for_selector("#answers .a.answer")
        page.click("#chart-run")
        page.wait_for_selector("#chart .legend:has-text('layers scored')")
        page.mouse.move(0, 0)
        page.screenshot(path=str(out), full_page=True)
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    """Serve a reader (default: the shipped decoder on the embedded model) and capture it."""
    parser = argparse.ArgumentParser(
        prog="python scripts/screenshot.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="docs/screenshot.png", help="PNG to write")
    parser.add_argument("--target", default="smollm2-135m", help="target model spec")
    parser.add_argument("--decoder", default=None, help="decoder folder (default: shipped)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length")
    args = parser.parse_args(argv)

    from latentqa.reader import Reader
    from latentqa.server import BackgroundServer, create_app

    reader = Reader.load(args.target, args.decoder, device=args.device)
    with BackgroundServer(create_app(reader=reader)) as server:
        path = capture(server.url, args.out, max_new_tokens=args.max_new_tokens)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
