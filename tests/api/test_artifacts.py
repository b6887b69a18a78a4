"""Artifact listing and download over the real API (uvicorn + worker + store on disk)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.job import JobStatus
from orchestrator.store import JobStore
from tests.support import Stack

BIG = b"".join(b"line %06d of a compressible text artifact\n" % i for i in range(20000))


def seed_ended_job(stack: Stack, tmp_path: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """An ended job whose artifacts were saved by the artifact store (no launcher needed)."""
    store = JobStore(stack.settings.effective_database_url)
    artifacts = ArtifactStore(stack.settings.artifacts_dir)
    try:
        job = store.create(
            {
                "executor": "builtin",
                "type": "countdown",
                "params": {"seconds": 1},
                "labels": {"seeded": "yes"},
            }
        )
        assert store.claim(job.id, "seed-runner", 60) is not None
        assert store.start(job.id, 1, 60) is not None
        saved = []
        for name, data in files.items():
            src = tmp_path / "src" / name
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            saved.append(artifacts.save(job.id, name, src).model_dump(mode="json"))
        done = store.finish(job.id, 1, JobStatus.succeeded, exit_code=0, artifacts=saved)
        assert done is not None
        return done.public()
    finally:
        store.dispose()


def raw_get(
    stack: Stack, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A request whose path goes out byte for byte (httpx would remove dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.settings.api_port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def seeded(stack: Stack, tmp_path: Path) -> dict[str, Any]:
    return seed_ended_job(
        stack,
        tmp_path,
        {
            "out/a.txt": b"aaa\n",
            "report.json": b'{"ok": true}\n',
            "big.log": BIG,
            "pic.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8,
        },
    )


def test_list_artifacts(api: httpx.Client, seeded: dict[str, Any]) -> None:
    r = api.get(f"/api/v1/jobs/{seeded['id']}/artifacts")
    assert r.status_code == 200, r.text
    by_name = {a["name"]: a for a in r.json()}
    assert set(by_name) == {"out/a.txt", "report.json", "big.log", "pic.png"}
    a = by_name["out/a.txt"]
    assert a["size"] == 4
    assert a["sha256"] == hashlib.sha256(b"aaa\n").hexdigest()
    assert a["content_type"] == "text/plain"
    assert a["url"] == f"/api/v1/jobs/{seeded['id']}/artifacts/out/a.txt"
    assert by_name["report.json"]["content_type"] == "application/json"
    assert by_name["pic.png"]["content_type"] == "image/png"


def test_download_sha_etag_and_content_type(api: httpx.Client, seeded: dict[str, Any]) -> None:
    for art in seeded["artifacts"]:
        r = api.get(f"/api/v1/jobs/{seeded['id']}/artifacts/{art['name']}")
        assert r.status_code == 200, (art["name"], r.text)
        assert hashlib.sha256(r.content).hexdigest() == art["sha256"]
        assert r.headers["etag"] == f'"{art["sha256"]}"'
        assert r.headers["content-type"].split(";")[0] == art["content_type"]
        assert r.headers["content-disposition"].startswith("attachment")
        assert r.headers["x-content-type-options"] == "nosniff"


def test_if_none_match_gives_304(api: httpx.Client, seeded: dict[str, Any]) -> None:
    art = seeded["artifacts"][0]
    url = f"/api/v1/jobs/{seeded['id']}/artifacts/{art['name']}"
    r = api.get(url, headers={"If-None-Match": f'"{art["sha256"]}"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == f'"{art["sha256"]}"'
    r = api.get(url, headers={"If-None-Match": '"something-else"'})
    assert r.status_code == 200


def test_gzip_only_when_the_client_accepts_it(stack: Stack, seeded: dict[str, Any]) -> None:
    path = f"/api/v1/jobs/{seeded['id']}/artifacts/big.log"
    sha = hashlib.sha256(BIG).hexdigest()

    status, headers, body = raw_get(stack, path, {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert "accept-encoding" in headers["vary"].lower()
    assert len(body) < len(BIG) // 5
    assert hashlib.sha256(gzip.decompress(body)).hexdigest() == sha
    assert headers["etag"] == f'"{sha}"'

    for accept in (None, "identity", "gzip;q=0, identity", "br"):
        status, headers, body = raw_get(stack, path, {"Accept-Encoding": accept} if accept else {})
        assert status == 200, accept
        assert "content-encoding" not in headers, accept
        assert int(headers["content-length"]) == len(BIG)
        assert hashlib.sha256(body).hexdigest() == sha, accept

    # Already-compressed types are sent as they are.
    png = f"/api/v1/jobs/{seeded['id']}/artifacts/pic.png"
    status, headers, _ = raw_get(stack, png, {"Accept-Encoding": "gzip"})
    assert status == 200 and "content-encoding" not in headers


def test_head_and_range(api: httpx.Client, seeded: dict[str, Any]) -> None:
    url = f"/api/v1/jobs/{seeded['id']}/artifacts/big.log"
    r = api.head(url)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(BIG)
    assert r.content == b""
    r = api.get(url, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206
    assert r.content == BIG[:10]


TRAVERSAL = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "out/../../../etc/passwd",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "..\\..\\etc\\passwd",
    "..%5c..%5cetc%5cpasswd",
    "out/%00a.txt",
]


@pytest.mark.parametrize("name", TRAVERSAL)
def test_traversal_and_absolute_names_are_refused(
    stack: Stack, seeded: dict[str, Any], name: str
) -> None:
    status, _, body = raw_get(stack, f"/api/v1/jobs/{seeded['id']}/artifacts/{name}")
    assert status == 400, (name, status, body[:200])
    assert b"root:" not in body


def test_another_jobs_artifact_cannot_be_reached(
    stack: Stack, tmp_path: Path, seeded: dict[str, Any]
) -> None:
    other = seed_ended_job(stack, tmp_path / "o", {"secret.txt": b"top secret\n"})
    for name in (
        f"../{other['id']}/secret.txt",
        f"..%2f{other['id']}%2fsecret.txt",
        f"%252e%252e%252f{other['id']}%252fsecret.txt",
    ):
        status, _, body = raw_get(stack, f"/api/v1/jobs/{seeded['id']}/artifacts/{name}")
        assert status == 400, (name, status)
        assert b"top secret" not in body
    # …while the owner reaches it.
    status, _, body = raw_get(stack, f"/api/v1/jobs/{other['id']}/artifacts/secret.txt")
    assert (status, body) == (200, b"top secret\n")


def test_a_file_on_disk_but_not_in_the_record_is_not_served(
    stack: Stack, seeded: dict[str, Any]
) -> None:
    planted = stack.settings.artifacts_dir / seeded["id"] / "planted.txt"
    planted.write_text("not an artifact of this run")
    status, _, body = raw_get(stack, f"/api/v1/jobs/{seeded['id']}/artifacts/planted.txt")
    assert status == 404
    assert b"not an artifact" not in body


def test_unknown_job_and_artifact(api: httpx.Client, seeded: dict[str, Any]) -> None:
    r = api.get("/api/v1/jobs/nope/artifacts")
    assert r.status_code == 404
    assert r.json()["code"] == 404
    r = api.get(f"/api/v1/jobs/{seeded['id']}/artifacts/missing.txt")
    assert r.status_code == 404
    assert "missing.txt" in r.json()["error"]
    r = api.get("/api/v1/jobs/nope/artifacts/a.txt")
    assert r.status_code == 404


# ---------------------------------------------------------------- real process jobs

TWO_FILES = {
    "executor": "process",
    "command": ["sh", "-c", "mkdir -p out && echo aaa > out/a.txt && echo bbb > out/b.txt"],
    "artifacts": ["out/*.txt"],
}


def test_process_job_artifacts_end_to_end(stack: Stack, api: httpx.Client) -> None:
    job = stack.submit(TWO_FILES)
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    listed = {a["name"]: a for a in api.get(f"/api/v1/jobs/{job['id']}/artifacts").json()}
    assert set(listed) == {"out/a.txt", "out/b.txt"}
    for name, content in (("out/a.txt", b"aaa\n"), ("out/b.txt", b"bbb\n")):
        assert listed[name]["sha256"] == hashlib.sha256(content).hexdigest()
        r = api.get(f"/api/v1/jobs/{job['id']}/artifacts/{name}")
        assert r.status_code == 200
        assert r.content == content
        assert hashlib.sha256(r.content).hexdigest() == listed[name]["sha256"]
    on_disk = ArtifactStore(stack.settings.artifacts_dir).files(job["id"])
    assert on_disk == ["out/a.txt", "out/b.txt"]


def test_artifact_globs_cannot_reach_outside_the_workspace(stack: Stack, api: httpx.Client) -> None:
    spec = {
        "executor": "process",
        "command": ["sh", "-c", "echo in > in.txt && ln -s /etc/passwd link.txt"],
        "artifacts": ["*.txt", "../*", "/etc/passwd"],
    }
    # Globs that leave the workspace are refused at submit (tests/api/test_limits.py)...
    r = api.post("/api/v1/jobs", json=spec)
    assert r.status_code == 422
    assert [f["field"] for f in r.json()["fields"]] == ["artifacts.1", "artifacts.2"]
    # ...and a link inside it that points out is not followed.
    job = stack.submit({**spec, "artifacts": ["*.txt"]})
    done = stack.wait_status(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    names = [a["name"] for a in api.get(f"/api/v1/jobs/{job['id']}/artifacts").json()]
    assert names == ["in.txt"]
