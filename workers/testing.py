"""Test doubles that ship with Launchbay, for its own tests and for yours.

- :class:`RecordingReporter` records what a launcher reports (logs, progress, steps).
- :class:`FakeKubernetes` is a FAKE Kubernetes API server: an in-process HTTP server that
  answers the few batch/v1 and core/v1 endpoints the kubernetes launcher calls, so the
  real ``kubernetes`` client code path runs end to end without a cluster. Its "kubelet"
  runs each pod's container command as a local process (no image is pulled, no
  isolation): it is a fake, good for testing the launcher's lifecycle, nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from orchestrator.job import StepResult

__all__ = ["FakeKubernetes", "RecordingReporter"]


@dataclass
class RecordingReporter:
    """A thread-safe :class:`~workers.launchers.base.Reporter` that keeps everything."""

    lines: list[tuple[str, str, str | None]] = field(default_factory=list)
    progress_updates: list[tuple[float, str]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    def log(self, stream: str, line: str, step: str | None = None) -> None:
        with self._changed:
            self.lines.append((stream, line, step))
            self._changed.notify_all()

    def progress(self, percent: float, message: str = "") -> None:
        with self._changed:
            self.progress_updates.append((percent, message))
            self._changed.notify_all()

    def result(self, value: Any) -> None:
        with self._changed:
            self.results.append(value)

    def step(self, result: StepResult) -> None:
        with self._changed:
            self.steps.append(result)
            self._changed.notify_all()

    def text(self, stream: str | None = None) -> list[str]:
        """The lines seen so far, of one stream or of all."""
        with self._lock:
            return [line for s, line, _ in self.lines if stream is None or s == stream]

    def final_steps(self) -> dict[str, StepResult]:
        """The last report of each step, by name."""
        with self._lock:
            return {s.name: s for s in self.steps}

    def wait_for_line(self, text: str, timeout: float = 30) -> bool:
        """Block until a line containing ``text`` was logged (False on timeout)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for _, line, _ in self.lines), timeout
            )


# ---------------------------------------------------------------------- FakeKubernetes

_TS = "%Y-%m-%dT%H:%M:%SZ"
_DEADLINE_MSG = "Job was active longer than specified deadline"


def _now() -> str:
    return time.strftime(_TS, time.gmtime())


def _status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        key, eq, value = term.partition("=")
        if eq and labels.get(key) != value:
            return False
        if not eq and key not in labels:
            return False
    return True


@dataclass
class _FakePod:
    namespace: str
    name: str
    job: str
    labels: dict[str, str]
    spec: dict[str, Any]
    created: str = field(default_factory=_now)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    phase: str = "Pending"
    lines: list[str] = field(default_factory=list)
    ended: bool = False
    proc: subprocess.Popen[bytes] | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    def to_json(self) -> dict[str, Any]:
        c = self.spec["containers"][0]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "labels": {**self.labels, "job-name": self.job},
                "creationTimestamp": self.created,
            },
            "spec": self.spec,
            "status": {
                "phase": self.phase,
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": "running" in self.state,
                        "restartCount": 0,
                        "started": "running" in self.state,
                        "state": self.state,
                    }
                ],
            },
        }


