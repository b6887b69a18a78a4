"""Fixtures shared by the API's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core


@pytest.fixture
def anyio_backend() -> str:
    """The anyio-marked tests (the fan-out hub and the follower, in process) run on asyncio,
    as uvicorn does."""
    return "asyncio"


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    """The core on the in-package fakes (orchestrator/testing.py): submits and their
    answers without a server, a Redis or a worker."""
    c = memory_core(Settings(home=tmp_path / "home"))
    yield c
    c.close()
