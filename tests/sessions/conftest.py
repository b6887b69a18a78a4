"""Fixtures of the session, capability and run-record tests: the session stack (tests/conftest),
the CLI script (tests/cli) and the locally built busybox image (tests/workers)."""

from tests.cli.conftest import cli, cli_script, private_api  # noqa: F401
from tests.workers.conftest import busybox_image  # noqa: F401
