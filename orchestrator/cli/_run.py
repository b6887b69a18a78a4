"""``launchbay run``: build a job spec from arguments or a file, submit it, follow it."""

from __future__ import annotations

import sys
from typing import Annotated

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
        if builtin and body.get("params"):
            schema = _param_schema(client, builtin)
            if schema:
                body["params"] = fit_to_schema(body["params"], schema)
        if not wait:
            job = client.submit(body)
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
