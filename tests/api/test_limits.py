"""Every input has a bound, and every well-formed request past one gets a 4xx naming it.

One test per class of fault the security review found (each answered 500, or was taken
whole), over the session's real API, worker and Valkey; the bounds that need settings of
their own (the agent's artifact upload) run on a second API process of the same stack.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from orchestrator.services import free_port
from tests.support import AgentKeyring, Stack, private_api, wait_until

API = "/api/v1"
L = f"{API}/launcher"
MiB = 1 << 20


def refused(r: httpx.Response, field: str, status: int = 422) -> str:
    """Assert ``r`` is a ``status`` problem naming ``field``; return its message."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["code"] == status
    named = {body.get("field")} | {f["field"] for f in body.get("fields") or []}
    assert field in named, (field, body)
    return str(body["error"])


def raw_post(api: httpx.Client, path: str, text: str) -> httpx.Response:
    return api.post(path, content=text.encode(), headers={"content-type": "application/json"})


FIB = {"executor": "builtin", "type": "fibonacci", "params": {"count": 3}}


# ---------------------------------------------------------------- request bodies


def test_a_body_over_the_limit_is_413_with_a_json_problem(api: httpx.Client) -> None:
    big = {**FIB, "labels": {"pad": "x" * (2 * MiB)}}
    r = api.post(f"{API}/jobs", json=big)
    assert r.status_code == 413, r.text[:300]
    assert r.json() == {
        "error": f"the request body is larger than this route takes ({MiB} bytes)",
        "code": 413,
    }
    # Without a Content-Length (chunked), the bound holds while the body streams in.
    chunks = (b"x" * 65536 for _ in range(40))
    r = api.post(f"{API}/jobs", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == 413
    # Just under it, the same spec is taken.
    ok = api.post(f"{API}/jobs", json={**FIB, "labels": {"pad": "x" * 1000}})
    assert ok.status_code == 201, ok.text


def test_text_that_is_not_json_is_refused_naming_the_body(api: httpx.Client) -> None:
    # A \ud800 escape is half a character: no answer holding it could be encoded.
    lone = json.dumps({**FIB, "labels": {"a": "\ud800"}}, ensure_ascii=True)
    assert "not valid JSON" in refused(raw_post(api, f"{API}/jobs", lone), "body")
    deep = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in refused(raw_post(api, f"{API}/jobs", deep), "body")
    # NaN and Infinity are no JSON numbers: the field that holds one is named.
    head = '{"executor": "builtin", "type": "countdown", '
    r = raw_post(api, f"{API}/jobs", head + '"timeout_s": Infinity}')
    assert "finite number" in refused(r, "timeout_s")  # (not stored as "no timeout")
    r = raw_post(api, f"{API}/jobs", head + '"match_timeout_s": NaN}')
    assert "finite number" in refused(r, "match_timeout_s")
    k8s = '{"executor": "kubernetes", "image": "x", "command": ["x"], "template": {"a": NaN}}'
    assert "NaN and infinities" in refused(raw_post(api, f"{API}/jobs", k8s), "template")


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/jobs", {"offset": 2**63}, "offset"),
        ("/jobs", {"offset": 10**20}, "offset"),
        ("/runs", {"offset": 2**63}, "offset"),
        ("/runs", {"offset": 2**63, "format": "jsonl"}, "offset"),
        ("/runs", {"limit": 10**6}, "limit"),
        ("/jobs", {"limit": 0}, "limit"),
    ],
)
def test_paging_numbers_have_maxima(
    api: httpx.Client, path: str, params: dict[str, Any], field: str
) -> None:
    refused(api.get(API + path, params=params), field)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"match_timeout_s": 1e15}, "match_timeout_s"),
        ({"timeout_s": 1e300}, "timeout_s"),
        ({"timeout_s": 366 * 86400 + 1}, "timeout_s"),
        ({"retry_backoff_s": 1e9}, "retry_backoff_s"),
        ({"max_attempts": 2**70}, "max_attempts"),
    ],
)
def test_durations_and_counts_of_a_spec_have_maxima(
    api: httpx.Client, extra: dict[str, Any], field: str
) -> None:
    refused(api.post(f"{API}/jobs", json={**FIB, **extra}), field)


