"""The observability routes from the command line: ``launchbay webhooks …``, ``firehose``,
``overview``, ``runners``, ``metrics`` and ``streams`` (so that every API operation has a
command; agents' own routes are the agent's, ``launchbay agent``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from orchestrator.cli._flow import _labels, _seg
from orchestrator.cli._options import Json, Token, Url, client_for
from orchestrator.cli._output import handled, out_console, print_json, say

webhooks_app = typer.Typer(
    help="Webhooks (admin): list them (no subcommand), create, show, delete, deliveries.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@webhooks_app.callback()
def _webhooks_default(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    if ctx.invoked_subcommand is None:
        webhooks_list(ctx, json_out=json_out, url=url, token=token)


@webhooks_app.command("list")
@handled
def webhooks_list(
    ctx: typer.Context, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Every webhook: URL, event types, label filter."""
    with client_for(ctx, url, token) as client:
        hooks = client.request_json("GET", "/webhooks")
    if json_out:
        print_json(hooks)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("ID", "URL", "EVENTS", "LABELS"):
        table.add_column(col)
    for h in hooks:
        labels = ",".join(f"{k}={v}" for k, v in (h.get("labels") or {}).items()) or "-"
        table.add_row(str(h["id"]), str(h["url"]), ",".join(h.get("events") or []), labels)
    out_console().print(table)


@webhooks_app.command("create")
@handled
def webhooks_create(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="URL", help="Where to POST (http/https).")],
    event: Annotated[
        list[str] | None, typer.Option("--event", "-e", help="An event type; repeat.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE the job must carry.")
    ] = None,
    secret: Annotated[
        str | None, typer.Option("--secret", help="Signing secret (16+ characters).")
    ] = None,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Register a webhook; its secret is shown this once."""
    body: dict[str, Any] = {"url": target, "labels": _labels(label)}
    if event:
        body["events"] = event
    if secret:
        body["secret"] = secret
    with client_for(ctx, url, token) as client:
        hook = client.request_json("POST", "/webhooks", json=body)
    if json_out:
        print_json(hook)
        return
    say(f"webhook {hook['id']} → {hook['url']}")
    if hook.get("secret"):
        say(f"secret (shown once): {hook['secret']}")


@webhooks_app.command("show")
@handled
def webhooks_show(
    ctx: typer.Context,
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url = None,
    token: Token = None,
) -> None:
    """One webhook, as JSON."""
    with client_for(ctx, url, token) as client:
        print_json(client.request_json("GET", f"/webhooks/{_seg(webhook_id)}"))


@webhooks_app.command("delete")
@handled
def webhooks_delete(
    ctx: typer.Context,
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Remove a webhook and its delivery log."""
    with client_for(ctx, url, token) as client:
        client.request("DELETE", f"/webhooks/{_seg(webhook_id)}")
    say(f"deleted webhook {webhook_id}")


@webhooks_app.command("deliveries")
@handled
def webhooks_deliveries(
    ctx: typer.Context,
    webhook_id: Annotated[str, typer.Argument(metavar="ID")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """A webhook's latest deliveries with each one's last answer."""
    path = f"/webhooks/{_seg(webhook_id)}/deliveries"
    with client_for(ctx, url, token) as client:
        got = client.request_json("GET", path, params={"limit": limit})
    if json_out:
        print_json(got)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("EVENT", "JOB", "STATUS", "TRIES", "ANSWER"):
        table.add_column(col)
    for d in got:
        answer = str(d.get("response_status") or d.get("error") or "-")
        table.add_row(d["event_type"], d["job_id"], d["status"], str(d["tries"]), answer)
    out_console().print(table)


# ---------------------------------------------------------------- one-shot reads


def _read(path: str, what: str) -> Any:
    @handled
    def command(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
        with client_for(ctx, url, token) as client:
            print_json(client.request_json("GET", path))

    command.__doc__ = what
    return command


@handled
def overview(
    ctx: typer.Context,
    minutes: Annotated[int, typer.Option("--minutes", min=5, max=1440)] = 60,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE the jobs carry.")
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Jobs per minute by outcome, p50/p95 run time and queue depth (JSON)."""
    params = {"minutes": minutes, "label": label or []}
    with client_for(ctx, url, token) as client:
        print_json(client.request_json("GET", "/insights/overview", params=params))


@handled
def metrics(ctx: typer.Context, url: Url = None, token: Token = None) -> None:
    """The Prometheus exposition (needs a token with the metrics scope when tokens are set)."""
    with client_for(ctx, url, token) as client:
        print(client.metrics_text(), end="")


@handled
def firehose(
    ctx: typer.Context,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE.")] = None,
    executor: Annotated[list[str] | None, typer.Option("--executor")] = None,
    status: Annotated[list[str] | None, typer.Option("--status")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Resume after this event id ('0-0': every event kept)."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Stop after this many events.")
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Every job's events as they happen (SSE), one JSON line each."""
    params: dict[str, Any] = {
        "label": label or [],
        "executor": executor or [],
        "status": status or [],
    }
    if since is not None:
        params["since"] = since
    seen = 0
    with client_for(ctx, url, token) as client:
        for event, data in client.iter_sse("/events", params=params):
            try:
                body = json.loads(data)
            except ValueError:
                body = data
            print(json.dumps({"event": event, "data": body}), flush=True)
            seen += 1
            if count is not None and seen >= count:
                return


def register(app: typer.Typer) -> None:
    app.add_typer(webhooks_app, name="webhooks")
    app.command("firehose")(firehose)
    app.command("overview")(overview)
    app.command("metrics")(metrics)
    app.command("runners")(
        _read("/runners", "The runner board: workers and agents with their state, as JSON.")
    )
    app.command("streams")(
        _read(
            "/streams",
            "This API process's live-stream hub: subscription, subscribers, drops (JSON).",
        )
    )
