"""``launchbay run | jobs | runs | workers``: drive a Launchbay server over HTTP.

The server is ``--url`` or ``LAUNCHBAY_URL`` (default http://127.0.0.1:8000); a bearer token
comes from ``--token`` or ``LAUNCHBAY_TOKEN``. Errors are one line on stderr; exit codes:
0 ok, 1 refused by the server (unknown id, conflict, auth), 2 bad input (also the server's
422), 3 server unreachable; ``run --wait`` exits with the job's outcome.
"""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli._jobs import jobs_app
from orchestrator.cli._options import Json, Token, Url, client_for
from orchestrator.cli._output import (
    EXIT_USAGE,
    err_console,
    fail,
    handled,
    out_console,
    print_json,
    say,
)
from orchestrator.cli._run import RUN_HELP, run
from orchestrator.retention import parse_duration

# ---------------------------------------------------------------- runs

runs_app = typer.Typer(
    help="Run records: clean up old ones.", no_args_is_help=True, add_completion=False
)


@runs_app.command("cleanup")
@handled
def runs_cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove ended jobs (record, logs, artifacts) older than this: 7d, 12h, 30m.",
        ),
    ],
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Remove ended runs older than a duration."""
    try:
        parse_duration(older_than)
    except ValueError as exc:
        fail(f"bad --older-than: {exc}", EXIT_USAGE)
    with client_for(ctx, url, token) as client:
        result = client.cleanup(older_than)
    if json_out:
        print_json(result)
        return
    cutoff = f" ended before {result.cutoff}" if result.cutoff else ""
    say(f"removed {result.removed} run(s){cutoff} and {result.artifact_files} artifact file(s)")


# ---------------------------------------------------------------- workers


@handled
def workers(json_out: Json = False, url: Url = None, token: Token = None) -> None:
    """Live workers and agents: executors, tags, capacity, running jobs."""
    from rich.table import Table

    with client_for(None, url, token) as client:
        items = client.workers()
    if json_out:
        print_json(items)
        return
    if not items:
        err_console().print("no live workers or agents")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "KIND", "HOST", "EXECUTORS", "TAGS", "ACTIVE", "CAPACITY"):
        table.add_column(
            col, no_wrap=True, justify="right" if col in ("ACTIVE", "CAPACITY") else "left"
        )
    for w in items:
        table.add_row(
            w.id,
            w.kind,
            w.hostname,
            ",".join(w.executors),
            ",".join(w.tags) or "-",
            str(w.active),
            str(w.capacity),
        )
    out_console().print(table)


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``launchbay`` app."""
    app.command(help=RUN_HELP, context_settings={"allow_interspersed_args": True})(run)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(runs_app, name="runs")
    app.command()(workers)
