"""FakeKubernetes: a FAKE Kubernetes API server, in process, for tests (not a cluster).

It answers the few batch/v1 and core/v1 endpoints the kubernetes launcher calls, so the real
``kubernetes`` client code path runs end to end without a cluster. Its "kubelet" runs each
pod's container command as a local process (no image is pulled, no isolation): it is a fake,
good for testing the launcher's lifecycle, nothing more. The HTTP side (paths, bodies, the
chunked log stream) is in :mod:`workers.testing.kubernetes_http`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workers.testing.kubernetes_http import _FakeHandler, _status_body

__all__ = ["FakeKubernetes"]

_TS = "%Y-%m-%dT%H:%M:%SZ"
_DEADLINE_MSG = "Job was active longer than specified deadline"


def _now() -> str:
    return time.strftime(_TS, time.gmtime())


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
        # A short poll interval: close() (shutdown) waits up to one interval.
        serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, daemon=True, name="fake-kube").start()
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
