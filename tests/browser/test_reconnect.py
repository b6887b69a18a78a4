"""The dashboard survives its API: it says "reconnecting", keeps polling, and when the API is
back it says "live" again and shows what happened while it was away.

The API restarted here is a second uvicorn process of our own, on its own port, sharing the
session stack's database and Valkey; the session stack's API and worker keep running, so
jobs can be created and finish while "our" API is down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import NETWORK_NOISE, needs_own_stack
from tests.browser.helpers import JOB_WAIT_MS, ApiProcess, row
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def own_api(stack: Stack, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(stack, tmp_path / "api-logs")
    api.start()
    try:
        yield api
    finally:
        api.stop()


@needs_own_stack
def test_reconnects_after_api_restart_and_shows_what_it_missed(
    stack: Stack, own_api: ApiProcess, dashboard
) -> None:
    # While the API is down the browser logs refused connections: that is the point here.
    dashboard.allow_console(*NETWORK_NOISE)
    page = dashboard.open(own_api.url)
    conn = page.locator("#conn")

    before = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 2}})
    expect(row(page, before["id"])).to_be_visible()

    own_api.stop()
    expect(conn).to_have_attribute("data-state", "reconnecting")
    expect(conn).to_have_text("reconnecting")

    # Created (through the other API) and finished while ours was down.
    missed = stack.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 30}})
    stack.wait_status(missed["id"], "succeeded")
    stack.wait_status(before["id"], "succeeded")
    expect(row(page, missed["id"])).to_have_count(0)  # the page could not have known yet

    own_api.start()
    expect(conn).to_have_attribute("data-state", "live", timeout=30_000)
    expect(conn).to_have_text("live")
    expect(row(page, missed["id"])).to_have_attribute("data-status", "succeeded")
    expect(row(page, before["id"])).to_have_attribute("data-status", "succeeded")
    expect(row(page, before["id"]).get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100"
    )

    # and it is live again, not just refreshed: a new job arrives without a reload
    after = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 1}})
    expect(row(page, after["id"])).to_have_attribute(
        "data-status", "succeeded", timeout=JOB_WAIT_MS
    )


def test_polls_while_the_queue_socket_is_unavailable(target: Stack, dashboard) -> None:
    """With the WebSocket refused (a proxy that drops it, say) the page polls every 2 s."""
    dashboard.allow_console(*NETWORK_NOISE)
    context = dashboard.browser.new_context(viewport={"width": 1280, "height": 800})
    dashboard.contexts.append(context)

    def refuse(ws: WebSocketRoute) -> None:
        ws.close(code=1011, reason="refused by the test")

    context.route_web_socket("**/api/v1/ws/queue", refuse)
    page: Page = dashboard.open(target.url, context=context, wait_live=False)
    conn = page.locator("#conn")
    expect(conn).to_have_text("reconnecting")
    job = target.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 1}})
    expect(row(page, job["id"])).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(conn).to_have_attribute("data-state", "reconnecting")
    expect(page.locator('.chip[data-stat="succeeded"] .chip-n')).not_to_have_text("–")
