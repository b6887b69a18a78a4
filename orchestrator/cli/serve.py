"""``launchbay up | api | worker | beat | flower``: start the stack or one part of it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from orchestrator.credentials import redacted
from orchestrator.hardening import harden_process
from orchestrator.problems import problems_of
from orchestrator.runners import new_runner_id
from orchestrator.services import (
    Service,
    Supervisor,
    api_argv,
    beat_argv,
    flower_argv,
    flower_env,
    settings_env,
    wait_flower_lists,
    wait_http,
    worker_argv,
)
from orchestrator.settings import Settings

ApiPort = Annotated[int | None, typer.Option("--api-port", help="API port [LAUNCHBAY_API_PORT].")]
FlowerPort = Annotated[
    int | None, typer.Option("--flower-port", help="Flower port [LAUNCHBAY_FLOWER_PORT].")
]


def _settings(**overrides: object) -> Settings:
    """Settings from the environment plus command-line overrides; bad values exit 2."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        base = Settings.from_env().model_dump(exclude_computed_fields=True)
        return Settings.model_validate({**base, **clean})
    except ValidationError as exc:
        for problem in problems_of(exc.errors(), whole=""):
            where = f"LAUNCHBAY_{problem['field'].upper()}: " if problem["field"] else ""
            typer.echo(f"error: {where}{problem['message']}", err=True)
        raise typer.Exit(2) from None


def _exec(argv: list[str], settings: Settings, extra_env: dict[str, str] | None = None) -> None:
    """Replace this process with ``argv`` (no wrapper left behind to forward signals)."""
    settings.ensure_dirs()
    env = {**os.environ, **settings_env(settings), **(extra_env or {})}
    os.execve(argv[0], argv, env)


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:  # no SDK, no socket, no engine: all mean "no docker jobs here"
        return False
    return True


def _say_why(dead: Service, log_dir: Path) -> None:
    """Name the service that died and show the end of its log."""
    code = dead.proc.returncode if dead.proc is not None else None
    typer.echo(f"{dead.name} exited with code {code}; the end of its log:", err=True)
    log = log_dir / f"{dead.name}.log"
    if log.exists():
        for line in log.read_text(errors="replace").splitlines()[-8:]:
            typer.echo(f"  {line}", err=True)


def up(
    api_port: ApiPort = None,
    flower_port: FlowerPort = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    no_flower: Annotated[bool, typer.Option("--no-flower")] = False,
) -> None:
    """Start the whole stack here: Valkey (embedded unless LAUNCHBAY_REDIS_URL is set),
    the API with the dashboard, one worker, beat and Flower."""
    harden_process()
    settings = _settings(api_port=api_port, flower_port=flower_port, worker_concurrency=concurrency)
    if "LAUNCHBAY_WORKER_EXECUTORS" not in os.environ and _docker_engine_answers():
        # On one machine, take docker jobs when an engine is there to run them.
        settings = settings.model_copy(
            update={"worker_executors": [*settings.worker_executors, "docker"]}
        )
    settings.ensure_dirs()
    sup = Supervisor(
        settings, log_dir=settings.home / "service-logs", say=lambda line: typer.echo(line)
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    typer.echo(f"launchbay home {settings.home}")
    typer.echo(f"database {redacted(settings.effective_database_url)}")
    try:
        if settings.redis_url is None:
            sup.start_embedded_valkey()
        else:
            typer.echo(f"redis    {redacted(settings.redis_url)} (external)")
        sup.add_stack(flower=not no_flower)
        sup.start()
        wait_http(
            f"http://{settings.api_host}:{settings.api_port}/api/v1/healthz",
            timeout=60,
            alive=lambda: sup.poll_dead() is None,
        )
        worker = next((svc for svc in sup.services if svc.name == "worker"), None)
        if not no_flower and worker is not None:
            # Ready means ready everywhere: Flower already lists the worker.
            wait_flower_lists(
                settings,
                worker.env["LAUNCHBAY_RUNNER_ID"],
                timeout=60,
                alive=lambda: sup.poll_dead() is None,
            )
        typer.echo(
            f"ready    dashboard at http://{settings.api_host}:{settings.api_port}/ "
            f"(logs in {settings.home / 'service-logs'}); Ctrl-C stops everything"
        )
        while not stop.wait(0.5):
            if sup.poll_dead() is not None:
                raise RuntimeError("a service stopped on its own")
    except Exception as exc:
        typer.echo(f"launchbay up failed: {exc}", err=True)
        if (dead := sup.poll_dead()) is not None:
            _say_why(dead, settings.home / "service-logs")
        raise typer.Exit(1) from None
    finally:
        # Stop first: saying so may fail (a closed terminal), stopping must not.
        with contextlib.suppress(OSError):
            typer.echo("stopping...")
        sup.stop()
        with contextlib.suppress(OSError):
            typer.echo("stopped")


def api(
    api_port: ApiPort = None, host: Annotated[str | None, typer.Option("--host")] = None
) -> None:
    """Start the API and dashboard alone."""
    s = _settings(api_port=api_port, api_host=host)
    _exec(api_argv(s), s)


def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    executors: Annotated[
        str | None,
        typer.Option("--executors", help="Comma list: builtin,process,docker,kubernetes"),
    ] = None,
    tags: Annotated[str | None, typer.Option("--tags", help="Comma list of runner tags.")] = None,
) -> None:
    """Start one Celery worker (scale out by starting more)."""
    s = _settings(
        worker_concurrency=concurrency,
        worker_executors=executors.split(",") if executors else None,
        worker_tags=tags.split(",") if tags else None,
    )
    runner_id = s.runner_id or os.environ.get("LAUNCHBAY_RUNNER_ID") or new_runner_id()
    _exec(worker_argv(s, runner_id), s, {"LAUNCHBAY_RUNNER_ID": runner_id})


def beat() -> None:
    """Start beat (one per deployment): reconcile, orphan removal, retention."""
    s = _settings()
    _exec(beat_argv(s), s)


def flower(flower_port: FlowerPort = None) -> None:
    """Start Flower for the Celery side."""
    s = _settings(flower_port=flower_port)
    _exec(flower_argv(s), s, flower_env(s))


def agent(
    url: Annotated[str | None, typer.Option("--url", help="API root [LAUNCHBAY_URL].")] = None,
    executors: Annotated[
        str, typer.Option("--executors", help="Comma list: builtin,process,docker,kubernetes")
    ] = "builtin,process",
    tags: Annotated[str, typer.Option("--tags", help="Comma list of runner tags.")] = "",
    capacity: Annotated[int, typer.Option("--capacity", "-c", min=1, help="Jobs run at once.")] = 1,
    hostname: Annotated[str | None, typer.Option("--hostname")] = None,
) -> None:
    """Start a remote agent: pull jobs over HTTP from a Launchbay API (no Redis needed)."""
    argv = [
        sys.executable,
        "-m",
        "workers.agent",
        "--executors",
        executors,
        "--tags",
        tags,
        "--capacity",
        str(capacity),
    ]
    if url:
        argv += ["--url", url]
    if hostname:
        argv += ["--hostname", hostname]
    # The agent lives in workers/, which orchestrator/ does not import: run it as a program.
    os.execv(argv[0], argv)


def register(app: typer.Typer) -> None:
    for fn in (up, api, worker, beat, flower, agent):
        app.command()(fn)
