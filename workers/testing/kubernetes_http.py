"""The HTTP side of :class:`~workers.testing.kubernetes.FakeKubernetes` (a fake API server).

Routes the Kubernetes API paths the launcher calls to the fake, answers JSON (errors as
Kubernetes ``Status`` bodies) and streams pod logs chunked, as the real API server does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from workers.testing.kubernetes import FakeKubernetes


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
