"""The Runs, run, and Workers pages, the overview charts and the log pane, in Chromium at
1280 and 375 px, light and dark."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from orchestrator.store import JobStore
from tests.browser.conftest import DESKTOP, PHONE, needs_own_stack
from tests.support import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOG_LINES = 100_000
CHART_WAIT_MS = 45_000
# Each line says its number; every 1000th is red and carries markup that must stay text.
# Printed in bursts of 5000 with a pause between: a worker keeps at most 50,000 unsent lines
# (workers/attempt.py), and a job that outruns it loses the oldest.
_BIG_LOG = (
    "import sys, time\n"
    "w = sys.stdout.write\n"
    f"for i in range(1, {LOG_LINES} + 1):\n"
    "    if i % 1000 == 0:\n"
    "        w(f'\\x1b[1;31mERROR\\x1b[0m line {i} <b>not bold</b>\\n')\n"
    "    else:\n"
    "        w(f'\\x1b[32mok\\x1b[0m line {i}\\n')\n"
    "    if i % 5000 == 0:\n"
    "        sys.stdout.flush()\n"
    "        time.sleep(0.25)\n"
)


@pytest.fixture
def history(target: Stack) -> dict[str, Any]:
    """Five ended runs with a label of their own: three succeed, two fail."""
    tag = uuid.uuid4().hex[:10]
    specs = [
        ("alpha-build", "exit 0"),
        ("alpha-test", "exit 0"),
        ("beta-deploy", "exit 0"),
        ("beta-migrate", "echo broken >&2; exit 2"),
        ("gamma-lint", "exit 1"),
    ]
    jobs = {}
    for name, script in specs:
        job = target.submit(
            {
                "executor": "process",
                "name": f"{name}-{tag}",
                "command": ["sh", "-c", script],
                "labels": {"suite": tag},
            }
        )
        jobs[name] = target.wait_status(job["id"], timeout=60)
    return {"tag": tag, "jobs": jobs}


def run_rows(page: Page):  # noqa: ANN201 - a Locator
    return page.locator("#page-runs .run-row")


def names(page: Page) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#page-runs .run-row .run-link", "els => els.map(e => e.textContent)"
    )


def no_sideways_scroll(page: Page, width: int) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_runs_page_filters_searches_pages_and_opens_a_run(
    target: Stack, dashboard, history: dict[str, Any]
) -> None:
    tag, jobs = history["tag"], history["jobs"]
    page = dashboard.open(f"{target.url}/#/runs?label=suite={tag}")

    expect(run_rows(page)).to_have_count(5)
    expect(page.locator("#layout")).to_be_hidden()
    expect(page.locator('.pages-nav a[data-page="runs"]')).to_have_attribute("aria-current", "page")
    # Newest first.
    assert names(page)[0] == f"gamma-lint-{tag}"

    form = page.locator("#page-runs .runs-filters")
    form.locator('select[name="status"]').select_option("failed")
    expect(run_rows(page)).to_have_count(2)
    assert sorted(names(page)) == [f"beta-migrate-{tag}", f"gamma-lint-{tag}"]
    assert "status=failed" in page.evaluate("location.hash")

    form.locator('input[name="q"]').fill("BETA")
    expect(run_rows(page)).to_have_count(1)
    expect(run_rows(page).first).to_contain_text(f"beta-migrate-{tag}")

    form.locator('select[name="executor"]').select_option("builtin")
    expect(page.locator("#page-runs .runs-empty")).to_be_visible()
    expect(run_rows(page)).to_have_count(0)

    page.locator("#page-runs").get_by_role("button", name="Reset").click()
    expect(run_rows(page)).not_to_have_count(0)

    # Paging, two at a time, over this label's five runs.
    page.goto(f"{target.url}/#/runs?label=suite={tag}&limit=2")
    expect(run_rows(page)).to_have_count(2)
    expect(page.locator("#page-runs .pager-range")).to_have_text("1–2 of 5")
    newer = page.locator('#page-runs [data-page="prev"]')
    older = page.locator('#page-runs [data-page="next"]')
    expect(newer).to_be_disabled()
    seen = names(page)
    older.click()
    expect(page.locator("#page-runs .pager-range")).to_have_text("3–4 of 5")
    seen += names(page)
    older.click()
    expect(page.locator("#page-runs .pager-range")).to_have_text("5–5 of 5")
    expect(older).to_be_disabled()
    seen += names(page)
    assert sorted(seen) == sorted(f"{n}-{tag}" for n in jobs)
    page.go_back()
    expect(page.locator("#page-runs .pager-range")).to_have_text("3–4 of 5")

    # Open a run: its record, its attempt and its log.
    failed = jobs["beta-migrate"]
    page.goto(f"{target.url}/#/runs?label=suite={tag}&q=beta-migrate")
    # (The page shows the rows it had until the search's answer comes: wait for it.)
    expect(run_rows(page)).to_have_count(1)
    expect(run_rows(page).first).to_contain_text(f"beta-migrate-{tag}")
    run_rows(page).first.locator(".run-link").click()
    view = page.locator("#page-run")
    expect(view.locator("#runview-title")).to_have_text(f"beta-migrate-{tag}")
    expect(view.locator(".runview-badge .badge")).to_have_text("failed")
    expect(view.locator('.meta-item[data-key="exit code"] dd')).to_have_text("2")
    expect(view.locator(".attempts-table tbody tr")).to_have_count(1)
    expect(view.locator(".logpane-line.stderr")).to_have_text("broken")
    assert page.evaluate("location.hash") == f"#/runs/{failed['id']}"
    view.locator(".back-link").click()
    expect(page.locator("#page-runs")).to_be_visible()


def test_runs_page_names_a_refused_filter(target: Stack, dashboard) -> None:
    dashboard.allow_console("422")
    page = dashboard.open(f"{target.url}/#/runs")
    label = page.locator('#page-runs input[name="label"]')
    label.fill("no-equals-sign")
    error = page.locator("#runs-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("label")
    expect(label).to_have_attribute("aria-invalid", "true")
    label.fill("")
    expect(error).to_be_hidden()
    expect(label).not_to_have_attribute("aria-invalid", "true")


@pytest.fixture
def ghost(target: Stack) -> Iterator[dict[str, Any]]:
    """A job claimed by a runner that is not in the registry: a lost runner."""
    store = JobStore(target.settings.effective_database_url, create=False)
    runner = f"runner-ghost{uuid.uuid4().hex[:6]}"
    job = target.submit(
        {
            "executor": "process",
            "name": "orphaned-job",
            "command": ["true"],
            # No worker has this tag: the job waits until the ghost claims it.
            "demands": {"tags": [f"nowhere-{runner}"]},
        }
    )
    assert store.claim(job["id"], runner, 600)
    try:
        yield {"runner": runner, "job": job}
    finally:
        target.http.post(f"/api/v1/jobs/{job['id']}/cancel")
        store.dispose()


@needs_own_stack
@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "375"])
def test_workers_page_shows_slots_jobs_and_lost_runners(
    target: Stack, dashboard, ghost: dict[str, Any], viewport: dict[str, int], scheme: str
) -> None:
    busy = target.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 30}})
    try:
        target.wait_status(busy["id"], "running")
        page = dashboard.open(f"{target.url}/#/workers", viewport=viewport, color_scheme=scheme)
        cards = page.locator("#page-workers .worker-card")
        live = cards.filter(has=page.locator(f'a[href="#/runs/{busy["id"]}"]'))
        expect(live).to_have_count(1)
        expect(live).to_have_attribute("data-state", "live")
        expect(live.locator(".worker-state")).to_have_text("live")
        expect(live).to_contain_text("builtin")
        expect(live.locator(".slot.busy")).not_to_have_count(0)
        expect(live.locator(".slots")).to_have_attribute("aria-label", _busy_label())
        expect(live).to_contain_text("heartbeat")

        lost = page.locator(f'#page-workers .worker-card[data-runner-id="{ghost["runner"]}"]')
        expect(lost).to_have_attribute("data-state", "lost")
        expect(lost.locator(".worker-state")).to_have_text("lost")
        expect(lost).to_contain_text("orphaned-job")
        expect(page.locator("#page-workers .workers-summary")).to_contain_text(
            re.compile(r"\b[1-9]\d* lost")
        )
        no_sideways_scroll(page, viewport["width"])

        lost.locator(f'a[href="#/runs/{ghost["job"]["id"]}"]').click()
        expect(page.locator("#runview-title")).to_have_text("orphaned-job")
    finally:
        target.http.post(f"/api/v1/jobs/{busy['id']}/cancel")


def _busy_label() -> re.Pattern[str]:
    return re.compile(r"^[1-9]\d* of [1-9]\d* slots busy$")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "375"])
def test_overview_charts_draw_the_last_hour(
    target: Stack, dashboard, history: dict[str, Any], viewport: dict[str, int], scheme: str
) -> None:
    page = dashboard.open(target.url, viewport=viewport, color_scheme=scheme)
    charts = page.locator("#overview-charts")
    expect(charts).to_have_attribute("data-loaded", "1")
    throughput = charts.locator('[data-chart="throughput"]')
    # The history's runs ended within the hour: both outcomes have bars (the charts redraw
    # every 15 s from an answer the API keeps for 5 s).
    expect(throughput.locator("rect.st-failed").first).to_be_attached(timeout=CHART_WAIT_MS)
    expect(throughput.locator("rect.st-succeeded").first).to_be_attached()
    ended = int(throughput.locator(".chart-figure").inner_text().split()[0])
    assert ended >= 5
    assert throughput.locator("svg").get_attribute("aria-label").endswith(f"{ended} in all")
    runtime = charts.locator('[data-chart="runtime"]')
    expect(runtime.locator(".chart-figure")).to_contain_text("p95")
    assert runtime.locator("path.p50").get_attribute("d").startswith("M")
    depth = charts.locator('[data-chart="depth"]')
    expect(depth.locator("path.chart-area")).to_be_attached()
    expect(depth.locator(".chart-figure")).to_contain_text("waiting")
    box = throughput.locator("svg").bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 50
    no_sideways_scroll(page, viewport["width"])
    # The charts belong to the overview only.
    page.locator('.pages-nav a[data-page="workers"]').click()
    expect(charts).to_be_hidden()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_runs_page_fits_a_phone(
    target: Stack, dashboard, history: dict[str, Any], scheme: str
) -> None:
    page = dashboard.open(
        f"{target.url}/#/runs?label=suite={history['tag']}", viewport=PHONE, color_scheme=scheme
    )
    expect(run_rows(page)).to_have_count(5)
    no_sideways_scroll(page, PHONE["width"])
    first = run_rows(page).first
    # Cards, not a squeezed table: the name spans the card.
    box = first.locator(".run-link").bounding_box()
    assert box is not None and box["width"] > PHONE["width"] * 0.6
    first.locator(".run-link").click()
    expect(page.locator("#page-run .logpane")).to_be_visible()
    no_sideways_scroll(page, PHONE["width"])


@pytest.fixture(scope="module")
def big_log(target: Stack) -> dict[str, Any]:
    job = target.submit(
        {"executor": "process", "name": "big-log", "command": ["python3", "-c", _BIG_LOG]}
    )
    return target.wait_status(job["id"], "succeeded", timeout=300)


def test_log_pane_renders_ansi_and_100k_lines(
    target: Stack, dashboard, screenshot, big_log
) -> None:
    page = dashboard.open(f"{target.url}/#/runs/{big_log['id']}")
    pane = page.locator("#page-run .logpane")
    expect(page.locator("#page-run .runview-log")).to_have_attribute(
        "data-loaded", "1", timeout=120_000
    )
    expect(pane).to_have_attribute("data-lines", str(LOG_LINES))
    expect(page.locator("#page-run .runview-lines")).to_have_text(str(LOG_LINES))

    # It follows the end: the last line is drawn and in view, the pane scrolled to the bottom.
    pane.scroll_into_view_if_needed()
    last = pane.locator(f'.logpane-line[data-n="{LOG_LINES}"]')
    expect(last).to_be_in_viewport()
    expect(last).to_contain_text(f"line {LOG_LINES}")
    assert page.evaluate(
        "() => { const p = document.querySelector('#page-run .logpane');"
        " return p.scrollTop + p.clientHeight >= p.scrollHeight - 4; }"
    )
    # Virtualised: a screenful of lines in the DOM, not a hundred thousand.
    drawn = pane.locator(".logpane-line").count()
    assert 10 < drawn < 200

    # Colours: SGR codes become classes, markup stays text, no escape is shown.
    red = last.locator("span.ansi-fg-1.ansi-bold")
    expect(red).to_have_text("ERROR")
    expect(last).to_have_text(f"ERROR line {LOG_LINES} <b>not bold</b>")
    assert last.locator("b").count() == 0
    green = pane.locator(f'.logpane-line[data-n="{LOG_LINES - 1}"] span.ansi-fg-2')
    expect(green).to_have_text("ok")
    colour = green.evaluate("el => getComputedStyle(el).color")
    plain = pane.locator(f'.logpane-line[data-n="{LOG_LINES - 1}"]').evaluate(
        "el => getComputedStyle(el).color"
    )
    assert colour != plain

    # Scrolling to the top draws the first lines; "Jump to end" comes back.
    pane.evaluate("el => { el.scrollTop = 0; }")
    expect(pane.locator('.logpane-line[data-n="1"]')).to_have_text("ok line 1")
    expect(pane.locator(f'.logpane-line[data-n="{LOG_LINES}"]')).to_have_count(0)
    page.locator('#page-run [data-action="end"]').click()
    expect(pane.locator(f'.logpane-line[data-n="{LOG_LINES}"]')).to_be_in_viewport()
    screenshot(page, "dashboard-1280-light-log")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "375"])
def test_job_panel_colours_its_log_and_links_to_the_run(
    target: Stack, dashboard, viewport: dict[str, int]
) -> None:
    job = target.submit(
        {
            "executor": "process",
            "name": "colourful",
            "command": ["printf", "plain\\n\\033[33mwarn\\033[0m <i>x</i>\\n"],
        }
    )
    target.wait_status(job["id"], "succeeded", timeout=60)
    page = dashboard.open(target.url, viewport=viewport)
    page.locator(f'#queue .job-row[data-job-id="{job["id"]}"] .row-main').click()
    log = page.locator("#detail .log")
    expect(log.locator(".log-line")).to_have_count(2)
    expect(log.locator("span.ansi-fg-3")).to_have_text("warn")
    expect(log.locator(".log-line").nth(1)).to_have_text("warn <i>x</i>\n")
    assert log.locator("i").count() == 0

    page.locator("#detail .full-log-link").click()
    expect(page.locator("#runview-title")).to_have_text("colourful")
    expect(page.locator("#page-run .logpane-line")).to_have_count(2)
    assert page.evaluate("getComputedStyle(document.body).overflowY") != "hidden"
    no_sideways_scroll(page, viewport["width"])
