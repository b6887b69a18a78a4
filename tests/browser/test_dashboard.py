"""The dashboard in real headless Chromium against the real target (uvicorn + Celery worker).

The issue's scenario: submit a countdown from the form and watch its bar reach 100 % and its
status turn succeeded; cancel a running job from the queue; a second tab sees both without
a reload; no JavaScript errors (the ``dashboard`` fixture fails the test on any).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PHONE
from tests.browser.helpers import (
    JOB_WAIT_MS,
    pick_type,
    progress_seen,
    record_progress,
    row,
    row_order,
    submit_countdown,
    submit_form,
)
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_submit_watch_cancel_and_second_tab(target: Stack, dashboard) -> None:
    tab1 = dashboard.open(target.url)
    tab2 = dashboard.open(target.url)  # a second tab, opened before anything happens
    record_progress(tab1)
    streams: list[str] = []
    tab1.on(
        "request",
        lambda r: streams.append(r.url) if r.url.split("?")[0].endswith("/events") else None,
    )

    # -- submit a countdown from the generated form and watch it finish
    seconds = tab1.locator('#job-form input[name="seconds"]')
    pick_type(tab1, "Countdown")
    expect(seconds).to_have_attribute("type", "number")
    expect(seconds).to_have_attribute("min", "1")
    expect(seconds).to_have_attribute("max", "60")
    expect(seconds).to_have_value("10")  # the schema's default
    done = submit_countdown(tab1, 3)
    assert done["type"] == "countdown" and done["spec"]["params"] == {"seconds": 3}

    r1 = row(tab1, done["id"])
    expect(r1).to_be_visible()
    expect(r1.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100", timeout=JOB_WAIT_MS
    )
    expect(r1).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(r1.locator(".badge")).to_have_text("succeeded")  # in words, not colour alone
    expect(r1.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    seen = progress_seen(tab1, done["id"])
    assert any(0 < v < 100 for v in seen), f"no intermediate progress was shown: {seen}"

    # the detail panel followed the new job over its SSE stream
    assert any(f"/api/v1/jobs/{done['id']}/events" in u for u in streams), streams
    detail = tab1.locator("#detail")
    expect(detail.locator("#detail-title")).to_have_text("Countdown")
    expect(detail.locator(".badge")).to_have_text("succeeded", timeout=JOB_WAIT_MS)
    expect(detail.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(detail.locator(".detail-message")).to_have_text("Countdown complete!")
    expect(detail.locator(".result")).to_contain_text('"message": "Countdown complete!"')
    expect(detail.locator(".log")).to_contain_text("3...")
    expect(detail.locator('.meta-item[data-key="finished"] dd')).not_to_have_text("—")

    # -- cancel a running job from the queue
    long = submit_countdown(tab1, 60)
    r2 = row(tab1, long["id"])
    expect(r2).to_have_attribute("data-status", "running", timeout=JOB_WAIT_MS)
    # running first, ended after it
    order = row_order(tab1)
    assert order.index(long["id"]) < order.index(done["id"]), order
    r2.get_by_role("button", name="Cancel", exact=True).click()
    expect(r2).to_have_attribute("data-status", "cancelled", timeout=JOB_WAIT_MS)
    expect(r2.locator(".badge")).to_have_text("cancelled")
    expect(r2.get_by_role("button", name="Cancel", exact=True)).to_have_count(0)
    assert target.job(long["id"])["status"] == "cancelled"

    # -- the second tab saw both, live, without a reload
    expect(tab2.locator("#conn")).to_have_text("live")
    expect(row(tab2, done["id"])).to_have_attribute("data-status", "succeeded")
    expect(row(tab2, done["id"]).get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100"
    )
    expect(row(tab2, long["id"])).to_have_attribute("data-status", "cancelled")
    assert tab2.evaluate("performance.getEntriesByType('navigation').length") == 1

    # the header's stats are live too
    expect(tab2.locator('.chip[data-stat="workers"] .chip-n')).not_to_have_text("0")


# A job no runner can take: it stays queued until cancelled.
NEVER_TAKEN = {
    "executor": "builtin",
    "type": "countdown",
    "params": {"seconds": 5},
    "demands": {"tags": ["no-such-runner-tag"]},
}


def test_cancel_a_queued_job(target: Stack, dashboard) -> None:
    """A job no worker can take stays queued, shows a Cancel button, and cancels."""
    page = dashboard.open(target.url)
    job = target.submit(NEVER_TAKEN)
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "queued")
    expect(r.locator(".badge")).to_have_text("queued")
    r.get_by_role("button", name="Cancel", exact=True).click()
    expect(r).to_have_attribute("data-status", "cancelled", timeout=JOB_WAIT_MS)


def test_a_retry_waiting_out_its_backoff_says_when(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    job = target.submit(
        {
            "executor": "process",
            "name": "flaky",
            "max_attempts": 2,
            "retry_backoff_s": 600,
            "command": ["sh", "-c", "exit 3"],
        }
    )
    r = row(page, job["id"])
    expect(r.locator(".row-msg")).to_contain_text("attempt 2 after", timeout=JOB_WAIT_MS)
    expect(r).to_have_attribute("data-status", "queued")
    r.locator(".row-main").click()
    detail = page.locator("#detail")
    expect(detail.locator(".detail-message")).to_contain_text("Retrying after")
    expect(detail.locator(".detail-error")).to_contain_text("attempt 1 failed")
    r.get_by_role("button", name="Cancel", exact=True).click()
    expect(r).to_have_attribute("data-status", "cancelled", timeout=JOB_WAIT_MS)


def test_a_reason_read_in_one_attempt_is_not_shown_for_the_next(target: Stack, dashboard) -> None:
    """A tab can miss a job leaving the queue (a reconnect's snapshot): the reason the API
    gave for attempt 1 must not be shown for attempt 2's backoff."""
    page = dashboard.open(target.url)
    job = target.submit(NEVER_TAKEN)
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "queued")
    upsert = """async (job) => {
      const { store } = await import('/state.js');
      store.upsert(job);
    }"""
    slot = {"reason": "slot", "message": "waiting for a free runner slot"}
    page.evaluate(upsert, {**job, "waiting": slot})
    expect(r.locator(".row-msg")).to_have_text("waiting for a free runner slot")
    # Attempt 2, straight from queued to queued: no running state in between to clear it.
    retry = {**job, "attempt": 2, "not_before": "2099-01-01T00:00:00Z", "waiting": None}
    page.evaluate(upsert, retry)  # as an event carries it: no reason
    expect(r.locator(".row-msg")).to_contain_text("attempt 2 after")
    assert target.http.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200


