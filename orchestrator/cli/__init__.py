"""The ``launchbay`` command: run the stack's services, and drive jobs over HTTP."""

from __future__ import annotations

import typer

from orchestrator.cli import serve

app = typer.Typer(
    name="launchbay",
    help="Launchbay: run jobs as processes, containers, Kubernetes Jobs or built-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve.register(app)

try:  # the HTTP client commands
    import importlib

    importlib.import_module("orchestrator.cli.client_commands").register(app)
except ModuleNotFoundError as exc:  # pragma: no cover - during bring-up only
    if exc.name != "orchestrator.cli.client_commands":
        raise


def main() -> None:
    app()
