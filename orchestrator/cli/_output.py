"""Output of the client commands: exit codes, one-line errors, tables, JSON."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.client import (
    ApiError,
    ClientError,
    Conflict,
    InvalidRequest,
    Job,
    NotFound,
    ServerUnreachable,
    Unauthorized,
)

# Exit codes of the client commands (documented in ``launchbay run --help``).
EXIT_OK = 0
EXIT_ERROR = 1  # the server refused or failed: unknown id, conflict, auth, 5xx
EXIT_USAGE = 2  # bad input: key=value, spec file, duration, or a 422 from the server
EXIT_UNREACHABLE = 3  # no answer from the server at all
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130

STATUS_STYLE = {
    "queued": "cyan",
    "claimed": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "timed_out": "red",
}

P = ParamSpec("P")
R = TypeVar("R")


def out_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a file or grep: no screen to fit, so do not cut ids to 80 columns.
        console = Console(highlight=False, width=200)
    return console


def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def say(message: str) -> None:
    """A status line on stderr, so stdout stays for data."""
    print(message, file=sys.stderr, flush=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr (one line) and exit with ``code``."""
    one_line = " ".join(str(message).split())
    print(f"error: {one_line}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def exit_for_client_error(exc: ClientError, job_id: str | None = None) -> NoReturn:
    if isinstance(exc, ServerUnreachable):
        fail(str(exc), EXIT_UNREACHABLE)
    if isinstance(exc, InvalidRequest):
        fail(_invalid_line(exc), EXIT_USAGE)
    if (
        isinstance(exc, NotFound)
        and job_id is not None
        and exc.message in ("Not Found", "HTTP 404")
    ):
        # Starlette's bare 404 (e.g. an id that is not one path segment): say what it means.
        fail(f"job {job_id} not found", EXIT_ERROR)
    if isinstance(exc, Unauthorized):
        fail(f"{exc.message} (set LAUNCHBAY_TOKEN or --token)", EXIT_ERROR)
    if isinstance(exc, Conflict | ApiError):
        fail(exc.message, EXIT_ERROR)
    fail(str(exc), EXIT_ERROR)


def _invalid_line(exc: InvalidRequest) -> str:
    if exc.message.startswith("invalid") or not exc.fields:
        return exc.message
    return f"{exc.message} ({', '.join(str(f.get('field')) for f in exc.fields)})"


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every error into one line on stderr and an exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except ClientError as exc:
            exit_for_client_error(exc, _job_id_of(kwargs))
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            raise typer.Exit(EXIT_CANCELLED) from None
        except BrokenPipeError:
            # `launchbay jobs logs X | head`: the reader left; that is not an error.
            _silence_stdout()
            raise typer.Exit(EXIT_OK) from None
        except Exception as exc:
            if os.environ.get("LAUNCHBAY_DEBUG"):
                raise
            fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)

    return wrapper


def _job_id_of(kwargs: dict[str, Any]) -> str | None:
    value = kwargs.get("job_id")
    return value if isinstance(value, str) else None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------- JSON


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Job):
        return value.public()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, default=str) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------- formatting