def test_client_and_server_validation(target: Stack, dashboard) -> None:
    dashboard.allow_console("status of 422")  # the browser logs the refused POST itself
    page = dashboard.open(target.url)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    pick_type(page, "Countdown")
    seconds = page.locator('#job-form input[name="seconds"]')

    # the browser's constraint validation stops an out-of-range value before it is sent
    seconds.fill("0")
    page.locator('#job-form button[type="submit"]').click()
    expect(page.locator("#f-seconds-err")).to_contain_text("1")
    expect(seconds).to_have_attribute("aria-invalid", "")
    assert posts == []

    # with the browser's check removed, the API's 422 is shown next to the field it names
    seconds.evaluate("el => el.removeAttribute('min')")
    seconds.fill("0")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/jobs")) as info:
        page.locator('#job-form button[type="submit"]').click()
    assert info.value.status == 422
    expect(page.locator("#f-seconds-err")).to_contain_text("seconds must be >= 1")

    # editing the field clears the message
    seconds.fill("2")
    expect(page.locator("#f-seconds-err")).to_have_text("")

    # array parameters: one per line, with their item limit and URL check
    pick_type(page, "URL fetcher")
    urls = page.locator('#job-form textarea[name="urls"]')
    expect(urls).to_have_attribute("required", "")
    urls.fill("\n".join(f"http://127.0.0.1/{i}" for i in range(11)))
    page.locator('#job-form button[type="submit"]').click()
    expect(page.locator("#f-urls-err")).to_contain_text("At most 10")
    urls.fill("ftp://example.com")
    page.locator('#job-form button[type="submit"]').click()
    expect(page.locator("#f-urls-err")).to_contain_text("Not an http(s) URL")
    assert len(posts) == 1, posts  # only the one the server refused


