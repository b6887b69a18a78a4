"""The ``launchbay`` command: run the stack's services, and drive jobs over HTTP."""

from __future__ import annotations

import typer

from orchestrator.cli import client_commands, serve

app = typer.Typer(
    name="launchbay",
    help="Launchbay: run jobs as processes, containers, Kubernetes Jobs or built-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve.register(app)  # up, api, worker, beat, flower, agent
client_commands.register(app)  # run, jobs, runs, workers (over HTTP)


def main() -> None:
    app()
