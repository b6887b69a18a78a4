"""``launchbay run | jobs | runs | workers``: drive a Launchbay server over HTTP.

The server is ``--url`` or ``LAUNCHBAY_URL`` (default http://127.0.0.1:8000); a bearer token
comes from ``--token`` or ``LAUNCHBAY_TOKEN``. Errors are one line on stderr; exit codes:
0 ok, 1 refused by the server (unknown id, conflict, auth), 2 bad input (also the server's
422), 3 server unreachable; ``run --wait`` exits with the job's outcome.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.artifacts import atomic_file
from orchestrator.cli import _flow, _more, _observe
from orchestrator.cli._jobs import jobs_app
from orchestrator.cli._options import JobId, Json, Token, Url, client_for
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

# ---------------------------------------------------------------- runs

runs_app = typer.Typer(
    help="Run records: export the history, show one, clean up old ones.",
    no_args_is_help=True,
    add_completion=False,
)


@runs_app.command("export")
@handled
def runs_export(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None, typer.Option("--status", help="Only this status; repeat for more.")
    ] = None,
    executor: Annotated[
        str | None, typer.Option("--executor", help="builtin, process, docker or kubernetes.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", metavar="KEY=VALUE", help="Repeat to AND.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="TIME", help="Created at or after (ISO 8601).")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="TIME", help="Created before (ISO 8601).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of stdout."),
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Every run record (newest first) as JSON Lines, for analysis elsewhere."""
    filters = {
        "status": status or [],
        "executor": executor,
        "label": label or [],
        "since": since,
        "until": until,
        "limit": limit,
    }
    with client_for(ctx, url, token) as client:
        if output is None:
            client.export_runs(sys.stdout, **filters)
            sys.stdout.flush()
            return
        with atomic_file(output) as fh:
            written = client.export_runs(fh, **filters)
    say(f"wrote {written} run(s) to {output}")


@runs_app.command("show")
@handled
def runs_show(ctx: typer.Context, job_id: JobId, url: Url = None, token: Token = None) -> None:
    """One full run record as JSON: spec, times, attempts, steps, result, artifacts."""
    with client_for(ctx, url, token) as client:
        print_json(client.run_record(job_id))


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
    from orchestrator.retention import parse_duration  # (brings SQLAlchemy; see _jobs.py)

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
def workers(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Live workers and agents: executors, tags, capacity, running jobs."""
    from rich.table import Table

    with client_for(ctx, url, token) as client:
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
    _more.register(app, runs_app)  # job-types, stats, health, meta, sessions, runs delete
    _flow.register(app)  # jobs rerun, schedules, limits (issue 14)
    _observe.register(app)  # webhooks, firehose, overview, runners, metrics, streams
