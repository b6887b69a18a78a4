"""Fixtures shared by the API's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The anyio-marked tests (the fan-out hub and the follower, in process) run on asyncio,
    as uvicorn does."""
    return "asyncio"
