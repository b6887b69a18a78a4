"""/metrics wants the ``metrics`` scope; webhooks want ``admin``; the firehose ``read``."""

from __future__ import annotations

from pathlib import Path

import httpx

from orchestrator.services import free_port
from orchestrator.settings import Settings
from tests.support import Stack, private_api

ADMIN = "admin-secret-0123456789"
METRICS = "metrics-secret-0123456789"
READ = "read-secret-0123456789"
SUBMIT = "submit-secret-0123456789"


def test_scopes_guard_metrics_and_webhooks(obs_stack: Stack, tmp_path: Path) -> None:
    settings: Settings = obs_stack.settings.model_copy(
        update={"api_port": free_port(), "token": ADMIN}
    )
    env = {"LAUNCHBAY_TOKENS": f"metrics={METRICS},read={READ},submit={SUBMIT}"}
    with (
        private_api(settings, tmp_path / "logs", env=env) as url,
        httpx.Client(base_url=url, timeout=30) as h,
    ):

        def get(path: str, token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return h.get(path, headers=headers).status_code

        assert get("/metrics", None) == 401
        assert get("/metrics", READ) == 403
        assert get("/metrics", METRICS) == 200
        assert get("/metrics", ADMIN) == 200
        assert get("/api/v1/jobs", METRICS) == 403  # a scrape token reads nothing else
        assert get("/api/v1/webhooks", READ) == 403
        assert get("/api/v1/webhooks", ADMIN) == 200
        hook = {"url": "http://127.0.0.1:9/x"}
        made = h.post("/api/v1/webhooks", json=hook, headers={"Authorization": f"Bearer {SUBMIT}"})
        assert made.status_code == 403
        made = h.post("/api/v1/webhooks", json=hook, headers={"Authorization": f"Bearer {ADMIN}"})
        assert made.status_code == 201
        h.delete(
            f"/api/v1/webhooks/{made.json()['id']}", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert get("/api/v1/events?status=bogus", METRICS) == 403
        assert get("/api/v1/events?status=bogus", READ) == 422
