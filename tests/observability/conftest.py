"""One stack of this folder's own: its Redis database and home, so counters, webhooks and
the firehose see only the jobs these tests submit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stack_settings
from tests.support import Stack, start_stack, stop_stack

OBS_DB = 9  # the session stack uses 0, unit tests 2, schemathesis 5


@pytest.fixture(scope="session")
def obs_stack(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("obs-home")
    settings = stack_settings(home, valkey_url.rsplit("/", 1)[0] + f"/{OBS_DB}")
    settings.ensure_dirs()
    # Fast webhook retries here (children inherit the environment).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAUNCHBAY_WEBHOOK_BACKOFF_S", "0.05")
        mp.setenv("LAUNCHBAY_WEBHOOK_MAX_TRIES", "5")
        st = start_stack(settings)
    try:
        st.wait_for_workers(1)
        yield st
    finally:
        stop_stack(st)
        if os.environ.get("LAUNCHBAY_SHOW_SERVICE_LOGS"):
            for f in sorted(Path(home / "service-logs").glob("*.log")):
                print(f"==== {f.name}\n{f.read_text()[-5000:]}")
