"""``launchbay jobs``: list jobs; one job's status, logs, cancel, artifacts, download."""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer

from orchestrator.cli._options import JobId, Json, Token, Url, client_for
from orchestrator.cli._output import (
    EXIT_CANCELLED,
    EXIT_USAGE,
    artifacts_table,
    fail,
    handled,
    job_detail,
    jobs_table,
    out_console,
    print_json,
    say,
)
from orchestrator.cli._watch import Watcher, has_several_steps, write_log_line
from orchestrator.client import LogLine
from orchestrator.errors import ParamError
from orchestrator.job import JobStatus

# ---------------------------------------------------------------- jobs

jobs_app = typer.Typer(
    help="List jobs (no subcommand), or look at one: status, logs, cancel, artifacts, download.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


def _statuses(values: list[str] | None) -> list[str]:
    out: list[str] = []
    known = [s.value for s in JobStatus]
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part not in known:
                fail(f"bad --status {part!r}: one of {', '.join(known)}", EXIT_USAGE)
            out.append(part)
    return out


@jobs_app.callback()
@handled
def jobs(
    ctx: typer.Context,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", "-s", help="Only these statuses (repeatable or comma list)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many, newest first.")
    ] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    ctx.obj = {"url": url, "token": token}
    if ctx.invoked_subcommand is not None:
        return
    wanted = _statuses(status)
    with client_for(None, url, token) as client:
        page = client.jobs(status=wanted, limit=limit, offset=offset)
    if json_out:
        print_json(page)
        return
    if not page.items:
        say("no jobs" + (f" with status {', '.join(wanted)}" if wanted else ""))
        return
    console = out_console()
    console.print(jobs_table(page.items, total=page.total, width=console.width))


@jobs_app.command("status")
@handled
def job_status(
    ctx: typer.Context,
    job_id: JobId,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Wait up to this many seconds for the job to end first (the server answers "
            "when it ends: no polling).",
        ),
    ] = 0,
) -> None:
    """One job: status, progress, exit code, steps, artifacts."""
    with client_for(ctx, url, token) as client:
        job = client.wait_job(job_id, wait) if wait else client.job(job_id)
    if json_out:
        print_json(job)
        return
    console = out_console()
    for part in job_detail(job):
        console.print(part)


@jobs_app.command("logs")
@handled
def job_logs(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="SEQ|TIME",
            help="Only lines after this line number, or written after this ISO 8601 time "
            "(UTC unless it names a zone), e.g. 2026-01-31T12:00:00Z.",
        ),
    ] = "0",
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON: an array, or one object per line with -f.")
    ] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """A job's log (stdout and stderr lines, in order)."""
    # Imported here: its module brings redis, which no other client command needs (every
    # `launchbay` call pays for what the CLI imports; tests/cli/test_startup.py).
    from orchestrator.events import parse_log_since

    try:
        parsed = parse_log_since(since, "--since")
    except ParamError as exc:
        fail(str(exc), EXIT_USAGE)
    since_at = parsed if isinstance(parsed, int) else parsed.isoformat()
    with client_for(ctx, url, token) as client:
        job = client.job(job_id)  # an unknown id is "job X not found", not an empty log
        after = client.log_seq_at(job_id, since_at)
        if follow:
            on_line = _json_line if json_out else None
            result = Watcher(
                client,
                job_id,
                bar=False,
                cancel_on_interrupt=False,
                on_line=on_line,
                since=after,
                status_lines=False,
            ).run()
            if result.interrupted:
                raise typer.Exit(EXIT_CANCELLED)
            return
        if json_out:
            print_json(list(client.iter_logs(job_id, since=after)))
            return
        # Page by page, so a long log starts printing at once and is never held whole.
        show_step = has_several_steps(job)
        for line in client.iter_logs(job_id, since=after):
            write_log_line(line, sys.stdout, sys.stderr, show_step=show_step)
        sys.stdout.flush()


def _json_line(line: LogLine) -> None:
    import json

    sys.stdout.write(json.dumps(line.model_dump(mode="json")) + "\n")
    sys.stdout.flush()


@jobs_app.command("cancel")
@handled
def job_cancel(
    ctx: typer.Context, job_id: JobId, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """Cancel a queued or running job (the process, container or pod is stopped)."""
    with client_for(ctx, url, token) as client:
        job = client.cancel(job_id)
    if json_out:
        print_json(job)
        return
    if job.status.value == "cancelled":
        say(f"job {job.id} cancelled")
    else:
        say(
            f"cancel requested for job {job.id} ({job.status.value}); it stops within its "
            f"grace period ({job.spec.grace_s:g}s)"
        )


@jobs_app.command("submit-batch")
@handled
def job_submit_batch(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE",
            help="JSON or YAML list of job specs, {'jobs': [...]}, or JSON Lines; '-' is stdin.",
        ),
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the jobs as a JSON array.")
    ] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Submit up to 500 jobs in one request: all accepted, or none (the first refused spec
    is named, e.g. jobs[3].params.seconds). Prints the new job ids, one per line, in order."""
    from orchestrator.cli._specs import SpecInputError, load_batch_file

    try:
        specs = load_batch_file(file)
    except SpecInputError as exc:
        fail(str(exc), EXIT_USAGE)
    with client_for(ctx, url, token) as client:
        made = client.submit_batch(specs)
    for i, job in enumerate(made):
        for warning in job.warnings:
            say(f"warning: jobs[{i}] ({job.id}): {warning}")
    if json_out:
        print_json(made)
        return
    sys.stdout.write("".join(f"{job.id}\n" for job in made))
    sys.stdout.flush()
    say(f"submitted {len(made)} job(s)")


@jobs_app.command("artifacts")
@handled
def job_artifacts(
    ctx: typer.Context, job_id: JobId, json_out: Json = False, url: Url = None, token: Token = None
) -> None:
    """The files a job kept (name, size, sha256, type)."""
    with client_for(ctx, url, token) as client:
        items = client.artifacts(job_id)
    if json_out:
        print_json(items)
        return
    if not items:
        say(f"job {job_id} has no artifacts")
        return
    out_console().print(artifacts_table(items))


@jobs_app.command("download")
@handled
def job_download(
    ctx: typer.Context,
    job_id: JobId,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The artifact's name.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="File or folder to write to ('-' is stdout) [default: ./NAME's file name].",
        ),
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Download one artifact (checked against its sha256)."""
    with client_for(ctx, url, token) as client:
        if output == "-":
            size, _ = client.download(job_id, name, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        dest = _download_path(name, output)
        size, sha = client.download_to(job_id, name, dest)
    checked = ", sha256 checked" if sha else ""
    say(f"saved {name} ({size} bytes{checked}) to {dest}")


def _download_path(name: str, output: str | None) -> Path:
    # Only the artifact's base name is used by default, so a name cannot write outside ".".
    base = PurePosixPath(name).name or "artifact"
    if output is None:
        return Path.cwd() / base
    path = Path(output)
    return path / base if path.is_dir() else path
