"""Options every client command shares: the server URL, the token, --json, a job id."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.client import DEFAULT_URL, LaunchbayClient

# ---------------------------------------------------------------- shared options

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LAUNCHBAY_URL",
        show_default=False,
        help=f"Launchbay server (default {DEFAULT_URL}).",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LAUNCHBAY_TOKEN",
        show_default=False,
        show_envvar=True,
        help="Bearer token, when the server wants one.",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
JobId = Annotated[str, typer.Argument(metavar="ID", help="The job's id.")]


def client_for(ctx: typer.Context | None, url: str | None, token: str | None) -> LaunchbayClient:
    """A client for the URL given here, else on the parent group (``jobs --url X logs``)."""
    parent: dict[str, Any] = {}
    if ctx is not None and ctx.parent is not None and isinstance(ctx.parent.obj, dict):
        parent = ctx.parent.obj
    return LaunchbayClient(url or parent.get("url") or DEFAULT_URL, token or parent.get("token"))
