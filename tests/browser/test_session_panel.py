"""The detail panel links the runs of the job's session (issue 16)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import row
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_detail_panel_links_the_sessions_runs(target: Stack, dashboard) -> None:  # type: ignore[no-untyped-def]
    first = target.submit(
        {"executor": "process", "command": ["true"], "session": {"name": "panel-session"}}
    )
    sid = first["session_id"]
    second = target.submit({"executor": "process", "command": ["true"], "session": {"resume": sid}})
    target.wait_status(second["id"], "succeeded", timeout=60)

    page = dashboard.open(target.url)
    row(page, second["id"]).locator(".row-main").click()
    panel = page.locator("#detail .detail-session")
    expect(panel).to_be_visible()
    expect(panel.locator("h3")).to_have_text(f"Session panel-session · {sid}")
    links = panel.locator("ol li a")
    expect(links).to_have_count(2)
    expect(links.nth(0)).to_have_attribute("href", f"#/runs/{first['id']}")
    expect(panel.locator("li.current a")).to_have_attribute("href", f"#/runs/{second['id']}")
    links.nth(0).click()
    expect(page).to_have_url(f"{target.url}/#/runs/{first['id']}")
    dashboard.assert_no_errors()
