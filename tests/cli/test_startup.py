"""Every ``launchbay`` call pays for what the CLI imports before it parses its arguments; the
client commands need no store (SQLAlchemy) and no Celery, so importing the CLI must not
bring them (a CLI call then takes about half the CPU it took with them)."""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_ONLY = ("sqlalchemy", "alembic", "celery", "kombu", "fastapi", "uvicorn")


def test_the_cli_starts_without_the_servers_libraries() -> None:
    code = (
        "import json, sys\n"
        "import orchestrator.cli\n"
        f"print(json.dumps(sorted(m for m in {SERVER_ONLY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == [], out.stdout