def test_process_form_splits_the_command_and_shows_the_log(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    pick_type(page, "Process")
    cmd = page.locator('#job-form input[name="command"]')
    cmd.fill("python3 -c \"print('hello from the dashboard')\"")
    expect(page.locator("#job-form .argv-preview")).to_have_text(
        '["python3","-c","print(\'hello from the dashboard\')"]'
    )
    page.locator("#job-form details.options summary").click()
    page.locator('#job-form [data-group="spec"] input[name="name"]').fill("greeting")
    job = submit_form(page)
    assert job["spec"]["command"] == ["python3", "-c", "print('hello from the dashboard')"]
    assert job["name"] == "greeting"

    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    expect(r.locator(".row-title")).to_have_text("greeting")
    detail = page.locator("#detail")
    expect(detail.locator("#detail-title")).to_have_text("greeting")
    expect(detail.locator(".log")).to_contain_text("hello from the dashboard", timeout=JOB_WAIT_MS)
    expect(detail.locator('.meta-item[data-key="exit code"] dd')).to_have_text("0")

    # a failing command: status in words, the error shown, the row says why
    cmd.fill("python3 -c \"import sys; print('boom', file=sys.stderr); sys.exit(3)\"")
    page.locator('#job-form [data-group="spec"] input[name="name"]').fill("")
    bad = submit_form(page)
    rb = row(page, bad["id"])
    expect(rb).to_have_attribute("data-status", "failed", timeout=JOB_WAIT_MS)
    expect(rb.locator(".badge")).to_have_text("failed")
    expect(detail.locator(".log .stderr")).to_contain_text("boom", timeout=JOB_WAIT_MS)


def test_unclosed_quote_is_refused_in_the_browser(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    pick_type(page, "Process")
    page.locator('#job-form input[name="command"]').fill("echo 'oops")
    page.locator('#job-form button[type="submit"]').click()
    expect(page.locator("#f-command-err")).to_contain_text("Unclosed single quote")


def test_theme_toggle_follows_system_and_persists(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url, color_scheme="dark")
    html = page.locator("html")
    bg = "() => getComputedStyle(document.body).backgroundColor"
    dark_bg = page.evaluate(bg)
    expect(html).not_to_have_attribute("data-theme", "light")
    toggle = page.locator("#theme-toggle")
    toggle.click()  # auto -> light
    expect(html).to_have_attribute("data-theme", "light")
    light_bg = page.evaluate(bg)
    assert light_bg != dark_bg
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")
    assert page.evaluate(bg) == light_bg
    toggle.click()  # light -> dark
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate(bg) == dark_bg
    toggle.click()  # dark -> back to following the system
    assert page.evaluate("document.documentElement.dataset.theme") is None
    assert page.evaluate("localStorage.getItem('lb.theme')") is None


def test_usable_at_375px(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url, viewport=PHONE)
    job = submit_countdown(page, 30)
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "running", timeout=JOB_WAIT_MS)
    # nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    cancel = r.get_by_role("button", name="Cancel", exact=True)
    box = cancel.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]

    # the detail opens as a full-width sheet and closes again
    r.locator(".row-main").click()
    sheet = page.locator("#detail")
    expect(sheet).to_be_visible()
    sbox = sheet.bounding_box()
    assert sbox and sbox["x"] == 0 and sbox["width"] == PHONE["width"]
    expect(sheet.get_by_role("progressbar")).not_to_have_attribute(
        "aria-valuenow", "0", timeout=JOB_WAIT_MS
    )
    sheet.get_by_role("button", name="Close details").click()
    expect(sheet).to_be_hidden()
    cancel.click()
    expect(r).to_have_attribute("data-status", "cancelled", timeout=JOB_WAIT_MS)


def test_clear_completed_and_filters(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    job = target.submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 20}})
    target.wait_status(job["id"], "succeeded")
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    page.locator('#queue-filter button[data-filter="active"]').click()
    expect(r).to_have_count(0)
    page.locator('#queue-filter button[data-filter="all"]').click()
    expect(r).to_have_count(1)
    page.get_by_role("button", name="Clear completed").click()
    expect(r).to_have_count(0)
    expect(page.locator('#queue .job-row[data-status="succeeded"]')).to_have_count(0)


def test_queue_order_running_then_queued_then_ended_newest_first(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    order = page.evaluate(
        """async () => {
          const { compareJobs } = await import('/queue.js');
          const t = (s) => new Date(Date.UTC(2030, 0, 1, 0, 0, s)).toISOString();
          const jobs = [
            {id: 'old-done', status: 'succeeded', created_at: t(1), finished_at: t(5)},
            {id: 'queued-2', status: 'queued', created_at: t(9)},
            {id: 'running', status: 'running', created_at: t(2), started_at: t(3)},
            {id: 'new-failed', status: 'failed', created_at: t(4), finished_at: t(8)},
            {id: 'queued-1', status: 'queued', created_at: t(6)},
            {id: 'claimed', status: 'claimed', created_at: t(7)},
          ];
          return jobs.sort(compareJobs).map(j => j.id);
        }"""
    )
    assert order == ["running", "claimed", "queued-1", "queued-2", "new-failed", "old-done"]