def test_a_year_long_match_timeout_is_still_taken(api: httpx.Client) -> None:
    r = api.post(f"{API}/jobs", json={**FIB, "match_timeout_s": 366 * 86400})
    assert r.status_code == 201, r.text


# ---------------------------------------------------------------- times and cursors


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_times_utc_cannot_hold_are_refused(stack: Stack, api: httpx.Client, when: str) -> None:
    assert "out of range" in refused(api.get(f"{API}/runs", params={"since": when}), "since")
    assert "out of range" in refused(api.get(f"{API}/runs", params={"until": when}), "until")
    job = stack.submit(FIB)
    for path in ("logs", "logs/stream"):
        r = api.get(f"{API}/jobs/{job['id']}/{path}", params={"since": when})
        assert "out of range" in refused(r, "since")


def test_stream_cursors_must_name_a_place_in_the_stream(stack: Stack, api: httpx.Client) -> None:
    job = stack.wait_status(stack.submit(FIB)["id"])
    base = f"{API}/jobs/{job['id']}"
    for since in (str(2**63), "9" * 5000, "²"):
        for path in ("logs", "logs/stream"):
            refused(api.get(f"{base}/{path}", params={"since": since}), "since")
        r = api.get(f"{base}/logs", params={"since": since, "format": "text"})
        refused(r, "since")  # (a 4xx before the stream starts, not a stream cut short)
        r = api.get(f"{base}/logs/stream", headers={b"Last-Event-ID": since.encode()})
        refused(r, "Last-Event-ID")
    for cursor in (f"{2**64}-0|1", f"1-{2**64}|1", f"1-0|{2**63}", "٣-0|1"):
        r = api.get(f"{base}/events", headers={b"Last-Event-ID": cursor.encode()})
        refused(r, "Last-Event-ID")
    refused(api.get(f"{base}/events", params={"since": "1-0\n|1"}), "since")
    # Well formed, but past this job's last event: it came from somewhere else.
    past = f"{2**64 - 1}-{2**64 - 1}|1"
    assert "past this job's last event" in refused(
        api.get(f"{base}/events", params={"since": past}), "since"
    )
    # A cursor this job gave still resumes.
    with api.stream("GET", f"{base}/events") as r:
        ids = [ln[4:] for ln in r.iter_lines() if ln.startswith("id: ")]
    assert api.get(f"{base}/events", headers={"Last-Event-ID": ids[-1]}).status_code == 204


def test_cleanup_durations_have_a_maximum(api: httpx.Client) -> None:
    r = api.post(f"{API}/runs/cleanup", json={"older_than": "800000d"})
    assert "longer than 100 years" in refused(r, "older_than")
    r = api.post(f"{API}/runs/cleanup", json={"older_than": "9" * 400 + "d"})
    refused(r, "older_than")


