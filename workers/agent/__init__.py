"""The remote HTTP agent: runs jobs on a host that cannot reach Redis or the database.

    python -m workers.agent --url http://api:8000 --executors builtin,process --tags gpu

It registers with the launcher API, long-polls for jobs it can run, and drives each one with
the same launchers a Celery worker uses (``workers/launchers``). What ``AttemptRunner`` does
against the store and Redis, the agent does over HTTP: ``started``, batched ``logs``,
``progress``, ``completed``/``failed``, artifact uploads, and a heartbeat that renews its
leases and brings cancels back. The server's store decides every transition; a 409 means the
job is no longer this agent's (its lease expired and it was re-queued) and the agent stops it
without reporting.


Signals: the first SIGTERM/SIGINT drains (no new jobs, running ones finish); a second one
stops the running jobs, reports them failed (re-queued when attempts remain) and exits.

Modules: ``cli`` (arguments, signals, ``main``), ``daemon`` (``Agent``: registration, poll
loop, heartbeat, drain), ``attempt`` (one job from claim to final report), ``reporter``
(buffered logs and progress over HTTP), ``verdict`` (the final report's body).
"""

from workers.agent.cli import main
from workers.agent.daemon import Agent

__all__ = ["Agent", "main"]
