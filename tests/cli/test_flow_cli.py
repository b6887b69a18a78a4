"""``launchbay jobs rerun | schedules | limits`` and the waiting reason, against the real
stack (issue 14)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.cli.conftest import Cli
from tests.support import Stack


def test_jobs_rerun_one_and_by_filter(cli: Cli, stack: Stack) -> None:
    label = f"cli-{uuid.uuid4().hex[:8]}"
    bad = stack.submit(
        {"executor": "process", "command": ["sh", "-c", "exit 2"], "labels": {"t": label}}
    )
    stack.wait_status(bad["id"], "failed")
    one = cli("jobs", "rerun", bad["id"], "--json")
    assert one.code == 0, one.err
    again = json.loads(one.out)
    assert again["rerun_of"] == bad["id"]
    stack.wait_status(again["id"], "failed")
    many = cli("jobs", "rerun", "--status", "failed", "--label", f"t={label}")
    assert many.code == 0, many.err
    assert "2 job(s) re-queued" in many.err
    assert {line.split()[2] for line in many.out.splitlines()} == {bad["id"], again["id"]}
    both = cli("jobs", "rerun", bad["id"], "--label", "t=x")
    assert both.code == 2 and "not both" in both.err
    running = stack.submit({"executor": "process", "command": ["sleep", "5"]})
    refused = cli("jobs", "rerun", running["id"])
    assert refused.code == 1 and "has not ended" in refused.err
    stack.http.post(f"/api/v1/jobs/{running['id']}/cancel")


def test_limits_and_the_waiting_reason(cli: Cli, stack: Stack) -> None:
    key = f"cli-{uuid.uuid4().hex[:8]}"
    assert cli("limits", "set", key, "0").code == 0  # nothing of this key may run
    job = stack.submit(
        {"executor": "builtin", "type": "primes", "params": {"limit": 100}, "concurrency_key": key}
    )
    listed = cli("limits", "list", "--json")
    assert listed.code == 0
    mine = next(x for x in json.loads(listed.out) if x["key"] == key)
    assert mine["max_running"] == 0
    shown = cli("jobs", "status", job["id"])
    assert shown.code == 0 and f"waiting: {key} 0/0" in shown.out
    assert cli("limits", "remove", key).code == 0  # released: it runs now
    assert stack.wait_status(job["id"], "succeeded")["status"] == "succeeded"
    bad = cli("limits", "set", "bad key!", "1")
    assert bad.code == 2, (bad.code, bad.err)


def test_schedules_create_show_pause_delete(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"executor": "builtin", "type": "primes", "params": {}}))
    made = cli(
        "schedules", "create", "--name", "nightly", "--cron", "0 3 * * *",
        "--tz", "Europe/Berlin", "--spec", str(spec), "--json",
    )  # fmt: skip
    assert made.code == 0, made.err
    sid = json.loads(made.out)["id"]
    shown = cli("schedules", "show", sid)
    assert shown.code == 0 and shown.out.count("next  ") == 5
    assert cli("schedules", "pause", sid).code == 0
    paused = json.loads(cli("schedules", "show", sid, "--json").out)
    assert paused["paused"] is True and paused["next_fire_times"] == []
    assert cli("schedules", "delete", sid).code == 0
    assert cli("schedules", "show", sid).code == 1
    wrong = cli("schedules", "create", "--name", "x", "--cron", "99 * * * *", "--spec", str(spec))
    assert wrong.code == 2 and "cron" in wrong.err
