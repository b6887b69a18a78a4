"""The agent process: registers, long-polls for jobs, runs them, heartbeats, drains."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from orchestrator.client import ApiError, ClientError, LaunchbayClient, NotFound, ServerUnreachable
from orchestrator.job import Job
from orchestrator.settings import Settings
from workers.attempt import Attempt
from workers.channels.http import HttpChannel
from workers.launchers import LauncherSet

log = logging.getLogger("launchbay.agent")


class Agent:
    """Registers, polls while it has free slots, runs jobs, heartbeats until told to stop."""

    def __init__(
        self,
        client: LaunchbayClient,
        settings: Settings,
        *,
        executors: list[str],
        tags: list[str],
        capacity: int = 1,
        hostname: str | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.launchers = LauncherSet(settings)
        self.executors, self.tags, self.capacity = executors, tags, capacity
        self.hostname = hostname or socket.gethostname()
        self.id: str = ""
        self.poll_timeout_s = 30.0
        self.heartbeat_s = 5.0
        self.draining = threading.Event()  # no new jobs
        self.forced = threading.Event()  # stop running jobs too
        self._slots = threading.BoundedSemaphore(capacity)
        self._attempts: dict[str, Attempt] = {}
        self._cond = threading.Condition()
        self._closing = threading.Event()  # unregistering: never register again
        self.channel: HttpChannel | None = None
        # Enroll with the client's token (the 'agent' scope); every later call presents
        # this agent's own key, given at registration.
        self._enroll_token = client.token
        self._key: str | None = None

    # -------------------------------------------------- registration

    def register(self) -> None:
        """Register (again, under the same id once it has one)."""
        body: dict[str, Any] = {
            "executors": self.executors,
            "tags": self.tags,
            "capacity": self.capacity,
            "hostname": self.hostname,
            "pid": os.getpid(),
            # Capabilities (issue 16): LAUNCHBAY_WORKER_PROJECT_DIRS, _CAPABILITIES.
            "project_dirs": self.settings.worker_project_dirs,
            "capabilities": self.settings.worker_capabilities,
        }
        if self.id and self._key:
            body["launcher_id"] = self.id
        try:
            got = self.client.request_json("POST", "/launcher/register", json=body)
        except ApiError as exc:
            if exc.status != 401 or not self._key:
                raise
            # The server no longer knows this agent's key (its database was reset):
            # enroll again, as a new agent, with the enrollment token.
            log.warning("the server refused this agent's key; enrolling again")
            self._key = None
            self.client.set_token(self._enroll_token)
            body.pop("launcher_id", None)
            got = self.client.request_json("POST", "/launcher/register", json=body)
        first = not self.id
        self.id = got["launcher_id"]
        if got.get("agent_key"):
            self._key = got["agent_key"]
            self.client.set_token(self._key)
        self.poll_timeout_s = float(got["poll_timeout_s"])
        self.heartbeat_s = float(got["heartbeat_interval_s"])
        if self.channel is None:
            self.channel = HttpChannel(self.client, self.id, self.heartbeat_s)
        else:  # the same id again: running attempts keep hearing the heartbeat
            self.channel.renew_s = self.heartbeat_s
            self.channel.runner_id = self.id  # (a new one after enrolling again)
        if first:
            log.info(
                "registered as %s at %s (executors %s, tags %s, capacity %d)",
                self.id,
                self.client.url,
                ",".join(self.executors),
                ",".join(self.tags) or "-",
                self.capacity,
            )
        else:
            log.warning("registration had expired; registered again as %s", self.id)

    def _register_until_ok(self) -> bool:
        delay = 0.5
        while not self.draining.is_set():
            try:
                self.register()
                return True
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                log.warning("cannot register yet (%s); retrying in %g s", exc, delay)
                self.draining.wait(delay)
                delay = min(delay * 2, 10)
        return False

    # -------------------------------------------------- main loop

    def run(self) -> int:
        """Run until drained; returns the exit status."""
        if not self._register_until_ok():
            return 0
        heart_stop = threading.Event()
        threading.Thread(
            target=self._heartbeat, args=(heart_stop,), name="heartbeat", daemon=True
        ).start()
        poller = threading.Thread(target=self._poll_loop, name="poller", daemon=True)
        poller.start()
        self.draining.wait()
        log.info(
            "draining: no new jobs; %d running get %g s to finish, then go back to the queue",
            len(self._attempts),
            0 if self.forced.is_set() else self.settings.drain_s,
        )
        with self._cond:
            while self._attempts:
                self._cond.wait(0.5)
        heart_stop.set()
        self._closing.set()
        try:
            self.client.request(
                "POST", "/launcher/unregister", json={"launcher_id": self.id}, timeout=5
            )
        except ClientError as exc:
            log.warning("could not unregister: %s", exc)
        poller.join(timeout=self.poll_timeout_s + 5)
        log.info("stopped")
        return 0

    def drain(self) -> None:
        """Take no new jobs; running ones get ``drain_s`` to finish, then are handed back
        (re-queued, nothing spent)."""
        if self.channel is not None:
            self.channel.drain(self.settings.drain_s)
        self.draining.set()

    def force(self) -> None:
        """Hand the running jobs back now (a second signal)."""
        self.forced.set()
        if self.channel is not None:
            self.channel.drain(0)
        self.draining.set()
        with self._cond:
            self._cond.notify_all()

    def _poll_loop(self) -> None:
        backoff = 0.5
        while not self.draining.is_set():
            if not self._slots.acquire(timeout=0.5):
                continue
            job: Job | None = None
            try:
                job = self._poll_once()
                backoff = 0.5
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, NotFound):
                    self._try_register()
                else:
                    log.warning("poll failed (%s); retrying in %g s", exc, backoff)
                    self.draining.wait(backoff)
                    backoff = min(backoff * 2, 10)
            except Exception:
                log.exception("poll failed")
                self.draining.wait(backoff)
            if job is None:
                self._slots.release()
                continue
            if self.draining.is_set():
                self._give_back(job)
                self._slots.release()
                continue
            self._start(job)

    def _poll_once(self) -> Job | None:
        wait = self.poll_timeout_s
        resp = self.client.request(
            "GET",
            "/launcher/jobs",
            params={"launcher_id": self.id, "wait": wait},
            timeout=wait + 15,
        )
        if resp.status_code == 204:
            return None
        body = resp.json()
        job = Job.model_validate(body["job"])
        job.spec.secrets = body.get("secrets") or {}  # (never part of the job's JSON)
        return job

    def _start(self, job: Job) -> None:
        assert self.channel is not None  # registered before polling
        attempt = Attempt(self.channel, self.launchers, self.settings, job)
        with self._cond:
            self._attempts[job.id] = attempt

        def run() -> None:
            try:
                attempt.run()
            finally:
                with self._cond:
                    if self._attempts.get(job.id) is attempt:
                        del self._attempts[job.id]
                    self._cond.notify_all()
                self._slots.release()

        threading.Thread(target=run, name=f"job-{job.id}", daemon=True).start()

    def _give_back(self, job: Job) -> None:
        try:
            self.client.request(
                "POST",
                f"/launcher/jobs/{job.id}/release",
                json={"launcher_id": self.id, "attempt": job.attempt},
            )
            log.info("gave job %s back: draining", job.id)
        except ClientError as exc:
            log.warning("could not give job %s back (%s); its lease will expire", job.id, exc)

    def _try_register(self) -> None:
        if self._closing.is_set():
            return
        try:
            self.register()
        except ClientError as exc:
            log.warning("re-registration failed: %s", exc)
            self.draining.wait(1)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            with self._cond:
                attempts = dict(self._attempts)
            try:
                got = self.client.request_json(
                    "POST",
                    "/launcher/heartbeat",
                    json={"launcher_id": self.id, "jobs": list(attempts)},
                    timeout=10,
                )
            except NotFound:
                self._try_register()
                continue
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if self.channel is not None:
                # Each attempt's watcher reads these within a tick and stops its job.
                self.channel.heard(got.get("cancel", []), got.get("lost", []))
