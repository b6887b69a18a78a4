"""The agent's command line: ``python -m workers.agent --url ... --executors ...``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

from orchestrator.client import ApiError, LaunchbayClient, Unauthorized
from orchestrator.hardening import harden_process
from orchestrator.job import EXECUTORS
from orchestrator.settings import Settings
from workers.agent.daemon import Agent


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"launchbay agent: {message}\n")


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _parser() -> _Parser:
    p = _Parser(
        prog="python -m workers.agent",
        description="Run Launchbay jobs on this host, pulled over HTTP.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("LAUNCHBAY_URL", "http://127.0.0.1:8000"),
        help="API root [LAUNCHBAY_URL]",
    )
    p.add_argument(
        "--token", default=os.environ.get("LAUNCHBAY_TOKEN"), help="bearer token [LAUNCHBAY_TOKEN]"
    )
    p.add_argument(
        "--executors",
        default="builtin,process",
        help="comma list of builtin,process,docker,kubernetes",
    )
    p.add_argument("--tags", default="", help="comma list of runner tags")
    p.add_argument("--capacity", type=int, default=1, help="jobs run at once")
    p.add_argument("--hostname", default=None, help="name shown in the workers list")
    p.add_argument("--home", default=None, help="state folder for workspaces [LAUNCHBAY_HOME]")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run an :class:`Agent` until it is drained; the exit status."""
    harden_process()  # its environment holds the enrollment token, memory its own key
    parser = _parser()
    args = parser.parse_args(argv)
    executors = _csv(args.executors)
    unknown = [e for e in executors if e not in EXECUTORS]
    if not executors or unknown:
        parser.error(
            f"--executors: unknown {','.join(unknown) or '(none given)'}; "
            f"choose from {','.join(EXECUTORS)}"
        )
    if args.capacity < 1:
        parser.error("--capacity must be at least 1")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s agent %(levelname)s %(message)s"
    )
    settings = Settings.from_env()
    if args.home:
        settings = settings.model_copy(update={"home": Path(args.home)})
    settings.ensure_dirs()
    client = LaunchbayClient(args.url, args.token)
    agent = Agent(
        client,
        settings,
        executors=executors,
        tags=_csv(args.tags),
        capacity=args.capacity,
        hostname=args.hostname,
    )

    def on_signal(_signum: int, _frame: object) -> None:
        if agent.draining.is_set():
            agent.force()
        else:
            agent.drain()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    except (Unauthorized, ApiError) as exc:
        print(f"launchbay agent: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
