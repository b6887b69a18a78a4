"""Options every client command shares: the server URL, the token, --json, a job id."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.client import DEFAULT_URL, LaunchbayClient

# ---------------------------------------------------------------- shared options


def global_options(ctx: typer.Context | None) -> dict[str, Any]:
    """What ``launchbay --url X --token T --json`` gave before the subcommand."""
    root = ctx.find_root() if ctx is not None else None
    obj = root.obj if root is not None else None
    return obj if isinstance(obj, dict) else {}


def _inherit(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    """An option given after the subcommand wins; else the same option given before it
    (``launchbay --url X jobs``); else the environment or the default."""
    import click

    source = ctx.get_parameter_source(param.name or "")
    if source == click.core.ParameterSource.COMMANDLINE:
        return value
    given = global_options(ctx).get(param.name or "")
    return given if given not in (None, False) else value


Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="LAUNCHBAY_URL",
        show_default=False,
        help=f"Launchbay server (default {DEFAULT_URL}).",
        callback=_inherit,
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
        callback=_inherit,
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table.", callback=_inherit)
]
JobId = Annotated[str, typer.Argument(metavar="ID", help="The job's id.")]


def client_for(ctx: typer.Context | None, url: str | None, token: str | None) -> LaunchbayClient:
    """A client for the URL given here, else on the parent group (``jobs --url X logs``)."""
    parent: dict[str, Any] = {}
    if ctx is not None and ctx.parent is not None and isinstance(ctx.parent.obj, dict):
        parent = ctx.parent.obj
    return LaunchbayClient(url or parent.get("url") or DEFAULT_URL, token or parent.get("token"))
