"""``launchbay run``: building specs, submitting, and --wait's exit codes, against a real stack."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.cli._watch import Watcher
from orchestrator.client import Job, LaunchbayClient
from orchestrator.job import JobStatus
from tests.cli.conftest import EXAMPLES, Cli, clean_env
from tests.support import Stack, wait_until


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _job_named(stack: Stack, name: str) -> dict[str, Any] | None:
    items = stack.http.get("/api/v1/jobs", params={"limit": 200}).json()["items"]
    return next((j for j in items if j["spec"].get("name") == name), None)


# ---------------------------------------------------------------- must-show


def test_builtin_countdown_wait_exits_0(cli: Cli, stack: Stack) -> None:
    name = _unique("countdown")
    r = cli("run", "--builtin", "countdown", "seconds=2", "--wait", "--name", name)
    assert r.code == 0, r
    assert "2..." in r.out and "1..." in r.out, r  # the log tail
    job = _job_named(stack, name)
    assert job is not None and job["status"] == "succeeded"
    assert job["progress"]["percent"] == 100
    assert f"job {job['id']} succeeded" in r.err


def test_process_wait_exits_with_the_commands_exit_code(cli: Cli, stack: Stack) -> None:
    name = _unique("exit7")
    r = cli(
        "run", "--process", "--wait", "--name", name, "--", "sh", "-c", "echo hello-cli; exit 7"
    )
    assert r.code == 7, r
    assert "hello-cli" in r.out.splitlines(), r
    job = _job_named(stack, name)
    assert job is not None and job["status"] == "failed" and job["exit_code"] == 7
    assert "Traceback" not in r.err


# ---------------------------------------------------------------- other outcomes


def test_timeout_exits_124(cli: Cli, stack: Stack) -> None:
    name = _unique("timeout")
    r = cli(
        "run", "--builtin", "countdown", "seconds=30", "--timeout", "1", "--wait", "--name", name
    )
    assert r.code == 124, r
    job = _job_named(stack, name)
    assert job is not None and job["status"] == "timed_out"
    assert "timed out" in r.err


def test_ctrl_c_while_waiting_cancels_the_job_and_exits_130(popen_cli: Any, stack: Stack) -> None:
    name = _unique("ctrl-c")
    proc = popen_cli("run", "--builtin", "countdown", "seconds=60", "--wait", "--name", name)
    job = wait_until(lambda: _job_named(stack, name), timeout=30, what="the job to exist")
    stack.wait_status(job["id"], "running", timeout=30)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (out, err)
    assert "cancelling job" in err
    assert stack.job(job["id"])["status"] == "cancelled"
    assert "Traceback" not in err


class _CtrlCOnFirstPoll(LaunchbayClient):
    """The real client, except that Ctrl-C lands while its first status request is out."""

    interrupted = False

    def job(self, job_id: str, *, wait: float = 0) -> Job:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return super().job(job_id, wait=wait)


def test_ctrl_c_before_the_first_poll_answered_still_cancels(stack: Stack) -> None:
    # A slow CLI start can take the Ctrl-C before it has seen the job once (a CI run did).
    submitted = stack.submit(
        {"executor": "builtin", "type": "countdown", "params": {"seconds": 60}}
    )
    with _CtrlCOnFirstPoll(stack.url) as client:
        result = Watcher(client, submitted["id"], bar=False).run()
    assert result.interrupted and not result.gave_up
    assert result.job.status == JobStatus.cancelled
    assert stack.job(submitted["id"])["status"] == "cancelled"


class _HoldingProxy:
    """Forwards to the real API, but holds the answer to a job submission until released,
    so a Ctrl-C can land while the job already exists and the CLI does not know it yet."""

    def __init__(self, target: str) -> None:
        self.submitted = threading.Event()
        self.release = threading.Event()
        self.job_id = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = httpx.request(
                    self.command,
                    target + self.path,
                    content=body,
                    headers={"Content-Type": self.headers.get("Content-Type") or ""},
                    timeout=30,
                )
                if self.command == "POST" and self.path.rstrip("/") == "/api/v1/jobs":
                    proxy.job_id = answer.json()["id"]
                    proxy.submitted.set()
                    proxy.release.wait(timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", ""))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_ctrl_c_while_the_submission_is_answered_cancels_the_job(
    cli_script: Path, stack: Stack
) -> None:
    proxy = _HoldingProxy(stack.url)
    proc = subprocess.Popen(
        [str(cli_script), "run", "--builtin", "countdown", "seconds=60", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(LAUNCHBAY_URL=proxy.url),
    )
    try:
        assert proxy.submitted.wait(timeout=60), "the CLI never submitted"
        proc.send_signal(signal.SIGINT)  # the job exists; its id has not reached the CLI
        assert proc.stderr is not None
        held = proc.stderr.readline()  # bounded: the proxy answers within 30 s regardless
        assert "cancelled once it is submitted" in held, held
        proxy.release.set()
        out, err = proc.communicate(timeout=90)
    finally:
        proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130, (out, err)
    assert f"cancelling job {proxy.job_id}" in err and "Traceback" not in err, err
    assert stack.job(proxy.job_id)["status"] == "cancelled"


def test_failed_job_without_exit_code_exits_1(cli: Cli) -> None:
    # A command that cannot start fails the job before there is any exit code.
    r = cli("run", "--process", "--wait", "--json", "--", "/nonexistent/launchbay-cmd")
    assert r.code == 1, r
    job = json.loads(r.out)
    assert job["status"] == "failed" and job["exit_code"] is None
    assert "failed" in r.err and "Traceback" not in r.err


def test_single_value_for_a_list_param_becomes_a_list(cli: Cli) -> None:
    # url_fetch's urls is an array: one urls=... is sent as a one-item list.
    r = cli(
        "run", "--builtin", "url_fetch", "urls=http://127.0.0.1:1/", "timeout=1", "--wait", "--json"
    )
    assert r.code == 0, r
    job = json.loads(r.out)
    assert job["spec"]["params"]["urls"] == ["http://127.0.0.1:1/"]
    assert job["result"]["failed"] == 1


# ---------------------------------------------------------------- building specs


def test_run_without_wait_prints_the_id_and_applies_options(cli: Cli, stack: Stack) -> None:
    r = cli(
        "run",
        "--process",
        "-e",
        "GREETING=hi",
        "-e",
        "OTHER=a=b",
        "--artifact",
        "*.txt",
        "--timeout",
        "2m",
        "--name",
        "opts",
        "-l",
        "team=cli",
        "--",
        "sh",
        "-c",
        "echo $GREETING > out.txt",
    )
    assert r.code == 0, r
    job_id = r.out.strip()
    assert len(job_id) == 32, r
    job = stack.wait_status(job_id, timeout=30)
    spec = job["spec"]
    assert spec["executor"] == "process"
    assert spec["command"] == ["sh", "-c", "echo $GREETING > out.txt"]
    assert spec["env"] == {"GREETING": "hi", "OTHER": "a=b"}
    assert spec["artifacts"] == ["*.txt"]
    assert spec["timeout_s"] == 120
    assert spec["name"] == "opts" and spec["labels"] == {"team": "cli"}
    assert job["status"] == "succeeded"


def test_image_and_command_make_a_docker_job_with_one_main_step(cli: Cli, stack: Stack) -> None:
    # The tag no runner has keeps it queued, so this needs no Docker; then cancel it.
    r = cli(
        "run",
        "busybox:latest",
        "--cpu",
        "0.5",
        "--memory",
        "64m",
        "--tag",
        "cli-nobody",
        "--json",
        "--",
        "sh",
        "-c",
        "echo hi",
    )
    assert r.code == 0, r
    job = json.loads(r.out)
    spec = job["spec"]
    assert spec["executor"] == "docker" and spec["image"] == "busybox:latest"
    assert spec["steps"] == [{"name": "main", "command": ["sh", "-c", "echo hi"]}]
    assert spec["resources"] == {"cpu": 0.5, "memory_mb": 64}
    assert spec["demands"]["tags"] == ["cli-nobody"]
    c = cli("jobs", "cancel", job["id"])
    assert c.code == 0, c
    assert stack.wait_status(job["id"], timeout=30)["status"] == "cancelled"


@pytest.mark.parametrize(
    "example", ["builtin.yaml", "builtin.json", "process.yaml", "process.json"]
)
def test_spec_examples_run_to_success(cli: Cli, example: str) -> None:
    r = cli("run", "--spec", str(EXAMPLES / example), "--wait", "--json", timeout=120)
    assert r.code == 0, r
    job = json.loads(r.out)  # --json keeps stdout to the job; logs went to stderr
    assert job["status"] == "succeeded"


def test_spec_file_options_override_and_extend(cli: Cli, tmp_path: Path, stack: Stack) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(
        "executor: process\nname: from-file\ncommand: [sh, -c, 'echo $A $B']\nenv: {A: file}\n"
    )
    r = cli("run", "--spec", str(f), "--name", "from-cli", "-e", "B=cli", "--wait")
    assert r.code == 0, r
    assert "file cli" in r.out.splitlines(), r


def test_spec_from_stdin(cli: Cli) -> None:
    r = cli(
        "run",
        "--spec",
        "-",
        "--json",
        stdin=json.dumps({"executor": "builtin", "type": "fibonacci", "params": {"count": 5}}),
    )
    assert r.code == 0, r
    assert json.loads(r.out)["spec"]["params"] == {"count": 5}


# ---------------------------------------------------------------- refusals (exit 2)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--builtin", "countdown", "seconds"], "expected key=value"),
        (["--builtin", "countdown", "=3"], "expected key=value"),
        (["--process", "-e", "=x", "--", "true"], "bad -e"),
        (["--process"], "needs a command"),
        (["busybox"], "give an image and a command"),
        (["--process", "--builtin", "countdown", "--", "true"], "choose one of"),
        (["--process", "--cpu", "1", "--", "true"], "--cpu and --memory"),
        (["busybox", "--memory", "lots", "--", "true"], "bad --memory"),
        (["--process", "--timeout", "soon", "--", "true"], "bad --timeout"),
        (["--spec", "/nonexistent/job.yaml"], "does not exist"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(cli: Cli, argv: list[str], needle: str) -> None:
    r = cli("run", *argv)
    r.assert_one_error_line()
    assert r.code == 2, r
    assert needle in r.err, r


@pytest.mark.parametrize(
    "text,needle",
    [
        ("executor: process\ncommand: [sh, -c\n", "not valid YAML"),
        ("- just\n- a list\n", "must hold one mapping"),
        ("name: no-executor\n", "no 'executor'"),
    ],
)
def test_spec_file_that_does_not_parse_exits_2(
    cli: Cli, tmp_path: Path, text: str, needle: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    r = cli("run", "--spec", str(f))
    r.assert_one_error_line()
    assert r.code == 2 and needle in r.err, r


def test_bad_json_spec_names_the_line(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{"executor": "process",\n "command": [}')
    r = cli("run", "--spec", str(f))
    r.assert_one_error_line()
    assert r.code == 2 and "not valid JSON" in r.err and "line 2" in r.err, r


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--builtin", "countdown", "seconds=999"], "seconds"),
        (["--builtin", "no_such_type"], "unknown job type"),
        (["--builtin", "countdown", "nope=1"], "nope"),
    ],
)
def test_server_422_is_one_line_and_exit_2(cli: Cli, argv: list[str], needle: str) -> None:
    r = cli("run", *argv)
    r.assert_one_error_line()
    assert r.code == 2 and needle in r.err, r


def test_invalid_spec_file_refused_by_the_server_names_the_field(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text("executor: docker\nimage: busybox\n")  # no steps
    r = cli("run", "--spec", str(f))
    r.assert_one_error_line()
    assert r.code == 2 and "steps" in r.err, r
