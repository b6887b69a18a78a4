"""``launchbay job-types | stats | health | meta | sessions`` and ``runs delete``: the API's
remaining operations, one command each (issue 16)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from orchestrator.cli._options import JobId, Json, Token, Url, client_for
from orchestrator.cli._output import err_console, handled, out_console, print_json, say

# ---------------------------------------------------------------- meta


@handled
def job_types(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Built-in job types and their parameters."""
    from rich.table import Table

    with client_for(ctx, url, token) as client:
        types = client.job_types()
    if json_out:
        print_json(types)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("TYPE", "PARAMS", "DESCRIPTION"):
        table.add_column(col)
    for t in types:
        params = ", ".join(
            f"{p.get('name')}{'' if p.get('required') else '?'}:{p.get('type', '')}"
            for p in t.get("params", [])
            if isinstance(p, dict)
        )
        table.add_row(str(t.get("name")), params or "-", str(t.get("description", "")))
    out_console().print(table)


@handled
def stats(ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None) -> None:
    """Jobs per status, demand, and live workers' slots."""
    with client_for(ctx, url, token) as client:
        data = client.stats()
    if json_out:
        print_json(data)
        return
    workers = data.get("workers") or {}
    counts = "  ".join(
        f"{k} {v}" for k, v in data.items() if k not in ("workers", "total", "demand")
    )
    print(f"jobs: {data.get('total', 0)} total, demand {data.get('demand', 0)}")
    print(f"  {counts}")
    print(
        f"workers: {workers.get('count', 0)} live, {workers.get('active', 0)} of "
        f"{workers.get('capacity', 0)} slots busy"
    )


@handled
def health(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """The server's health: Redis and the job store. Exits 1 when degraded."""
    with client_for(ctx, url, token) as client:
        data = client.healthz()
    if json_out:
        print_json(data)
    else:
        print(f"{data.get('status')}: redis {data.get('redis')}, database {data.get('database')}")
    if data.get("status") != "ok":
        raise typer.Exit(1)


@handled
def meta(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """The API's vocabulary (executors, statuses, event types) as JSON."""
    with client_for(ctx, url, token) as client:
        print_json(client.vocabulary())


@handled
def events(ctx: typer.Context, job_id: JobId, url: Url = None, token: Token = None) -> None:
    """A job's events as they happen (SSE), one JSON line each, until it ends."""
    import json

    with client_for(ctx, url, token) as client:
        for event, data in client.iter_events(job_id):
            try:
                body = json.loads(data)
            except ValueError:
                body = data
            print(json.dumps({"event": event, "data": body}), flush=True)


# ---------------------------------------------------------------- runs delete


@handled
def runs_delete(
    ctx: typer.Context, job_id: JobId, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Remove an ended run with its logs and artifacts."""
    with client_for(ctx, url, token) as client:
        removed = client.delete_run(job_id)
    if json_out:
        print_json(removed)
        return
    say(
        f"removed run {removed.get('id')} ({removed.get('status')}) and "
        f"{removed.get('artifact_files', 0)} artifact file(s)"
    )


# ---------------------------------------------------------------- sessions

sessions_app = typer.Typer(
    help="Sessions: list them (no subcommand), show one with its runs, delete one.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)
SessionRef = Annotated[str, typer.Argument(metavar="SESSION", help="Its id (ses_…) or name.")]


@sessions_app.callback()
@handled
def sessions(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000)] = 20,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    with client_for(ctx, url, token) as client:
        page = client.sessions(limit=limit)
    if json_out:
        print_json(page)
        return
    if not page["items"]:
        err_console().print("no sessions")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "NAME", "EXECUTOR", "PARENT", "HOST", "CREATED"):
        table.add_column(col, no_wrap=True)
    for s in page["items"]:
        table.add_row(
            s["id"],
            s.get("name") or "-",
            s["executor"],
            s.get("parent_session_id") or "-",
            s.get("hostname") or "-",
            str(s.get("created_at", ""))[:19],
        )
    out_console().print(table)


@sessions_app.command("show")
@handled
def session_show(
    ctx: typer.Context,
    ref: SessionRef,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """One session: its defaults, lineage and runs (oldest first)."""
    with client_for(ctx, url, token) as client:
        data = client.session(ref)
    if json_out:
        print_json(data)
        return
    print(f"{data['id']}  {data.get('name') or ''}  ({data['executor']})")
    if data.get("parent_session_id"):
        print(f"  forked from {data['parent_session_id']}")
    runs: list[dict[str, Any]] = data.get("runs") or []
    for run in runs:
        print(f"  {run['id']}  {run['status']:<10} {run.get('name') or ''}")
    if not runs:
        print("  no runs")


@sessions_app.command("delete")
@handled
def session_delete(
    ctx: typer.Context, ref: SessionRef, url: Url = None, token: Token = None
) -> None:
    """Remove a session and its workspace (refused while one of its runs is unfinished)."""
    with client_for(ctx, url, token) as client:
        gone = client.delete_session(ref)
    say(f"removed session {gone['id']} and its workspace")


def register(app: typer.Typer, runs_app: typer.Typer) -> None:
    app.command("job-types")(job_types)
    app.command()(stats)
    app.command()(health)
    app.command()(meta)
    app.command()(events)
    app.add_typer(sessions_app, name="sessions")
    runs_app.command("delete")(runs_delete)
