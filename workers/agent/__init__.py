"""The remote HTTP agent: runs jobs on a host that cannot reach Redis or the database.

    python -m workers.agent --url http://api:8000 --executors builtin,process --tags gpu

It registers with the launcher API, long-polls for jobs it can run, and runs each one
through the same attempt module a Celery worker uses (``workers/attempt.py``) over the
HTTP channel (``workers/channels/http.py``): ``started``, batched ``logs``, ``progress``,
artifact uploads and ``end`` with the verdict, and one heartbeat for all its jobs that
renews their leases and brings cancels back. The core decides every transition; a 409
means the job is no longer this agent's (its lease expired and it was re-queued) and the
agent stops it without reporting.

Signals: the first SIGTERM/SIGINT drains (no new jobs; running ones get
``LAUNCHBAY_DRAIN_S`` to finish, then are stopped and handed back: re-queued, no attempt
spent); a second one hands them back at once.

Modules: ``cli`` (arguments, signals, ``main``), ``daemon`` (``Agent``: registration, poll
loop, heartbeat, drain).
"""

from workers.agent.cli import main
from workers.agent.daemon import Agent

__all__ = ["Agent", "main"]
