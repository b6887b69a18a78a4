"""``launchbay jobs | runs | workers``: the read and control commands against a real stack."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.events import Events, connect
from orchestrator.job import JobStatus, utcnow
from orchestrator.services import free_port
from orchestrator.store import JobStore
from tests.cli.conftest import Cli, PrivateApi, clean_env, make_cli
from tests.support import Stack


@pytest.fixture(scope="module")
def hello_job(stack: Stack) -> dict[str, Any]:
    """A finished process job that printed hello-cli and exited 7 (the must-show job)."""
    job = stack.submit(
        {
            "executor": "process",
            "name": "cli-hello",
            # stdout and stderr are two pipes read by two threads: their lines keep their
            # order within a stream, not across them, so the job leaves a gap between.
            "command": ["sh", "-c", "echo hello-cli; sleep 0.5; echo oops >&2; exit 7"],
        }
    )
    return stack.wait_status(job["id"], timeout=60)


@pytest.fixture(scope="module")
def artifact_job(stack: Stack) -> dict[str, Any]:
    job = stack.submit(
        {
            "executor": "process",
            "name": "cli-artifacts",
            "command": [
                "sh",
                "-c",
                "printf 'artifact body\\n' > out.txt; mkdir -p sub; echo nested > sub/deep.log",
            ],
            "artifacts": ["out.txt", "sub/*.log"],
        }
    )
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    return done


# ---------------------------------------------------------------- must-show


def test_jobs_json_parses_and_lists_the_job(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "--json", "--limit", "100")
    assert r.code == 0, r
    page = json.loads(r.out)
    assert {"items", "total", "limit", "offset"} <= page.keys()
    assert hello_job["id"] in [j["id"] for j in page["items"]]


def test_jobs_logs_prints_the_output(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "logs", hello_job["id"])
    assert r.code == 0, r
    assert r.out.splitlines() == ["hello-cli"], r
    assert "oops" in r.err  # the job's stderr stays on stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "status", "{id}"],
        ["jobs", "logs", "{id}"],
        ["jobs", "logs", "{id}", "-f"],
        ["jobs", "cancel", "{id}"],
        ["jobs", "artifacts", "{id}"],
        ["jobs", "download", "{id}", "x.txt"],
        ["jobs", "status", "{id}", "--json"],
    ],
)
def test_unknown_id_is_one_line_and_non_zero(cli: Cli, argv: list[str]) -> None:
    missing = "0" * 32
    r = cli(*[a.format(id=missing) for a in argv])
    r.assert_one_error_line()
    assert r.code == 1, r
    assert f"job {missing} not found" in r.err, r


@pytest.mark.parametrize(
    "argv",
    [
        ["jobs"],
        ["jobs", "--json"],
        ["jobs", "status", "abc"],
        ["jobs", "logs", "abc", "-f"],
        ["workers"],
        ["runs", "cleanup", "--older-than", "7d"],
        ["run", "--builtin", "countdown", "seconds=2", "--wait"],
        ["run", "--process", "--", "true"],
    ],
)
def test_unreachable_server_is_one_line_and_exit_3(argv: list[str], cli_script: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = make_cli(url)(*argv, timeout=60)
    r.assert_one_error_line()
    assert r.code == 3, r
    assert f"cannot reach Launchbay at {url}" in r.err, r


def test_default_url_is_local_port_8000(cli_script: Path) -> None:
    proc = subprocess.run(
        [str(cli_script), "jobs"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    if proc.returncode == 0:
        pytest.skip("something answers on 127.0.0.1:8000 here")
    assert "http://127.0.0.1:8000" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- jobs


def test_jobs_table_and_status_filter(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "--status", "failed", "--limit", "100")
    assert r.code == 0, r
    assert hello_job["id"] in r.out and "failed" in r.out
    r = cli("jobs", "--status", "succeeded,cancelled", "--json", "--limit", "100")
    assert r.code == 0, r
    page = json.loads(r.out)
    assert hello_job["id"] not in [j["id"] for j in page["items"]]
    assert {j["status"] for j in page["items"]} <= {"succeeded", "cancelled"}


def test_jobs_limit_and_bad_status(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "--json", "--limit", "1")
    assert r.code == 0 and len(json.loads(r.out)["items"]) == 1, r
    bad = cli("jobs", "--status", "sleeping")
    bad.assert_one_error_line()
    assert bad.code == 2 and "queued" in bad.err


def test_jobs_status_human_and_json(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "status", hello_job["id"])
    assert r.code == 0, r
    assert hello_job["id"] in r.out and "failed" in r.out and "exit code  7" in r.out
    r = cli("jobs", "status", hello_job["id"], "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["exit_code"] == 7


def test_jobs_logs_json(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "logs", hello_job["id"], "--json")
    assert r.code == 0, r
    lines = json.loads(r.out)
    assert [(ln["stream"], ln["line"]) for ln in lines] == [
        ("stdout", "hello-cli"),
        ("stderr", "oops"),
    ]
    r = cli("jobs", "logs", hello_job["id"], "--since", str(lines[0]["seq"]))
    assert r.code == 0 and r.out == "" and "oops" in r.err, r


def test_jobs_logs_since_a_time(cli: Cli, hello_job: dict[str, Any]) -> None:
    lines = json.loads(cli("jobs", "logs", hello_job["id"], "--json").out)
    first = datetime.fromisoformat(lines[0]["ts"])
    before = (first - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    r = cli("jobs", "logs", hello_job["id"], "--since", before, "--json")
    assert r.code == 0, r
    assert json.loads(r.out) == lines
    later = (datetime.fromisoformat(lines[-1]["ts"]) + timedelta(seconds=1)).isoformat()
    r = cli("jobs", "logs", hello_job["id"], "--since", later, "--json")
    assert r.code == 0 and json.loads(r.out) == [], r
    r = cli("jobs", "logs", hello_job["id"], "--since", "last tuesday")
    r.assert_one_error_line()
    assert r.code == 2 and "ISO 8601" in r.err, r


def test_jobs_logs_follow_prints_every_line_until_the_job_ends(cli: Cli, stack: Stack) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done"],
        }
    )
    r = cli("jobs", "logs", job["id"], "-f")
    assert r.code == 0, r
    assert r.out.splitlines() == [f"line-{i}" for i in range(1, 6)], r
    assert stack.job(job["id"])["status"] == "succeeded"


def test_jobs_logs_follow_json_lines(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "logs", hello_job["id"], "-f", "--json")
    assert r.code == 0, r
    assert [json.loads(ln)["line"] for ln in r.out.splitlines()] == ["hello-cli", "oops"]


def test_jobs_cancel_and_cancel_of_an_ended_job(
    cli: Cli, stack: Stack, hello_job: dict[str, Any]
) -> None:
    job = stack.submit({"executor": "builtin", "type": "countdown", "params": {"seconds": 60}})
    stack.wait_status(job["id"], "running", timeout=30)
    r = cli("jobs", "cancel", job["id"])
    assert r.code == 0, r
    assert job["id"] in r.err
    assert stack.wait_status(job["id"], timeout=60)["status"] == "cancelled"
    again = cli("jobs", "cancel", hello_job["id"])
    again.assert_one_error_line()
    assert again.code == 1 and "failed" in again.err, again


def test_jobs_artifacts_and_download(
    cli: Cli, artifact_job: dict[str, Any], tmp_path: Path
) -> None:
    r = cli("jobs", "artifacts", artifact_job["id"], "--json")
    assert r.code == 0, r
    arts = {a["name"]: a for a in json.loads(r.out)}
    assert set(arts) == {"out.txt", "sub/deep.log"}, arts
    body = b"artifact body\n"
    assert arts["out.txt"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert arts["out.txt"]["size"] == len(body)

    table = cli("jobs", "artifacts", artifact_job["id"])
    assert table.code == 0 and "sub/deep.log" in table.out, table

    dest = tmp_path / "got.txt"
    d = cli("jobs", "download", artifact_job["id"], "out.txt", "-o", str(dest))
    assert d.code == 0, d
    assert dest.read_bytes() == body
    assert "sha256 checked" in d.err

    # A folder as -o takes the artifact's base name; a nested name cannot escape it.
    d = cli("jobs", "download", artifact_job["id"], "sub/deep.log", "-o", str(tmp_path))
    assert d.code == 0, d
    assert (tmp_path / "deep.log").read_text() == "nested\n"

    d = cli("jobs", "download", artifact_job["id"], "out.txt", "-o", "-")
    assert d.code == 0 and d.out == body.decode(), d


def test_download_of_a_missing_artifact_leaves_no_file(
    cli: Cli, artifact_job: dict[str, Any], tmp_path: Path
) -> None:
    r = cli("jobs", "download", artifact_job["id"], "nope.txt", "-o", str(tmp_path / "x"))
    r.assert_one_error_line()
    assert r.code == 1 and "nope.txt" in r.err, r
    assert list(tmp_path.iterdir()) == []


def test_jobs_artifacts_of_a_job_without_any(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("jobs", "artifacts", hello_job["id"], "--json")
    assert r.code == 0 and json.loads(r.out) == [], r


# ---------------------------------------------------------------- workers


def test_workers_lists_the_live_worker(cli: Cli) -> None:
    r = cli("workers", "--json")
    assert r.code == 0, r
    workers = json.loads(r.out)
    assert any("process" in w["executors"] and w["capacity"] >= 1 for w in workers), workers
    table = cli("workers")
    assert table.code == 0 and workers[0]["id"] in table.out, table


# ---------------------------------------------------------------- runs cleanup and the token


def _old_ended_job(api: PrivateApi) -> str:
    store = JobStore(api.settings.effective_database_url)
    try:
        job = store.create({"executor": "builtin", "type": "countdown", "params": {"seconds": 1}})
        assert store.claim(job.id, "runner-cli-test", 30) is not None
        assert store.start(job.id, 1, 30) is not None
        done = store.finish(
            job.id, 1, JobStatus.succeeded, exit_code=0, finished_at=utcnow() - timedelta(days=10)
        )
        assert done is not None
        return job.id
    finally:
        store.dispose()


def test_runs_cleanup_removes_old_runs(private_api: PrivateApi) -> None:
    cli = make_cli(private_api.url, token=private_api.token)
    old = _old_ended_job(private_api)
    events = Events(
        connect(private_api.settings.effective_redis_url), logs_dir=private_api.settings.logs_dir
    )
    events.append_logs(old, [("stdout", None, "old line")])
    events.r.close()

    keep = cli("runs", "cleanup", "--older-than", "30d", "--json")
    assert keep.code == 0, keep
    assert json.loads(keep.out)["removed"] == 0
    assert cli("jobs", "status", old).code == 0

    r = cli("runs", "cleanup", "--older-than", "7d")
    assert r.code == 0, r
    assert "removed 1 run(s)" in r.err, r
    gone = cli("jobs", "status", old)
    assert gone.code == 1 and f"job {old} not found" in gone.err, gone


def test_runs_export_streams_json_lines_with_filters(
    cli: Cli, hello_job: dict[str, Any], tmp_path: Path
) -> None:
    r = cli("runs", "export")
    assert r.code == 0, r
    records = [json.loads(line) for line in r.out.splitlines()]
    assert hello_job["id"] in [rec["id"] for rec in records]
    created = [rec["created_at"] for rec in records]
    assert created == sorted(created, reverse=True)  # newest first

    failed = cli("runs", "export", "--status", "failed", "--executor", "process")
    records = [json.loads(line) for line in failed.out.splitlines()]
    assert hello_job["id"] in [rec["id"] for rec in records]
    assert {(rec["status"], rec["executor"]) for rec in records} == {("failed", "process")}
    assert len(cli("runs", "export", "--limit", "1").out.splitlines()) == 1
    later = cli("runs", "export", "--since", hello_job["created_at"], "--status", "failed")
    assert hello_job["id"] in later.out
    assert (
        cli("runs", "export", "--until", hello_job["created_at"]).out.count(hello_job["id"]) == 0
    )  # until is exclusive

    dest = tmp_path / "runs.jsonl"
    r = cli("runs", "export", "--status", "failed", "--executor", "process", "-o", str(dest))
    assert r.code == 0 and "wrote" in r.err, r
    assert dest.read_text().splitlines() == failed.out.splitlines()

    bad = cli("runs", "export", "--since", "yesterday-ish")
    bad.assert_one_error_line()
    assert bad.code == 2 and "since" in bad.err, bad


def test_runs_show_prints_the_whole_record(cli: Cli, hello_job: dict[str, Any]) -> None:
    r = cli("runs", "show", hello_job["id"])
    assert r.code == 0, r
    record = json.loads(r.out)
    assert record["id"] == hello_job["id"] and record["exit_code"] == 7
    assert record["log_lines"] == 2 and record["attempts"]
    missing = cli("runs", "show", "no-such-run")
    missing.assert_one_error_line()
    assert missing.code == 1 and "not found" in missing.err, missing


def test_runs_cleanup_refuses_a_bad_duration(cli: Cli) -> None:
    r = cli("runs", "cleanup", "--older-than", "a week")
    r.assert_one_error_line()
    assert r.code == 2 and "not a duration" in r.err, r


def test_token_is_sent_and_a_wrong_one_is_one_line(private_api: PrivateApi) -> None:
    ok = make_cli(private_api.url, token=private_api.token)("jobs", "--json")
    assert ok.code == 0, ok
    for token in (None, "wrong"):
        r = make_cli(private_api.url, token=token)("jobs")
        r.assert_one_error_line()
        assert r.code == 1 and "LAUNCHBAY_TOKEN" in r.err, r
    flag = make_cli(private_api.url)("jobs", "--json", "--token", private_api.token)
    assert flag.code == 0, flag
