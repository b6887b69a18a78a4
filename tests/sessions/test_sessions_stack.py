"""Sessions on the real stack: a resumed session sees its workspace and takes its
defaults, a fork starts from a copy and leaves its parent untouched, one run at a time."""

from __future__ import annotations

from datetime import datetime

from tests.support import Stack

API = "/api/v1"


def _ws(stack: Stack, session_id: str):  # type: ignore[no-untyped-def]
    return stack.settings.workspaces_dir / "sessions" / session_id


def _done(stack: Stack, spec: dict) -> dict:  # type: ignore[type-arg]
    job = stack.submit(spec)
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    return done


def test_a_resumed_session_sees_the_first_runs_file_and_takes_its_defaults(stack: Stack) -> None:
    first = _done(
        stack,
        {
            "executor": "process",
            "command": ["sh", "-c", "echo from-first > first.txt"],
            "env": {"GREETING": "hello-from-the-session"},
            "timeout_s": 120,
            "session": {"name": "resume-me"},
        },
    )
    sid = first["session_id"]
    assert sid and sid.startswith("ses_")
    # The second job names neither env nor timeout: the session's defaults fill them.
    second = _done(
        stack,
        {
            "executor": "process",
            "command": ["sh", "-c", 'cat first.txt > seen.txt && echo "$GREETING" >> seen.txt'],
            "session": {"resume": sid},
        },
    )
    assert second["session_id"] == sid
    assert second["spec"]["env"] == {"GREETING": "hello-from-the-session"}
    assert second["spec"]["timeout_s"] == 120
    seen = (_ws(stack, sid) / "seen.txt").read_text().split()
    assert seen == ["from-first", "hello-from-the-session"]
    # By name, too; and the session lists both runs, oldest first.
    third = _done(
        stack,
        {
            "executor": "process",
            "command": ["test", "-f", "seen.txt"],
            "session": {"resume": "resume-me"},
        },
    )
    assert third["session_id"] == sid
    got = stack.http.get(f"{API}/sessions/{sid}").json()
    assert [r["id"] for r in got["runs"]] == [first["id"], second["id"], third["id"]]
    assert got["defaults"]["env"] == {"GREETING": "hello-from-the-session"}


def test_a_fork_starts_from_a_copy_and_leaves_the_parent_untouched(stack: Stack) -> None:
    parent = _done(
        stack,
        {
            "executor": "process",
            "command": ["sh", "-c", "echo base > shared.txt"],
            "session": {"name": "fork-parent"},
        },
    )
    pid = parent["session_id"]
    fork = _done(
        stack,
        {
            "executor": "process",
            "command": [
                "sh",
                "-c",
                "grep -q base shared.txt && echo changed > shared.txt && touch mine",
            ],
            "session": {"parent_session_id": pid},
        },
    )
    fid = fork["session_id"]
    assert fid != pid
    assert (_ws(stack, fid) / "shared.txt").read_text() == "changed\n"
    assert (_ws(stack, pid) / "shared.txt").read_text() == "base\n"
    assert not (_ws(stack, pid) / "mine").exists()
    got = stack.http.get(f"{API}/sessions/{fid}").json()
    assert got["parent_session_id"] == pid


def test_runs_of_one_session_run_one_at_a_time_in_order(stack: Stack) -> None:
    # The worker has 4 slots: without the claim's session condition both would run at once.
    first = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "echo a >> order; sleep 2; echo a-done >> order"],
            "session": {"name": "serial"},
        }
    )
    sid = first["session_id"]
    second = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "echo b >> order"],
            "session": {"resume": sid},
        }
    )
    a = stack.wait_status(first["id"], timeout=60)
    b = stack.wait_status(second["id"], timeout=60)
    assert a["status"] == b["status"] == "succeeded"
    assert datetime.fromisoformat(b["started_at"]) >= datetime.fromisoformat(a["finished_at"])
    assert (_ws(stack, sid) / "order").read_text().split() == ["a", "a-done", "b"]


def test_sessions_api_lists_refuses_a_busy_delete_and_deletes_with_the_workspace(
    stack: Stack,
) -> None:
    job = stack.submit(
        {
            "executor": "process",
            "command": ["sh", "-c", "touch x; sleep 30"],
            "session": {"name": "del"},
        }
    )
    sid = job["session_id"]
    stack.wait_status(job["id"], "running", timeout=30)
    listed = stack.http.get(f"{API}/sessions", params={"limit": 1000}).json()
    assert sid in [s["id"] for s in listed["items"]]
    r = stack.http.delete(f"{API}/sessions/{sid}")
    assert r.status_code == 409 and "unfinished" in r.json()["error"]
    stack.http.post(f"{API}/jobs/{job['id']}/cancel")
    stack.wait_status(job["id"], "cancelled", timeout=30)
    assert _ws(stack, sid).exists()
    r = stack.http.delete(f"{API}/sessions/{sid}")
    assert r.status_code == 200 and r.json()["id"] == sid
    assert not _ws(stack, sid).exists()
    assert stack.http.get(f"{API}/sessions/{sid}").status_code == 404


def test_resuming_an_unknown_session_or_another_executor_is_a_422(stack: Stack) -> None:
    r = stack.http.post(
        f"{API}/jobs",
        json={
            "executor": "process",
            "command": ["true"],
            "session": {"resume": "ses_000000000000"},
        },
    )
    assert r.status_code == 422 and r.json()["field"] == "session.resume"
    first = _done(stack, {"executor": "process", "command": ["true"], "session": {}})
    r = stack.http.post(
        f"{API}/jobs",
        json={
            "executor": "builtin",
            "type": "echo_delay",
            "session": {"resume": first["session_id"]},
        },
    )
    assert r.status_code == 422 and r.json()["field"] == "executor"
