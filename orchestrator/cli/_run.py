"""``launchbay run``: build a job spec from arguments or a file, submit it, follow it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from orchestrator.cli._options import Json, Token, Url, client_for
from orchestrator.cli._output import (
    EXIT_CANCELLED,
    EXIT_USAGE,
    fail,
    handled,
    print_json,
    say,
)
from orchestrator.cli._specs import RunOptions, SpecInputError, build_spec, fit_to_schema
from orchestrator.cli._watch import Watcher, exit_code_for, interrupt_held, outcome_line
from orchestrator.client import ApiError, LaunchbayClient

# ---------------------------------------------------------------- run

RUN_HELP = """Submit a job, and with --wait follow it to the end.

Kinds of job:

  launchbay run IMAGE -- CMD...              a docker job (one step, "main")
  launchbay run --kubernetes IMAGE -- CMD... a Kubernetes Job
  launchbay run --process -- CMD...          a local process on a worker
  launchbay run --builtin TYPE key=value...  a built-in job type
  launchbay run --spec job.yaml              YAML or JSON (see examples/)

Put the command after -- so its options are not read as launchbay's.

Exit codes: 0 submitted, or with --wait succeeded. With --wait, a failed
job exits with its command's exit code (1 when there is none), 124 on
timeout, 130 when cancelled; Ctrl-C while waiting cancels the job and
waits for it to stop. 2: the CLI or the server (422) refused the spec or
an argument. 1: another error from the server. 3: server unreachable.
"""


@handled
def run(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARGS",
            show_default=False,
            help="IMAGE CMD... (docker or --kubernetes), CMD... (--process), key=value... "
            "(--builtin).",
        ),
    ] = None,
    process: Annotated[bool, typer.Option("--process", help="Run CMD as a local process.")] = False,
    builtin: Annotated[
        str | None,
        typer.Option("--builtin", metavar="TYPE", help="A built-in job type, params as key=value."),
    ] = None,
    kubernetes: Annotated[
        bool, typer.Option("--kubernetes", help="IMAGE CMD... as a Kubernetes Job.")
    ] = False,
    spec: Annotated[
        str | None,
        typer.Option(
            "--spec", "-f", metavar="FILE", help="A job spec file, YAML or JSON ('-' reads stdin)."
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", metavar="KEY=VAL", help="Environment (repeatable)."),
    ] = None,
    artifact: Annotated[
        list[str] | None,
        typer.Option("--artifact", metavar="GLOB", help="Keep files matching GLOB (repeatable)."),
    ] = None,
    cpu: Annotated[
        float | None, typer.Option("--cpu", help="CPU cores (docker, kubernetes).")
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory", metavar="SIZE", help="Memory limit: MiB or 512m, 2g (docker, kubernetes)."
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout", metavar="DURATION", help="Run time limit: seconds or 30s, 5m, 2h."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A human name.")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A runner tag the job needs (repeatable).")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "-l", metavar="KEY=VAL", help="A label (repeatable)."),
    ] = None,
    session: Annotated[
        str | None,
        typer.Option("--session", metavar="NAME", help="Start a new session with this name."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="ID",
            help="Resume a session (id or name): its workspace, its defaults.",
        ),
    ] = None,
    fork: Annotated[
        str | None,
        typer.Option("--fork", metavar="ID", help="Start a new session from a copy of this one."),
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", help="Run only on the runner of this host.")
    ] = None,
    project_dir: Annotated[
        str | None,
        typer.Option(
            "--project-dir", metavar="PATH", help="Demand a runner with this project dir."
        ),
    ] = None,
    demand: Annotated[
        list[str] | None,
        typer.Option(
            "--demand", metavar="KEY=VAL", help="Demand a runner capability (repeatable)."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", "-w", help="Follow the job: progress bar, log tail; exit with its outcome."
        ),
    ] = False,
    no_logs: Annotated[
        bool, typer.Option("--no-logs", help="With --wait, do not print logs.")
    ] = False,
    json_out: Json = False,
    url: Url = None,
    token: Token = None,
) -> None:
    options = RunOptions(
        env=env or [],
        artifacts=artifact or [],
        tags=tag or [],
        labels=label or [],
        cpu=cpu,
        memory=memory,
        timeout=timeout,
        name=name,
    )
    with client_for(ctx, url, token) as client:
        try:
            body = build_spec(
                args or [],
                process=process,
                builtin=builtin,
                kubernetes=kubernetes,
                spec_file=spec,
                options=options,
            )
        except SpecInputError as exc:
            fail(str(exc), EXIT_USAGE)
        _add_session_and_demands(body, session, resume, fork, hostname, project_dir, demand or [])
        if builtin and body.get("params"):
            schema = _param_schema(client, builtin)
            if schema:
                body["params"] = fit_to_schema(body["params"], schema)
        if not wait:
            job = client.submit(body)
            for warning in job.warnings:
                say(f"warning: {warning}")
            if json_out:
                print_json(job)
            else:
                print(job.id, flush=True)
                say(
                    f"submitted job {job.id} ({job.status.value}); follow it with: "
                    f"launchbay jobs logs {job.id} -f"
                )
            return
        with interrupt_held() as pressed:
            job = client.submit(body)
            say(f"submitted job {job.id}")
            watcher = Watcher(
                client,
                job.id,
                logs=not no_logs,
                log_out=sys.stderr if json_out else None,
            )
        watcher.cancel_first = bool(pressed)
        result = watcher.run()
    if json_out:
        print_json(result.job)
    if result.gave_up:
        raise typer.Exit(EXIT_CANCELLED)
    say(outcome_line(result.job))
    raise typer.Exit(exit_code_for(result.job))


def _add_session_and_demands(
    body: dict[str, Any],
    session: str | None,
    resume: str | None,
    fork: str | None,
    hostname: str | None,
    project_dir: str | None,
    demand: list[str],
) -> None:
    """Put ``--session/--resume/--fork`` and the capability demands into the spec."""
    if sum(x is not None for x in (resume, fork)) > 1:
        fail("give --resume or --fork, not both", EXIT_USAGE)
    if session is not None or resume is not None or fork is not None:
        ref: dict[str, Any] = {}
        if session is not None:
            ref["name"] = session
        if resume is not None:
            ref["resume"] = resume
        if fork is not None:
            ref["parent_session_id"] = fork
        body["session"] = ref
    demands = dict(body.get("demands") or {})
    if hostname:
        demands["hostname"] = hostname
    if project_dir:
        demands["project_dir"] = project_dir
    for pair in demand:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"bad --demand {pair!r}: give key=value", EXIT_USAGE)
        demands.setdefault("values", {})[key] = value
    if demands:
        body["demands"] = demands


def _param_schema(client: LaunchbayClient, type_name: str) -> dict[str, str] | None:
    """Param name -> schema type, so ``urls=https://x`` becomes a one-item list."""
    try:
        types = client.job_types()
    except ApiError:
        return None  # the server still validates what we send
    for t in types:
        if isinstance(t, dict) and t.get("name") == type_name:
            return {
                p["name"]: p.get("type", "")
                for p in t.get("params", [])
                if isinstance(p, dict) and "name" in p
            }
    return None
