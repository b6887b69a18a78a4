"""Fixtures for the dashboard tests: one headless Chromium per session, pages that record
every JavaScript error, and the place screenshots go.

Chromium is the system's (/usr/bin/chromium); the root conftest skips these tests when it is
missing unless LAUNCHBAY_REQUIRE_BROWSER=1, which CI sets.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support import Stack

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# expect() waits this long unless a call says otherwise (its default of 5 s is tight on a
# shared 2-core machine).
EXPECT_TIMEOUT_MS = 15_000
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}

# Point the tests at a running Launchbay instead of the session stack, e.g. the one
# `make run` starts: LAUNCHBAY_E2E_URL=http://127.0.0.1:8000 pytest tests/browser
EXTERNAL_URL = os.environ.get("LAUNCHBAY_E2E_URL", "").rstrip("/")
needs_own_stack = pytest.mark.skipif(
    bool(EXTERNAL_URL), reason="starts its own API process next to the session stack"
)

# Browser console lines that report the network, not our code: expected only while a test
# has deliberately stopped the API.
NETWORK_NOISE = (
    "Failed to load resource",
    "ERR_CONNECTION_REFUSED",
    "WebSocket connection to",
    "net::ERR_",
    "EventSource",
)


def chromium_path() -> str:
    candidates = ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Chromium not found (apt-get install -y chromium)")


class ExternalStack(Stack):
    """The Stack interface (url, http, submit, job, wait_status) over an API we did not start."""

    def __init__(self, url: str) -> None:  # noqa: D107 - no settings or supervisor here
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Stack:
    """The Launchbay under test: LAUNCHBAY_E2E_URL if set, else the session's real stack."""
    if EXTERNAL_URL:
        return ExternalStack(EXTERNAL_URL)
    return request.getfixturevalue("stack")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium for one module. Not for the session: Playwright's sync API keeps an event
    loop running in the main thread while it is open, and async tests that the xdist
    scheduler puts on the same process after the browser modules would find it."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@dataclass
class PageErrors:
    """Everything a page reported as an error: uncaught exceptions and console errors."""

    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def unexpected(self) -> list[str]:
        console = [c for c in self.console_errors if not any(a in c for a in self.allowed)]
        return [f"pageerror: {e}" for e in self.page_errors] + [f"console: {c}" for c in console]


@dataclass
class Dashboard:
    """Opens dashboard pages in fresh contexts and checks, at teardown, that none erred."""

    browser: object
    opened: list[tuple[object, PageErrors]] = field(default_factory=list)
    contexts: list[object] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def allow_console(self, *fragments: str) -> None:
        """Console errors containing one of ``fragments`` are expected by this test (the
        browser logs every 4xx/5xx answer and refused connection, which is not our code)."""
        self.allowed.extend(fragments)

    def open(
        self,
        url: str,
        *,
        viewport: dict[str, int] | None = None,
        color_scheme: str = "light",
        context: BrowserContext | None = None,
        wait_live: bool = True,
    ) -> Page:
        from playwright.sync_api import expect

        if context is None:
            context = self.browser.new_context(  # type: ignore[attr-defined]
                viewport=viewport or DESKTOP,
                color_scheme=color_scheme,
                reduced_motion="no-preference",
            )
            self.contexts.append(context)
        page = context.new_page()
        errors = PageErrors(allowed=self.allowed)
        page.on("pageerror", lambda exc: errors.page_errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: errors.console_errors.append(msg.text) if msg.type == "error" else None,
        )
        self.opened.append((page, errors))
        page.set_default_timeout(15_000)
        page.goto(url)
        if wait_live:
            expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
        return page

    def assert_no_errors(self) -> None:
        problems = [p for _, e in self.opened for p in e.unexpected()]
        assert problems == [], "JavaScript errors in the dashboard:\n" + "\n".join(problems)

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()  # type: ignore[attr-defined]


@pytest.fixture
def dashboard(browser: object) -> Iterator[Dashboard]:
    """Open pages with ``dashboard.open(url)``; the test fails if any of them logged an error."""
    d = Dashboard(browser)
    try:
        yield d
        d.assert_no_errors()
    finally:
        d.close()


@pytest.fixture(scope="session")
def screenshot() -> Callable[[object, str], Path]:
    """Save a full-page screenshot as test-artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: object, name: str, *, full_page: bool = False) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")  # type: ignore[attr-defined]
        assert path.stat().st_size > 5000, f"screenshot {path} looks empty"
        return path

    return take