def fmt_time(value: datetime | None, *, short: bool = False) -> str:
    """Local time; ``short`` drops the year (for tables)."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%m-%d %H:%M:%S" if short else "%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def what_of(job: Job) -> str:
    """A short description of what the job runs."""
    spec = job.spec
    if spec.executor == "builtin":
        args = " ".join(f"{k}={v}" for k, v in spec.params.items())
        return f"{spec.type} {args}".strip()
    if spec.executor == "process":
        argv = spec.command or (spec.steps[0].command if spec.steps else [])
        return " ".join(argv)
    if spec.executor == "docker":
        return f"{spec.image}: {' '.join(spec.steps[0].command)}"
    return f"{spec.image}: {' '.join(spec.command)}"


def jobs_table(jobs: Iterable[Job], total: int | None = None, width: int = 200) -> Table:
    """The jobs list. Ids are never cut: on a narrow screen NAME / WHAT shrinks first, then
    the least useful columns go."""
    jobs = list(jobs)
    columns: list[tuple[str, int, str]] = [  # header, width, justify
        ("ID", 32, "left"),
        ("STATUS", 9, "left"),
        ("EXECUTOR", 10, "left"),
        ("PROGRESS", 8, "right"),
        ("CREATED", 14, "left"),
        ("DURATION", 8, "right"),
    ]
    name_w = width - sum(w + 2 for _, w, _ in columns)
    for drop in ("CREATED", "PROGRESS", "DURATION", "EXECUTOR"):
        if name_w >= 12:
            break
        freed = next(w + 2 for h, w, _ in columns if h == drop)
        columns = [c for c in columns if c[0] != drop]
        name_w += freed
    name_w = max(8, min(name_w, 60))
    headers = [h for h, _, _ in columns]
    headers.insert(3 if "EXECUTOR" in headers else 2, "NAME / WHAT")
    table = Table(box=None, pad_edge=False, header_style="bold", collapse_padding=True)
    for header in headers:
        if header == "NAME / WHAT":
            table.add_column(header, width=name_w, no_wrap=True, overflow="ellipsis")
            continue
        w, justify = next((w, j) for h, w, j in columns if h == header)
        table.add_column(header, min_width=w, no_wrap=True, justify=justify)  # type: ignore[arg-type]
    for job in jobs:
        cells = {
            "ID": Text(job.id),
            "STATUS": status_text(job.status.value)
            + (Text(f" ({job.waiting['reason']})", style="yellow") if job.waiting else Text("")),
            "EXECUTOR": Text(job.spec.executor),
            "NAME / WHAT": Text(job.spec.name or what_of(job)),
            "PROGRESS": Text(f"{job.progress.percent:.0f}%"),
            "CREATED": Text(fmt_time(job.created_at, short=True)),
            "DURATION": Text(fmt_duration(job.duration_s)),
        }
        table.add_row(*(cells[h] for h in headers))
    if total is not None:
        table.caption = f"{len(jobs)} of {total} job(s)"
        table.caption_justify = "left"
    return table


def job_detail(job: Job) -> list[Any]:
    """Renderables describing one job."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", job.id),
        ("name", job.spec.name or "-"),
        ("status", status_text(job.status.value)),
        ("executor", job.spec.executor),
        ("what", Text(what_of(job))),
        ("attempt", f"{job.attempt} of {job.spec.max_attempts}"),
        ("runner", job.runner_id or "-"),
        ("progress", f"{job.progress.percent:.0f}% {job.progress.message}".rstrip()),
        ("created", fmt_time(job.created_at)),
        ("started", fmt_time(job.started_at)),
        ("finished", fmt_time(job.finished_at)),
        ("duration", fmt_duration(job.duration_s)),
    ]
    if job.exit_code is not None:
        rows.append(("exit code", str(job.exit_code)))
    if job.waiting:  # why a queued job waits (issue 14)
        rows.append(("waiting", Text(str(job.waiting.get("message", "")), style="yellow")))
    if job.rerun_of:
        rows.append(("rerun of", job.rerun_of))
    if job.error:
        rows.append(("error", Text(job.error, style="red")))
    if job.cancel_requested:
        rows.append(("cancel", f"requested at {fmt_time(job.cancel_requested_at)}"))
    if job.result is not None:
        text = json.dumps(job.result, default=str)
        rows.append(("result", Text(text if len(text) <= 300 else text[:297] + "...")))
    for label, value in rows:
        grid.add_row(label, value if isinstance(value, Text) else Text(str(value)))
    parts: list[Any] = [grid]
    if job.steps:
        steps = Table(title="steps", box=None, header_style="bold", title_justify="left")
        for col in ("STEP", "EXIT", "STARTED", "FINISHED"):
            steps.add_column(col)
        for s in job.steps:
            steps.add_row(
                s.name,
                "-" if s.exit_code is None else str(s.exit_code),
                fmt_time(s.started_at),
                fmt_time(s.finished_at),
            )
        parts.append(steps)
    if job.artifacts:
        parts.append(artifacts_table(job.artifacts, title="artifacts"))
    return parts


def artifacts_table(artifacts: Iterable[Any], title: str | None = None) -> Table:
    table = Table(title=title, box=None, header_style="bold", title_justify="left")
    table.add_column("NAME", no_wrap=True)
    table.add_column("SIZE", justify="right", no_wrap=True)
    table.add_column("SHA256", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    for a in artifacts:
        table.add_row(Text(a.name), fmt_size(a.size), a.sha256[:16], a.content_type)
    return table