# ---------------------------------------------------------------- sizes of a spec


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "labels"),
        ({"labels": {"k" * 129: "v"}}, "labels"),
        ({"labels": {"": "v"}}, "labels"),
        ({"labels": {"k": "v" * 1025}}, "labels.k"),
        ({"env": {f"K{i}": "v" for i in range(257)}}, "env"),
        ({"env": {"A=B": "v"}}, "env"),
        ({"env": {"K": "v" * (128 * 1024 + 1)}}, "env.K"),
        ({"demands": {"tags": ["a b"]}}, "demands.tags.0"),
        ({"demands": {"tags": [f"t{i}" for i in range(33)]}}, "demands.tags"),
        ({"artifacts": [""]}, "artifacts.0"),
        ({"artifacts": ["/etc/passwd"]}, "artifacts.0"),
        ({"artifacts": ["out/../../x"]}, "artifacts.0"),
        ({"artifacts": ["a/**b"]}, "artifacts.0"),
        ({"artifacts": ["."]}, "artifacts.0"),
        ({"artifacts": ["x" * 1025]}, "artifacts.0"),
        ({"artifacts": ["*"] * 101}, "artifacts"),
        ({"name": "n" * 201}, "name"),
    ],
)
def test_labels_env_tags_and_globs_have_bounds(
    api: httpx.Client, extra: dict[str, Any], field: str
) -> None:
    refused(api.post(f"{API}/jobs", json={**FIB, **extra}), field)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"executor": "builtin", "type": "echo_delay", "params": {"message": "m" * 10001}},
         "params.message"),
        ({"executor": "builtin", "type": "url_fetch",
          "params": {"urls": ["http://x/" + "a" * 3000]}}, "params.urls"),
        ({"executor": "builtin", "type": "url_fetch",
          "params": {"urls": ["http://x/"], "max_bytes": 10**12}}, "params.max_bytes"),
        ({"executor": "builtin", "type": "echo_delay", "params": {"message": ["x"] * 20000}},
         "params"),
        ({"executor": "process", "command": ["x"] * 4097}, "command"),
        ({"executor": "process", "command": ["x" * (128 * 1024 + 1)]}, "command.0"),
        ({"executor": "kubernetes", "image": "x", "command": ["x"],
          "template": {"pad": "x" * 300_000}}, "template"),
    ],
)  # fmt: skip
def test_params_commands_and_templates_have_bounds(
    api: httpx.Client, spec: dict[str, Any], field: str
) -> None:
    refused(api.post(f"{API}/jobs", json=spec), field)


def test_the_bounds_are_published_with_the_job_types(api: httpx.Client) -> None:
    types = {t["name"]: t for t in api.get(f"{API}/job-types").json()}
    params = {p["name"]: p for p in types["url_fetch"]["params"]}
    assert params["max_bytes"]["default"] == 10 * MiB and params["max_bytes"]["max"] == 100 * MiB
    assert params["urls"]["max_length"] == 2048


# ---------------------------------------------------------------- what jobs send back


def test_long_log_lines_are_cut_with_a_marker(stack: Stack, api: httpx.Client) -> None:
    script = (
        "import sys; sys.stdout.buffer.write(('é' * 100000 + '\\nafter\\n' + 'x' * 200000)"
        ".encode())"
    )
    job = stack.wait_status(
        stack.submit({"executor": "process", "command": ["python3", "-c", script]})["id"]
    )
    assert job["status"] == "succeeded", job
    lines = [x["line"] for x in api.get(f"{API}/jobs/{job['id']}/logs").json()["items"]]
    assert len(lines) == 3
    first, after, last = lines
    kept, marker = first.split(" … ")
    assert set(kept) == {"é"} and len(kept.encode()) <= 64 * 1024
    assert marker == "[line cut: 200000 bytes]"  # (its length in UTF-8)
    assert after == "after"
    assert last == "x" * 64 * 1024 + " … [line cut: 200000 bytes]"  # (no newline at the end)


def test_progress_that_is_not_a_finite_number_is_ignored(stack: Stack) -> None:
    lines = ["::progress 40 forty", "::progress nan", "::progress inf", "::progress -inf"]
    script = "; ".join(f"print({ln!r}, flush=True)" for ln in lines)
    script += "; print('::result {\"x\": NaN}'); print('::result {\"ok\": 1}')"
    job = stack.wait_status(
        stack.submit({"executor": "process", "command": ["python3", "-c", script]})["id"]
    )
    assert job["status"] == "succeeded", job
    # A success ends at 100 % (issue 16); the message shows the later lines were ignored.
    assert job["progress"] == {"percent": 100.0, "message": "forty"}
    assert job["result"] == {"ok": 1}  # (the NaN result was a log line, not the result)


