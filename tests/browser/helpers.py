"""Page actions the dashboard tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from orchestrator.services import Supervisor, free_port, wait_http
from tests.support import Stack

JOB_WAIT_MS = 45_000  # a countdown of a few seconds on a busy 2-core machine


def pick_type(page: Page, title: str) -> None:
    """Select a job type in the picker and wait for its form."""
    page.locator("#type-picker .type-btn", has_text=title).click()
    expect(page.locator("#job-form .form-title")).to_have_text(title)


def submit_form(page: Page) -> dict[str, Any]:
    """Press the form's submit button; return the job the API created."""
    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/jobs") and r.request.method == "POST"
    ) as info:
        page.locator('#job-form button[type="submit"]').click()
    resp = info.value
    assert resp.status == 201, resp.text()
    return resp.json()  # type: ignore[no-any-return]


def submit_countdown(page: Page, seconds: int) -> dict[str, Any]:
    pick_type(page, "Countdown")
    page.locator('#job-form input[name="seconds"]').fill(str(seconds))
    return submit_form(page)


def row(page: Page, job_id: str) -> Locator:
    return page.locator(f'#queue .job-row[data-job-id="{job_id}"]')


def record_progress(page: Page) -> None:
    """Record every aria-valuenow the queue's progress bars take, per job id."""
    page.evaluate(
        """() => {
          window.__progress = {};
          new MutationObserver((records) => {
            for (const r of records) {
              const row = r.target.closest('.job-row');
              if (!row) continue;
              const id = row.dataset.jobId;
              (window.__progress[id] = window.__progress[id] || []).push(
                Number(r.target.getAttribute('aria-valuenow')));
            }
          }).observe(document.querySelector('#queue'),
                     {subtree: true, attributes: true, attributeFilter: ['aria-valuenow']});
        }"""
    )


def progress_seen(page: Page, job_id: str) -> list[float]:
    return page.evaluate("(id) => (window.__progress || {})[id] || []", job_id)  # type: ignore[no-any-return]


def row_order(page: Page) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#queue .job-row", "rows => rows.map(r => r.dataset.jobId)"
    )


class ApiProcess:
    """One API process that can be stopped and started again on the same port."""

    def __init__(self, stack: Stack, log_dir: Path, **overrides: Any) -> None:
        self.settings = stack.settings.model_copy(update={"api_port": free_port(), **overrides})
        self.url = f"http://127.0.0.1:{self.settings.api_port}"
        self.log_dir = log_dir
        self.sup: Supervisor | None = None

    def start(self) -> None:
        sup = Supervisor(self.settings, log_dir=self.log_dir, say=lambda _line: None)
        sup.add_stack(api=True, worker=False, beat=False, flower=False)
        sup.start()
        self.sup = sup
        wait_http(f"{self.url}/api/v1/healthz", timeout=60, alive=lambda: sup.poll_dead() is None)

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()
            self.sup = None