class FakeKubernetes:
    """A FAKE Kubernetes API server for tests (see the module docstring).

    Answers: create/read/list/delete namespaced Jobs (delete honours
    ``propagationPolicy``), list/read pods by label selector, and pod logs with
    ``follow``. Records every request in :attr:`requests` and every deletion in
    :attr:`deletions`. Images in :attr:`missing_images` never start (``ErrImagePull``);
    :meth:`fail_next` makes the next matching requests answer an error status.
    """

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], _FakePod] = {}
        self.requests: list[tuple[str, str]] = []
        self.deletions: list[tuple[str, str, str | None]] = []
        self.missing_images: set[str] = set()
        self._failures: list[list[Any]] = []
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-kube-"))

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(_FakeHandler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-kube").start()
        return self

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._kill(pod, 0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig pointing at this fake, to exercise the kubeconfig code path."""
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                    "contexts": [
                        {
                            "name": "fake",
                            "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                        }
                    ],
                }
            )
        )
        return path

    def fail_next(self, method: str, path_contains: str, status: int, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``status``."""
        with self._lock:
            self._failures.append([method, path_contains, status, times])

    def _injected_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self._failures:
                if f[0] == method and f[1] in path and f[3] > 0:
                    f[3] -= 1
                    return int(f[2])
        return None

    def running_processes(self) -> list[int]:
        """Pids of pod processes that still run."""
        with self._lock:
            return [
                p.proc.pid
                for p in self.pods.values()
                if p.proc is not None and p.proc.poll() is None
            ]

    # ------------------------------------------------------------ jobs

    def create_job(self, ns: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        containers = (((body.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "containers"
        )
        if body.get("kind") != "Job" or not name or not containers:
            return 422, _status_body(
                422, "Invalid", "Job is invalid: name and containers are required"
            )
        with self._lock:
            if (ns, name) in self.jobs:
                return 409, _status_body(
                    409, "AlreadyExists", f'jobs.batch "{name}" already exists'
                )
            job = json.loads(json.dumps(body))
            job["metadata"].update(
                namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1"
            )
            job["status"] = {}
            self.jobs[(ns, name)] = job
            tpl = job["spec"]["template"]
            pod = _FakePod(
                ns,
                f"{name}-{uuid.uuid4().hex[:5]}",
                name,
                dict((tpl.get("metadata") or {}).get("labels") or {}),
                tpl["spec"],
            )
            self.pods[(ns, pod.name)] = pod
        threading.Thread(
            target=self._kubelet, args=(job, pod), daemon=True, name=f"kubelet-{pod.name}"
        ).start()
        return 201, job

    def delete_job(
        self, ns: str, name: str, propagation: str | None, grace: int | None
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            job = self.jobs.get((ns, name))
            if job is None:
                return 404, _status_body(404, "NotFound", f'jobs.batch "{name}" not found')
            self.deletions.append((ns, name, propagation))
            pods = [p for p in self.pods.values() if p.namespace == ns and p.job == name]
            if propagation == "Foreground":
                job["metadata"]["deletionTimestamp"] = _now()
                job["metadata"]["finalizers"] = ["foregroundDeletion"]
            else:
                del self.jobs[(ns, name)]
        if propagation != "Orphan":

            def collect() -> None:
                for pod in pods:
                    self._kill(pod, pod.spec.get("terminationGracePeriodSeconds", 30))
                    with self._lock:
                        self.pods.pop((ns, pod.name), None)
                with self._lock:
                    self.jobs.pop((ns, name), None)  # foreground: the Job goes last

            threading.Thread(target=collect, daemon=True).start()
        return 200, job

    def _kill(self, pod: _FakePod, grace: float) -> None:
        proc = pod.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    # ------------------------------------------------------------ the fake kubelet

    def _kubelet(self, job: dict[str, Any], pod: _FakePod) -> None:
        c = pod.spec["containers"][0]
        if c["image"] in self.missing_images:
            pod.state = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": f"pull access denied for {c['image']}",
                }
            }
            return
        env = {**os.environ, **{e["name"]: e.get("value", "") for e in c.get("env") or []}}
        workdir = self._tmp / pod.name
        workdir.mkdir()
        started = _now()
        try:
            proc = subprocess.Popen(
                c["command"] + list(c.get("args") or []),
                cwd=workdir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            pod.state = {"waiting": {"reason": "CreateContainerError", "message": str(exc)}}
            return
        with self._lock:
            pod.proc = proc
            pod.state, pod.phase = {"running": {"startedAt": started}}, "Running"
            job["status"].update(active=1, startTime=started)
        deadline = job["spec"].get("activeDeadlineSeconds")
        timed_out = threading.Event()
        timer = None
        if deadline:

            def expire() -> None:
                timed_out.set()
                self._kill(pod, pod.spec.get("terminationGracePeriodSeconds", 30))

            timer = threading.Timer(deadline, expire)
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            with pod.cond:
                pod.lines.append(raw.decode(errors="replace"))
                pod.cond.notify_all()
        code = proc.wait()
        if timer is not None:
            timer.cancel()
        code = 128 - code if code < 0 else code
        finished = _now()
        with self._lock, pod.cond:
            pod.state = {
                "terminated": {
                    "exitCode": code,
                    "startedAt": started,
                    "finishedAt": finished,
                    "reason": "Completed" if code == 0 else "Error",
                }
            }
            pod.phase = "Succeeded" if code == 0 else "Failed"
            pod.ended = True
            pod.cond.notify_all()
            status = job["status"]
            status.pop("active", None)
            if code == 0 and not timed_out.is_set():
                status.update(
                    succeeded=1,
                    completionTime=finished,
                    conditions=[
                        {"type": "Complete", "status": "True", "lastTransitionTime": finished}
                    ],
                )
            else:
                reason, msg = (
                    ("DeadlineExceeded", _DEADLINE_MSG)
                    if timed_out.is_set()
                    else ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
                )
                status.update(
                    failed=1,
                    conditions=[
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": reason,
                            "message": msg,
                            "lastTransitionTime": finished,
                        }
                    ],
                )

    def pod_log(self, pod: _FakePod, follow: bool) -> Iterator[str]:
        i = 0
        while not self._closing.is_set():
            with pod.cond:
                if i >= len(pod.lines):
                    if pod.ended or not follow:
                        return
                    pod.cond.wait(0.2)
                    continue
                line = pod.lines[i]
            i += 1
            yield line


class _FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeKubernetes

    _JOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?$")
    _PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else {}

    def _route(self, method: str) -> None:
        fake = self.owner
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        fake.requests.append((method, self.path))
        body = self._body() if method in ("POST", "DELETE") else {}
        injected = fake._injected_failure(method, url.path)
        if injected:
            self._send(injected, _status_body(injected, "InternalError", "injected failure"))
            return
        if m := self._JOBS.match(url.path):
            ns, name = m.group(1), m.group(2)
            if method == "POST" and not name:
                self._send(*fake.create_job(ns, body))
            elif method == "GET" and not name:
                with fake._lock:
                    items = [
                        j
                        for (n, _), j in fake.jobs.items()
                        if n == ns
                        and _matches(j["metadata"].get("labels") or {}, q.get("labelSelector"))
                    ]
                self._send(
                    200,
                    {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items},
                )
            elif method == "GET":
                with fake._lock:
                    job = fake.jobs.get((ns, name))
                self._send(200, job) if job else self._send(
                    404, _status_body(404, "NotFound", f'jobs.batch "{name}" not found')
                )
            elif method == "DELETE":
                grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
                self._send(
                    *fake.delete_job(
                        ns,
                        name,
                        body.get("propagationPolicy") or q.get("propagationPolicy"),
                        int(grace) if grace is not None else None,
                    )
                )
            else:
                self._send(405, _status_body(405, "MethodNotAllowed", method))
            return
        if (m := self._PODS.match(url.path)) and method == "GET":
            ns, name, is_log = m.group(1), m.group(2), m.group(3)
            if not name:
                with fake._lock:
                    items = [
                        p.to_json()
                        for (n, _), p in fake.pods.items()
                        if n == ns and _matches(p.labels, q.get("labelSelector"))
                    ]
                self._send(
                    200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
                )
                return
            with fake._lock:
                pod = fake.pods.get((ns, name))
            if pod is None:
                self._send(404, _status_body(404, "NotFound", f'pods "{name}" not found'))
            elif not is_log:
                self._send(200, pod.to_json())
            elif pod.proc is None:
                self._send(
                    400,
                    _status_body(
                        400, "BadRequest", f'container "job" in pod "{name}" is waiting to start'
                    ),
                )
            else:
                self._stream(fake.pod_log(pod, q.get("follow") == "true"))
            return
        self._send(404, _status_body(404, "NotFound", f"the fake does not serve {url.path}"))

    def _stream(self, lines: Iterator[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in lines:
                data = line.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")
