"""What every answer carries: the dashboard's security headers, and truthful ``OPTIONS``."""

from __future__ import annotations

import re

import httpx
import pytest

API = "/api/v1"
DASHBOARD = ("/", "/index.html", "/app.js", "/style.css", "/theme.js")


@pytest.mark.parametrize("path", DASHBOARD)
def test_the_dashboard_allows_only_its_own_files_and_no_framing(
    api: httpx.Client, path: str
) -> None:
    r = api.get(path)
    assert r.status_code == 200, path
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"


def test_the_dashboard_has_no_inline_script_for_its_csp_to_block(api: httpx.Client) -> None:
    html = api.get("/").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=", html)  # (no inline event handlers either)
    assert "style=" not in html


def test_api_answers_carry_a_csp_that_allows_nothing(api: httpx.Client) -> None:
    for r in (api.get(f"{API}/meta"), api.get(f"{API}/jobs/nope")):
        assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_swagger_keeps_what_it_needs(api: httpx.Client) -> None:
    r = api.get("/docs")
    assert r.status_code == 200
    assert "content-security-policy" not in r.headers  # (CDN scripts, inline bootstrap)
    assert r.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/jobs", "GET, OPTIONS, POST"),
        ("/jobs/abc", "DELETE, GET, OPTIONS"),
        ("/jobs/abc/cancel", "OPTIONS, POST"),
        ("/runs/cleanup", "OPTIONS, POST"),  # (not /runs/{job_id} with job_id "cleanup")
        ("/runs/abc", "DELETE, GET, OPTIONS"),
        ("/jobs/abc/artifacts/out/a.txt", "GET, HEAD, OPTIONS"),
        ("/launcher/jobs/abc/artifacts", "OPTIONS, POST"),
        ("/healthz", "GET, OPTIONS"),
    ],
)
def test_options_lists_the_methods_of_the_path(api: httpx.Client, path: str, allowed: str) -> None:
    r = api.options(API + path)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["allow"] == allowed


def test_a_method_the_path_does_not_take_is_405_with_allow(api: httpx.Client) -> None:
    r = api.put(f"{API}/jobs")
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS, POST"
    assert r.json() == {
        "error": "PUT is not allowed here; allowed: GET, OPTIONS, POST",
        "code": 405,
    }
    r = api.get(f"{API}/runs/cleanup")
    assert r.status_code == 405 and r.headers["allow"] == "OPTIONS, POST"
    assert api.options(f"{API}/no-such-thing").status_code == 404
