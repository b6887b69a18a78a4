"""Screenshots of a busy dashboard at 1280 and 375 px, light and dark, saved by the test run
into test-artifacts/screenshots/ (CI keeps them as an artifact)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import DESKTOP, PHONE
from tests.browser.helpers import JOB_WAIT_MS, row
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# A step that reports progress and a result the way any process can: ::progress / ::result.
_RENDER = (
    "import json, os\n"
    "os.makedirs('site', exist_ok=True)\n"
    "for i, page in enumerate(['index', 'guide', 'api'], 1):\n"
    "    open(f'site/{page}.html', 'w').write(f'<h1>{page}</h1>')\n"
    "    print(f'rendered site/{page}.html')\n"
    "    print(f'::progress {round(i * 100 / 3)} rendered {i}/3 pages', flush=True)\n"
    "print('::result ' + json.dumps({'pages': 3, 'warnings': 0}))\n"
)


@pytest.fixture
def busy_queue(target: Stack) -> Iterator[dict[str, dict[str, Any]]]:
    """Jobs in every interesting state: running, queued, succeeded, failed, cancelled."""
    jobs: dict[str, dict[str, Any]] = {}
    submit = target.submit
    jobs["primes"] = submit({"executor": "builtin", "type": "primes", "params": {"limit": 50000}})
    jobs["fib"] = submit({"executor": "builtin", "type": "fibonacci", "params": {"count": 90}})
    jobs["failed"] = submit(
        {
            "executor": "process",
            "name": "migrate-db",
            "command": [
                "python3",
                "-c",
                "import sys; print('connecting…'); "
                "print('error: relation \"users\" does not exist', "
                "file=sys.stderr); sys.exit(3)",
            ],
        }
    )
    jobs["report"] = submit(
        {
            "executor": "builtin",
            "type": "echo_delay",
            "name": "Nightly report",
            "params": {"message": "done", "delay": 30},
        }
    )
    jobs["done"] = submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 2}})
    jobs["build"] = submit(
        {
            "executor": "process",
            "name": "build-docs",
            "steps": [
                {"name": "render", "command": ["python3", "-c", _RENDER]},
                {"name": "check", "command": ["python3", "-c", "print('0 broken links')"]},
            ],
            "artifacts": ["site/*.html"],
        }
    )
    for key in ("primes", "fib", "failed", "done", "build"):
        target.wait_status(jobs[key]["id"], timeout=60)
    target.wait_status(jobs["report"]["id"], "running")
    target.http.post(f"/api/v1/jobs/{jobs['report']['id']}/cancel")
    target.wait_status(jobs["report"]["id"], "cancelled")
    jobs["queued"] = submit(
        {
            "executor": "builtin",
            "type": "countdown",
            "name": "GPU render",
            "params": {"seconds": 30},
            "demands": {"tags": ["gpu"]},
        }
    )
    jobs["running"] = submit(
        {"executor": "builtin", "type": "countdown", "params": {"seconds": 60}}
    )
    target.wait_status(jobs["running"]["id"], "running")
    try:
        yield jobs
    finally:
        for key in ("queued", "running"):
            target.http.post(f"/api/v1/jobs/{jobs[key]['id']}/cancel")


def _ready(page: Page, jobs: dict[str, dict[str, Any]]) -> None:
    running = row(page, jobs["running"]["id"])
    expect(running).to_have_attribute("data-status", "running")
    expect(running.get_by_role("progressbar")).not_to_have_attribute("aria-valuenow", "0")
    expect(row(page, jobs["queued"]["id"])).to_have_attribute("data-status", "queued")
    expect(row(page, jobs["failed"]["id"])).to_have_attribute("data-status", "failed")
    expect(page.locator('.chip[data-stat="workers"] .chip-n')).not_to_have_text("–")


def _open_running(page: Page, jobs: dict[str, dict[str, Any]]) -> None:
    r = row(page, jobs["running"]["id"])
    r.locator(".row-main").click()
    detail = page.locator("#detail")
    expect(detail.locator(".badge")).to_have_text("running")
    expect(detail.get_by_role("progressbar")).not_to_have_attribute(
        "aria-valuenow", "0", timeout=JOB_WAIT_MS
    )
    expect(detail.locator(".log .log-line").first).to_be_visible(timeout=JOB_WAIT_MS)


def test_screenshots(target: Stack, dashboard, screenshot, busy_queue) -> None:
    jobs = busy_queue
    for scheme in ("light", "dark"):
        desk = dashboard.open(target.url, viewport=DESKTOP, color_scheme=scheme)
        _ready(desk, jobs)
        screenshot(desk, f"dashboard-1280-{scheme}-overview")
        _open_running(desk, jobs)
        screenshot(desk, f"dashboard-1280-{scheme}")
        row(desk, jobs["build"]["id"]).locator(".row-main").click()
        detail = desk.locator("#detail")
        expect(detail.locator(".badge")).to_have_text("succeeded")
        expect(detail.locator(".artifacts li")).to_have_count(3)
        expect(detail.locator(".result")).to_contain_text('"pages": 3')
        screenshot(desk, f"dashboard-1280-{scheme}-finished")

        phone = dashboard.open(target.url, viewport=PHONE, color_scheme=scheme)
        _ready(phone, jobs)
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        screenshot(phone, f"dashboard-375-{scheme}")
        phone.evaluate("document.querySelector('#queue-title').scrollIntoView({block: 'start'})")
        screenshot(phone, f"dashboard-375-{scheme}-queue")
        _open_running(phone, jobs)
        screenshot(phone, f"dashboard-375-{scheme}-detail")

        for page, width in ((desk, 1280), (phone, 375)):
            _pages(page, jobs, screenshot, f"dashboard-{width}-{scheme}")


def _pages(page: Page, jobs: dict[str, dict[str, Any]], screenshot, prefix: str) -> None:
    """The Runs page (every run, newest first) and the Workers page."""
    page.goto(page.url.split("#")[0] + "#/runs")
    expect(
        page.locator(f'#page-runs .run-row[data-job-id="{jobs["running"]["id"]}"]')
    ).to_be_visible()
    expect(page.locator("#page-runs .pager-range")).not_to_be_empty()
    screenshot(page, f"{prefix}-runs")
    page.goto(page.url.split("#")[0] + "#/workers")
    held = page.locator(f'#page-workers a[href="#/runs/{jobs["running"]["id"]}"]')
    expect(held).to_be_visible()
    screenshot(page, f"{prefix}-workers")
