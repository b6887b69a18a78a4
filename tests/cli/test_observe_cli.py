"""The observability routes from the CLI: webhooks, firehose, overview, runners, metrics,
streams — each a command, as every API operation is (issue 16)."""

from __future__ import annotations

import json
import uuid

from tests.cli.conftest import Cli
from tests.support import Stack


def test_webhooks_are_made_listed_shown_and_removed(cli: Cli) -> None:
    made = cli(
        "webhooks",
        "create",
        "http://127.0.0.1:9/hook",
        "-e",
        "succeeded",
        "-l",
        "team=cli",
        "--json",
    )
    assert made.code == 0, made
    hook = json.loads(made.out)
    assert hook["secret"] and hook["events"] == ["succeeded"] and hook["labels"] == {"team": "cli"}
    listed = cli("webhooks", "--json")
    assert hook["id"] in {h["id"] for h in json.loads(listed.out)}, listed
    table = cli("webhooks", "list")
    assert table.code == 0 and hook["id"] in table.out and "team=cli" in table.out, table
    shown = json.loads(cli("webhooks", "show", hook["id"]).out)
    assert (
        shown["url"] == "http://127.0.0.1:9/hook" and "secret" not in shown or not shown["secret"]
    )
    assert json.loads(cli("webhooks", "deliveries", hook["id"], "--json").out) == []
    gone = cli("webhooks", "delete", hook["id"])
    assert gone.code == 0, gone
    cli("webhooks", "show", hook["id"]).assert_one_error_line()


def test_a_bad_webhook_is_one_error_line_naming_the_field(cli: Cli) -> None:
    r = cli("webhooks", "create", "ftp://nowhere")
    r.assert_one_error_line()
    assert "url" in r.err


def test_firehose_overview_runners_metrics_and_streams(cli: Cli, stack: Stack) -> None:
    stack.wait_status(stack.submit({"executor": "process", "command": ["true"]})["id"])
    r = cli("firehose", "--since", "0-0", "--count", "2", timeout=60)
    assert r.code == 0, r
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert len(lines) == 2 and all(x["data"]["job_id"] for x in lines), lines
    over = json.loads(cli("overview", "--minutes", "60").out)
    assert len(over["buckets"]) == 60 and over["totals"]["succeeded"] >= 1
    nobody = json.loads(cli("overview", "--label", f"nobody={uuid.uuid4().hex}").out)
    assert nobody["totals"]["ended"] == 0
    bad = cli("overview", "--label", "nobody")
    assert bad.code != 0 and "label" in bad.err, bad
    board = json.loads(cli("runners").out)
    assert any(x["kind"] == "celery" for x in board["items"])
    assert "launchbay_" in cli("metrics").out
    hub = json.loads(cli("streams").out)
    assert hub["subscribed"] is True and "subscribers" in hub