class _Big(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        size = {"/small": 10, "/big": 8 * MiB, "/liar": 8 * MiB}[self.path]
        self.send_response(200)
        if self.path != "/liar":  # (a server need not say how long its body is)
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * 65536
        sent = 0
        try:
            while sent < size:
                self.wfile.write(block[: size - sent])
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher stopped reading: that is the point

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_fetch_stops_reading_a_body_past_max_bytes(stack: Stack, web: str) -> None:
    urls = [f"{web}/small", f"{web}/big", f"{web}/liar"]
    job = stack.submit(
        {"executor": "builtin", "type": "url_fetch", "params": {"urls": urls, "max_bytes": MiB}}
    )
    assert job["spec"]["params"]["max_bytes"] == MiB
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    small, big, liar = done["result"]["results"]
    assert small["ok"] and small["size"] == 10
    assert not big["ok"] and big["status"] == 200 and big["size"] == 0
    assert big["error"] == f"body of {8 * MiB} bytes is larger than max_bytes ({MiB})"
    assert not liar["ok"] and MiB < liar["size"] < 2 * MiB
    assert "larger than max_bytes" in liar["error"] and "stopped reading" in liar["error"]
    assert done["result"]["failed"] == 2


# ---------------------------------------------------------------- agents


@pytest.fixture
def agent(api: httpx.Client) -> tuple[str, dict[str, Any]]:
    return hold_a_job(api)


def hold_a_job(api: httpx.Client) -> tuple[str, dict[str, Any]]:
    """A registered agent holding a running process job of its own tag."""
    tag = f"t-{uuid.uuid4().hex[:10]}"
    r = api.post(f"{L}/register", json={"executors": ["process"], "tags": [tag]})
    launcher_id = r.json()["launcher_id"]
    job = api.post(
        f"{API}/jobs", json={"executor": "process", "command": ["true"], "demands": {"tags": [tag]}}
    ).json()
    got = api.get(f"{L}/jobs", params={"launcher_id": launcher_id, "wait": 10}, timeout=30)
    assert got.status_code == 200 and got.json()["job"]["id"] == job["id"], got.text
    claim = {"launcher_id": launcher_id, "attempt": 1}
    assert api.post(f"{L}/jobs/{job['id']}/started", json=claim).status_code == 200
    return launcher_id, job


def upload(api: httpx.Client, launcher_id: str, job_id: str, name: str, data: bytes) -> Any:
    params: dict[str, str | int] = {"launcher_id": launcher_id, "attempt": 1, "name": name}
    return api.post(f"{L}/jobs/{job_id}/artifacts", params=params, content=data)


def test_an_agents_numbers_out_of_range_leave_the_job_to_end(
    api: httpx.Client, agent: tuple[str, dict[str, Any]]
) -> None:
    launcher_id, job = agent
    claim = {"launcher_id": launcher_id, "attempt": 1}
    end = f"{L}/jobs/{job['id']}"
    refused(api.post(f"{end}/end", json={**claim, "status": "failed", "exit_code": 2**70}),
            "exit_code")  # fmt: skip
    r = api.post(f"{end}/completed", json={**claim, "exit_code": 2**70})
    refused(r, "exit_code")
    steps = [{"name": "s", "exit_code": 2**70}]
    refused(api.post(f"{end}/end", json={**claim, "status": "failed", "steps": steps}),
            "steps.0.exit_code")  # fmt: skip
    refused(raw_post(api, f"{end}/progress", json.dumps(claim)[:-1] + ', "percent": NaN}'),
            "percent")  # fmt: skip
    refused(raw_post(api, f"{end}/end", json.dumps(claim)[:-1] + ', "status": "succeeded", '
            '"result": {"x": Infinity}}'), "result")  # fmt: skip
    refused(api.get(f"{L}/jobs", params={"launcher_id": launcher_id, "wait": "inf"}), "wait")
    refused(api.post(f"{end}/started", json={**claim, "attempt": 2**70}), "attempt")
    # Long lines from an agent are cut as a worker's are, not refused with the whole batch.
    lines = [{"line": "y" * 70000}, {"line": "short"}]
    assert api.post(f"{end}/logs", json={**claim, "lines": lines}).status_code == 200
    logged = [x["line"] for x in api.get(f"{API}/jobs/{job['id']}/logs").json()["items"]]
    assert logged == ["y" * 65536 + " … [line cut: 70000 bytes]", "short"]
    # Nothing was taken: the job is still running, and a good report ends it.
    assert api.get(f"{API}/jobs/{job['id']}").json()["status"] == "running"
    r = api.post(f"{end}/end", json={**claim, "status": "succeeded", "exit_code": 0})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text


def test_artifact_names_too_long_or_colliding_with_a_folder_are_4xx(
    api: httpx.Client, agent: tuple[str, dict[str, Any]]
) -> None:
    launcher_id, job = agent
    jid = job["id"]
    msg = refused(upload(api, launcher_id, jid, "a" * 300, b"x"), "name")
    assert "at most 255 bytes" in msg
    refused(upload(api, launcher_id, jid, "d/" + "é" * 128, b"x"), "name")  # 256 bytes
    refused(upload(api, launcher_id, jid, "/".join(["d"] * 600), b"x"), "name")
    assert upload(api, launcher_id, jid, "a" * 255, b"x").status_code == 200
    assert upload(api, launcher_id, jid, "out", b"x").status_code == 200
    r = upload(api, launcher_id, jid, "out/x", b"x")
    assert r.status_code == 409 and "one name is a folder of the other" in r.json()["error"]
    r = upload(api, launcher_id, jid, "dir/x", b"x")
    assert r.status_code == 200, r.text
    r = upload(api, launcher_id, jid, "dir", b"x")
    assert r.status_code == 409 and "one name is a folder of the other" in r.json()["error"]
    claim = {"launcher_id": launcher_id, "attempt": 1}
    r = api.post(f"{L}/jobs/{jid}/end", json={**claim, "status": "succeeded", "exit_code": 0})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    names = sorted(a["name"] for a in r.json()["artifacts"])
    assert names == sorted(["a" * 255, "dir/x", "out"])


# ---------------------------------------------------------------- bounds of their own


@pytest.fixture(scope="module")
def small_uploads(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second API process on the stack whose agents may upload at most 2 MiB."""
    settings = stack.settings.model_copy(update={"api_port": free_port()})
    with private_api(
        settings,
        tmp_path_factory.mktemp("limits-api"),
        {"LAUNCHBAY_MAX_ARTIFACT_BYTES": str(2 * MiB)},
    ) as url:
        yield url


def test_artifact_uploads_keep_a_bound_of_their_own(small_uploads: str) -> None:
    with httpx.Client(base_url=small_uploads, timeout=60, auth=AgentKeyring()) as api:
        launcher_id, job = hold_a_job(api)
        # Larger than any JSON request may be, within the upload bound: taken, streamed.
        data = bytes(range(256)) * (6 * 1024)  # 1.5 MiB
        r = upload(api, launcher_id, job["id"], "big.bin", data)
        assert r.status_code == 200 and r.json()["size"] == len(data), r.text
        # Past it: 413, with or without a Content-Length.
        r = upload(api, launcher_id, job["id"], "huge.bin", b"x" * (3 * MiB))
        assert r.status_code == 413, r.text
        assert r.json()["error"] == (
            f"the request body is larger than this route takes ({2 * MiB} bytes)"
        )
        chunks = (b"x" * 65536 for _ in range(48))
        r = upload(api, launcher_id, job["id"], "huge.bin", chunks)  # type: ignore[arg-type]
        assert r.status_code == 413, r.text
        wait_until(lambda: api.get(f"{API}/jobs/{job['id']}").status_code == 200, 5, what="job")
        files = [a["name"] for a in api.get(f"{API}/jobs/{job['id']}/artifacts").json()]
        assert files == ["big.bin"]
