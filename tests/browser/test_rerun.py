"""Re-runs from the dashboard in real Chromium (issue 14): the detail panel's Re-run button
makes a new job with rerun_of and opens it; "Re-run failed" re-queues every failed job;
a queued job's panel says why it waits."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.helpers import JOB_WAIT_MS, row
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_rerun_a_failed_job_from_the_detail_panel(target: Stack, dashboard) -> None:
    failed = target.submit({"executor": "process", "command": ["sh", "-c", "exit 3"]})
    target.wait_status(failed["id"], "failed")
    page = dashboard.open(target.url)
    r = row(page, failed["id"])
    expect(r).to_have_attribute("data-status", "failed", timeout=JOB_WAIT_MS)
    r.click()
    panel = page.locator("#detail")
    expect(panel.locator(".detail-id")).to_have_text(failed["id"])
    with page.expect_response(
        lambda resp: resp.url.endswith(f"/api/v1/jobs/{failed['id']}/rerun")
    ) as info:
        panel.get_by_role("button", name="Re-run", exact=True).click()
    assert info.value.status == 201, info.value.text()
    again = info.value.json()
    assert again["rerun_of"] == failed["id"] and again["id"] != failed["id"]
    # The new job opens in the panel and runs (and fails the same way) for real.
    expect(panel.locator(".detail-id")).to_have_text(again["id"])
    expect(row(page, again["id"])).to_have_attribute("data-status", "failed", timeout=JOB_WAIT_MS)
    assert target.job(again["id"])["rerun_of"] == failed["id"]


def test_rerun_failed_from_the_queue_and_why_a_job_waits(target: Stack, dashboard) -> None:
    failed = target.submit({"executor": "process", "command": ["sh", "-c", "exit 5"]})
    target.wait_status(failed["id"], "failed")
    page = dashboard.open(target.url)
    with page.expect_response(lambda resp: resp.url.endswith("/api/v1/jobs/rerun")) as info:
        page.locator("#rerun-failed").click()
    assert info.value.status == 201, info.value.text()
    made = info.value.json()["items"]
    assert failed["id"] in {j["rerun_of"] for j in made}
    for job in made:
        expect(row(page, job["id"])).to_be_visible()

    # A job held on its dependency says so in the detail panel.
    head = target.submit({"executor": "process", "command": ["sh", "-c", "sleep 5"]})
    tail = target.submit(
        {
            "executor": "process",
            "command": ["true"],
            "depends_on": [head["id"]],
            "name": f"tail-{uuid.uuid4().hex[:6]}",
        }
    )
    row(page, tail["id"]).click()
    expect(page.locator("#detail .detail-message")).to_contain_text("dependencies not done")
    target.http.post(f"/api/v1/jobs/{head['id']}/cancel")
    expect(row(page, tail["id"])).to_have_attribute("data-status", "cancelled", timeout=JOB_WAIT_MS)
