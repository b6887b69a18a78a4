"""The CLI's commands for every API operation, and global options on either side."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli, PrivateApi, make_cli
from tests.support import Stack

UNREACHABLE = {"LAUNCHBAY_URL": "http://127.0.0.1:9"}


def test_job_types_lists_the_builtin_types(cli: Cli) -> None:
    r = cli("job-types")
    assert r.code == 0, r
    assert "fibonacci" in r.out and "echo_delay" in r.out
    types = json.loads(cli("job-types", "--json").out)
    assert "fibonacci" in {t["name"] for t in types}


def test_stats_counts_jobs_and_workers(cli: Cli, stack: Stack) -> None:
    stack.wait_status(stack.submit({"executor": "process", "command": ["true"]})["id"])
    data = json.loads(cli("stats", "--json").out)
    assert data["total"] >= 1 and data["succeeded"] >= 1 and data["workers"]["count"] >= 1
    r = cli("stats")
    assert r.code == 0 and r.out.startswith("jobs: ") and "workers: " in r.out, r


def test_runs_delete_removes_an_ended_run(cli: Cli, stack: Stack) -> None:
    job = stack.submit({"executor": "process", "command": ["true"]})
    stack.wait_status(job["id"])
    r = cli("runs", "delete", job["id"])
    assert r.code == 0 and f"removed run {job['id']}" in r.err, r
    assert stack.http.get(f"/api/v1/runs/{job['id']}").status_code == 404
    again = cli("runs", "delete", job["id"])
    again.assert_one_error_line()


def test_global_options_work_before_and_after_the_subcommand(cli: Cli, stack: Stack) -> None:
    # The environment names a dead server: only the option given can make these work.
    before = cli("--url", stack.url, "--json", "jobs", "--limit", "1", env=UNREACHABLE)
    assert before.code == 0, before
    assert "items" in json.loads(before.out)
    after = cli("jobs", "--limit", "1", "--json", "--url", stack.url, env=UNREACHABLE)
    assert after.code == 0 and "items" in json.loads(after.out), after
    nested = cli("--url", stack.url, "stats", "--json", env=UNREACHABLE)
    assert nested.code == 0 and "total" in json.loads(nested.out), nested
    dead = cli("jobs", env=UNREACHABLE)
    assert dead.code == 3, dead


def test_run_with_a_session_then_resume_and_list_sessions(cli: Cli, stack: Stack) -> None:
    first = cli(
        "run", "--process", "--session", "cli-session", "--env", "WHO=cli", "--wait",
        "--json", "--", "sh", "-c", "echo one > f.txt",
    )  # fmt: skip
    assert first.code == 0, first
    sid = json.loads(first.out)["session_id"]
    second = cli(
        "run", "--process", "--resume", sid, "--wait", "--json", "--",
        "sh", "-c", 'test "$WHO" = cli && grep -q one f.txt',
    )  # fmt: skip
    assert second.code == 0, second
    assert json.loads(second.out)["session_id"] == sid
    listed = cli("sessions")
    assert listed.code == 0 and sid in listed.out and "cli-session" in listed.out, listed
    shown = cli("sessions", "show", sid)
    assert shown.code == 0 and shown.out.count("succeeded") == 2, shown
    gone = cli("sessions", "delete", sid)
    assert gone.code == 0 and sid in gone.err, gone
    assert cli("sessions", "show", sid).code == 1


def test_run_warns_when_no_runner_meets_the_demands(cli: Cli) -> None:
    r = cli(
        "run", "--process", "--hostname", "nowhere.invalid", "--", "true",
    )  # fmt: skip
    assert r.code == 0, r
    assert "warning: no live runner meets this job's demands" in r.err
    job_id = r.out.strip()
    cli("jobs", "cancel", job_id)


def test_events_prints_a_jobs_events_until_its_end(cli: Cli, stack: Stack) -> None:
    job = stack.submit({"executor": "process", "command": ["true"]})
    stack.wait_status(job["id"])
    r = cli("events", job["id"], timeout=60)
    assert r.code == 0, r
    seen = [json.loads(line) for line in r.out.splitlines()]
    # An ended job's stream: its state, then the SSE end event (api/routes/streams.py).
    assert [e["event"] for e in seen] == ["status", "complete"], seen
    assert seen[-1]["data"]["status"] == "succeeded", seen


def test_a_token_given_before_the_subcommand_is_sent(private_api: PrivateApi) -> None:
    cli = make_cli(private_api.url)  # no token in the environment
    assert cli("stats").code == 1
    r = cli("--token", private_api.token, "stats", "--json")
    assert r.code == 0 and "total" in json.loads(r.out), r
