"""Flow control from the command line (issue 14): ``launchbay jobs rerun``,
``launchbay schedules …`` and ``launchbay limits …``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.table import Table

from orchestrator.cli._jobs import jobs_app
from orchestrator.cli._options import Json, Token, Url, client_for
from orchestrator.cli._output import EXIT_USAGE, fail, handled, out_console, print_json, say
from orchestrator.cli._specs import load_spec_file

# ---------------------------------------------------------------- re-runs


def _seg(value: str) -> str:
    """One path segment: whatever the user typed cannot reach another route."""
    return quote(value, safe="")


def _labels(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key:
            fail(f"bad --label {value!r}: give KEY=VALUE", EXIT_USAGE)
        out[key] = val
    return out


@jobs_app.command("rerun")
@handled
def jobs_rerun(
    ctx: typer.Context,
    job_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Re-run this job; omit for a filter.")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="Without ID: ended statuses to re-run (default failed)."),
    ] = None,
    executor: Annotated[str | None, typer.Option("--executor")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", metavar="KEY=VALUE", help="Repeat to AND.")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="TIME")] = None,
    until: Annotated[str | None, typer.Option("--until", metavar="TIME")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Run an ended job again (a new job with rerun_of), or re-queue every ended job a
    filter matches (default: the failed ones)."""
    with client_for(ctx, url, token) as client:
        if job_id is not None:
            if status or executor or label or since or until:
                fail("give a job ID or filter options, not both", EXIT_USAGE)
            job = client.request_json("POST", f"/jobs/{_seg(job_id)}/rerun")
            if json_out:
                print_json(job)
            else:
                print(job["id"])
                say(f"re-running {job_id} as {job['id']}")
            return
        body: dict[str, Any] = {"status": status or ["failed"], "limit": limit}
        if executor:
            body["executor"] = executor
        if label:
            body["labels"] = _labels(label)
        if since:
            body["since"] = since
        if until:
            body["until"] = until
        done = client.request_json("POST", "/jobs/rerun", json=body)
    if json_out:
        print_json(done)
        return
    for job in done["items"]:
        print(f"{job['id']}  rerun_of {job['rerun_of']}")
    say(f"{done['count']} job(s) re-queued")


# ---------------------------------------------------------------- schedules

schedules_app = typer.Typer(
    help="Cron schedules: list, show, create, pause, resume, delete.",
    no_args_is_help=True,
    add_completion=False,
)


def _schedules_table(items: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "NAME", "CRON", "TZ", "OVERLAP", "STATE", "NEXT"):
        table.add_column(col, no_wrap=True)
    for s in items:
        table.add_row(
            s["id"],
            s["name"],
            s["cron"],
            s["timezone"],
            s["overlap"],
            "paused" if s["paused"] else "active",
            (s["next_fire_times"] or ["-"])[0],
        )
    return table


@schedules_app.command("list")
@handled
def schedules_list(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Every schedule with its next fire time."""
    with client_for(ctx, url, token) as client:
        items = client.request_json("GET", "/schedules")
    if json_out:
        print_json(items)
    elif not items:
        say("no schedules")
    else:
        out_console().print(_schedules_table(items))


@schedules_app.command("show")
@handled
def schedules_show(
    ctx: typer.Context,
    schedule_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """One schedule and its next five fire times."""
    with client_for(ctx, url, token) as client:
        s = client.request_json("GET", f"/schedules/{_seg(schedule_id)}")
    if json_out:
        print_json(s)
        return
    out_console().print(_schedules_table([s]))
    for when in s["next_fire_times"]:
        print(f"next  {when}")


@schedules_app.command("create")
@handled
def schedules_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="A human name.")],
    cron: Annotated[str, typer.Option("--cron", help="e.g. '*/5 * * * *'.")],
    spec_file: Annotated[str, typer.Option("--spec", help="The job spec (JSON or YAML file).")],
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone.")] = "UTC",
    overlap: Annotated[
        str, typer.Option("--overlap", help="skip, queue or cancel_previous.")
    ] = "skip",
    catchup: Annotated[str, typer.Option("--catchup", help="once or skip.")] = "once",
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Create a cron schedule from a job spec file."""
    body = {
        "name": name,
        "cron": cron,
        "timezone": tz,
        "spec": load_spec_file(spec_file),
        "overlap": overlap,
        "catchup": catchup,
    }
    with client_for(ctx, url, token) as client:
        s = client.request_json("POST", "/schedules", json=body)
    if json_out:
        print_json(s)
    else:
        print(s["id"])
        say(f"schedule {s['id']} next fires at {s['next_fire_at']}")


def _schedule_action(action: str, method: str, path: str, help_: str) -> None:
    @schedules_app.command(action, help=help_)
    @handled
    def command(
        ctx: typer.Context,
        schedule_id: Annotated[str, typer.Argument(metavar="ID")],
        json_out: Json = False,
        url: Url = None,
        token: Token = None,
    ) -> None:
        with client_for(ctx, url, token) as client:
            s = client.request_json(method, path.format(id=_seg(schedule_id)))
        if json_out:
            print_json(s)
        else:
            say(f"schedule {schedule_id}: {action}d" if action != "delete" else "deleted")


_schedule_action("pause", "POST", "/schedules/{id}/pause", "Stop firing.")
_schedule_action("resume", "POST", "/schedules/{id}/resume", "Fire again, from now.")
_schedule_action("delete", "DELETE", "/schedules/{id}", "Remove a schedule.")

# ---------------------------------------------------------------- limits

limits_app = typer.Typer(
    help="Keyed concurrency limits: list, set, remove.",
    no_args_is_help=True,
    add_completion=False,
)


@limits_app.command("list")
@handled
def limits_list(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Every key: its limit, running and waiting jobs."""
    with client_for(ctx, url, token) as client:
        items = client.request_json("GET", "/limits")
    if json_out:
        print_json(items)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("KEY", "LIMIT", "RUNNING", "WAITING"):
        table.add_column(col, no_wrap=True)
    for lim in items:
        mx = lim["max_running"]
        table.add_row(
            lim["key"], "-" if mx is None else str(mx), str(lim["running"]), str(lim["waiting"])
        )
    out_console().print(table)


@limits_app.command("set")
@handled
def limits_set(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY")],
    max_running: Annotated[int, typer.Argument(metavar="N", min=0)],
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """At most N jobs of KEY run at once."""
    with client_for(ctx, url, token) as client:
        lim = client.request_json("PUT", f"/limits/{_seg(key)}", json={"max_running": max_running})
    if json_out:
        print_json(lim)
    else:
        say(f"{key}: at most {lim['max_running']} running ({lim['running']} now)")


@limits_app.command("remove")
@handled
def limits_remove(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY")],
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """No limit on KEY any more."""
    with client_for(ctx, url, token) as client:
        lim = client.request_json("DELETE", f"/limits/{_seg(key)}")
    if json_out:
        print_json(lim)
    else:
        say(f"{key}: no limit")


def register(app: typer.Typer) -> None:
    app.add_typer(schedules_app, name="schedules")
    app.add_typer(limits_app, name="limits")
