"""Detail panel artifacts, the Docker form's spec, and the optional bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import NETWORK_NOISE, needs_own_stack
from tests.browser.helpers import JOB_WAIT_MS, ApiProcess, pick_type, row, submit_form
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_artifacts_download_from_the_detail_panel(target: Stack, dashboard, tmp_path: Path) -> None:
    job = target.submit(
        {
            "executor": "process",
            "name": "make-report",
            "command": [
                "python3",
                "-c",
                "import os; os.makedirs('out', exist_ok=True); "
                "open('out/report.txt', 'w').write('all green\\n'); print('wrote it')",
            ],
            "artifacts": ["out/*.txt"],
        }
    )
    done = target.wait_status(job["id"], "succeeded", timeout=60)
    assert [a["name"] for a in done["artifacts"]] == ["out/report.txt"]

    page = dashboard.open(target.url)
    row(page, job["id"]).locator(".row-main").click()
    detail = page.locator("#detail")
    link = detail.locator(".artifacts a")
    expect(link).to_have_text("out/report.txt")
    expect(detail.locator(".artifacts li")).to_contain_text("10 B")
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "report.txt"
    info.value.save_as(saved)
    assert saved.read_text() == "all green\n"
    assert info.value.suggested_filename == "report.txt"


def test_docker_form_sends_a_docker_spec(target: Stack, dashboard) -> None:
    page = dashboard.open(target.url)
    pick_type(page, "Docker")
    form = page.locator("#job-form")
    form.locator('input[name="image"]').fill("launchbay-test/never-built:1")
    form.locator('input[name="command"]').fill("sh -c 'echo hi > out.txt'")
    form.locator('input[name="artifacts"]').fill("out.txt, logs/*.log")
    form.locator('input[name="cpu"]').fill("0.5")
    form.locator('input[name="memory_mb"]').fill("64")
    job = submit_form(page)
    try:
        spec = job["spec"]
        assert spec["executor"] == "docker"
        assert spec["image"] == "launchbay-test/never-built:1"
        assert spec["steps"] == [{"name": "main", "command": ["sh", "-c", "echo hi > out.txt"]}]
        assert spec["artifacts"] == ["out.txt", "logs/*.log"]
        assert spec["resources"] == {"cpu": 0.5, "memory_mb": 64}
        expect(row(page, job["id"])).to_be_visible()
    finally:
        target.http.post(f"/api/v1/jobs/{job['id']}/cancel")  # the image does not exist


@pytest.fixture
def token_api(stack: Stack, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(stack, tmp_path / "api-logs", token="s3cret-token")
    api.start()
    try:
        yield api
    finally:
        api.stop()


@needs_own_stack
def test_token_is_asked_once_and_kept(target: Stack, token_api: ApiProcess, dashboard) -> None:
    # Before the token is given, the API's 401s are logged by the browser itself.
    dashboard.allow_console("status of 401", "WebSocket connection to")
    page = dashboard.open(token_api.url, wait_live=False)
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "live")
    dialog.locator("input[name=token]").fill("s3cret-token")
    dialog.get_by_role("button", name="Save token").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
    expect(page.locator("#type-picker .type-btn", has_text="Countdown")).to_be_visible()
    assert page.evaluate("localStorage.getItem('lb.token')") == "s3cret-token"

    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=20_000)
    expect(dialog).to_be_hidden()
    job = target.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 1}})
    expect(row(page, job["id"])).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)


def test_log_tail_arrives_even_when_the_job_stream_fails(target: Stack, dashboard) -> None:
    # The job's SSE stream is refused: the detail panel must still show the whole log once
    # the job has ended (it learns the end from the queue socket and fetches the tail).
    dashboard.allow_console(*NETWORK_NOISE)
    page = dashboard.open(target.url)
    page.route("**/events*", lambda route: route.abort())
    pick_type(page, "Process")
    page.locator('#job-form input[name="command"]').fill(
        "python3 -c \"print('tail without a stream')\""
    )
    job = submit_form(page)
    expect(row(page, job["id"])).to_have_attribute("data-status", "succeeded", timeout=JOB_WAIT_MS)
    detail = page.locator("#detail")
    expect(detail.locator(".log")).to_contain_text("tail without a stream", timeout=JOB_WAIT_MS)
