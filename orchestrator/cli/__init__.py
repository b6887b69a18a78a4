"""The ``launchbay`` command: run the stack's services, and drive jobs over HTTP."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli import client_commands, serve

app = typer.Typer(
    name="launchbay",
    help="Launchbay: run jobs as processes, containers, Kubernetes Jobs or built-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option("--url", show_default=False, help="Launchbay server (or LAUNCHBAY_URL)."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", show_default=False, help="Bearer token (or LAUNCHBAY_TOKEN)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Options every client command takes, before the subcommand or after it."""
    ctx.obj = {"url": url, "token": token, "json_out": json_out}


serve.register(app)  # up, api, worker, beat, flower, agent
client_commands.register(app)  # run, jobs, runs, workers (over HTTP)


def main() -> None:
    app()
