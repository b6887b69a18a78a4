"""Launch failures through the attempt runner: transient errors are retried with backoff,
permanent ones fail at once, and the job's error says what happened in one line.

The Kubernetes API here is FakeKubernetes (an in-process fake, see workers/testing/);
the store, events and valkey are real.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.celery_app import make_celery
from orchestrator.dispatch import Dispatcher
from orchestrator.events import Events
from orchestrator.settings import Settings
from orchestrator.store import JobStore
from workers.channels.direct import DirectChannel
from workers.launchers import LauncherSet
from workers.launchers.kubernetes import KubernetesConfig, KubernetesLauncher
from workers.testing import FakeKubernetes


@dataclass
class Runner:
    """Runs attempt 1 of a job the way a Celery worker's task does (direct channel)."""

    dispatcher: Dispatcher
    launchers: LauncherSet
    artifacts: ArtifactStore

    def run(self, job_id: str) -> str:
        channel = DirectChannel(self.dispatcher, "runner-0123456789ab", self.artifacts)
        return channel.run(job_id, 1, self.launchers)


@pytest.fixture
def fake_kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as fake:
        yield fake


@pytest.fixture
def runner(
    settings: Settings,
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    fake_kube: FakeKubernetes,
    tmp_path: Path,
) -> Runner:
    settings = settings.model_copy(update={"launch_backoff_s": 0.05})
    dispatcher = Dispatcher(settings, store, events, make_celery(settings))
    launchers = LauncherSet(settings)
    kubeconfig = fake_kube.write_kubeconfig(tmp_path / "kubeconfig")
    # The set makes launchers with default configs; this one points at the fake API.
    launchers._made["kubernetes"] = KubernetesLauncher(
        settings, KubernetesConfig(kubeconfig=str(kubeconfig), poll_s=0.05)
    )
    return Runner(dispatcher, launchers, artifact_store)


def _create_posts(fake: FakeKubernetes) -> int:
    return sum(1 for m, p in fake.requests if m == "POST" and p.endswith("/jobs"))


def _submit(store: JobStore, **extra: Any) -> str:
    spec = {"executor": "kubernetes", "image": "busybox", "command": ["echo", "hi"], **extra}
    return store.create(spec).id


def test_transient_errors_are_retried_until_the_launch_works(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    fake_kube.fail_next("POST", "/jobs", 503, times=2)
    job_id = _submit(store)
    assert runner.run(job_id) == "succeeded"
    assert _create_posts(fake_kube) == 3
    assert store.get(job_id).exit_code == 0


def test_three_transient_failures_fail_the_job_with_one_readable_line(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    fake_kube.fail_next("POST", "/jobs", 503, times=3)
    job_id = _submit(store)
    assert runner.run(job_id) == "failed"
    job = store.get(job_id)
    assert _create_posts(fake_kube) == 3
    assert job.attempt == 1
    assert job.error is not None and "\n" not in job.error
    assert job.error.startswith("kubernetes launcher failed on launch attempt 3: ")
    assert "503" in job.error


def test_a_transient_error_that_outlasts_the_launch_retries_spends_an_attempt(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    # A registry or API that is down for longer than the launch retries may be back by
    # the next attempt: the same rule on every channel (orchestrator/lifecycle.py).
    fake_kube.fail_next("POST", "/jobs", 503, times=3)
    job_id = _submit(store, max_attempts=3, retry_backoff_s=0)
    assert runner.run(job_id) == "requeued"
    job = store.get(job_id)
    assert job.status == "queued" and job.attempt == 2
    assert (job.error or "").startswith(
        "attempt 1 failed: kubernetes launcher failed on launch attempt 3: "
    )


def test_permanent_errors_fail_at_once(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    fake_kube.fail_next("POST", "/jobs", 422, times=3)
    job_id = _submit(store, max_attempts=3)  # another attempt would fail the same way
    assert runner.run(job_id) == "failed"
    assert _create_posts(fake_kube) == 1
    assert store.get(job_id).attempt == 1
    assert store.get(job_id).error.startswith(  # type: ignore[union-attr]
        "kubernetes launcher failed on launch attempt 1: "
    )


def test_kubernetes_job_runs_through_the_runner(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    job_id = _submit(
        store, command=["sh", "-c", "echo '::progress 50 half'; echo '::result [1, 2]'; exit 0"]
    )
    assert runner.run(job_id) == "succeeded"
    job = store.get(job_id)
    assert job.progress.percent == 100 and job.progress.message == "half"  # done: 100 %
    assert job.result == [1, 2]
    assert ("default", f"lb-{job_id}-a1", "Background") in fake_kube.deletions


def test_cancel_deletes_the_kubernetes_job_in_the_foreground(
    runner: Runner, store: JobStore, fake_kube: FakeKubernetes
) -> None:
    import threading

    from tests.support import wait_until

    job_id = _submit(store, command=["sleep", "300"], grace_s=2)
    final: dict[str, str] = {}
    t = threading.Thread(target=lambda: final.setdefault("s", runner.run(job_id)))
    t.start()
    wait_until(fake_kube.running_processes, timeout=30, what="the pod's process to run")
    runner.dispatcher.cancel(job_id)
    t.join(60)
    assert final["s"] == "cancelled"
    assert ("default", f"lb-{job_id}-a1", "Foreground") in fake_kube.deletions
    assert fake_kube.running_processes() == []
    assert store.get(job_id).status == "cancelled"


def test_unreachable_docker_daemon_is_retried_then_fails(
    settings: Settings,
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    tmp_path: Path,
) -> None:
    from workers.launchers.docker import DockerConfig, DockerLauncher

    settings = settings.model_copy(update={"launch_backoff_s": 0.05})
    launchers = LauncherSet(settings)
    launchers._made["docker"] = DockerLauncher(
        settings, DockerConfig(base_url=f"unix://{tmp_path}/no-docker.sock")
    )
    runner = Runner(
        Dispatcher(settings, store, events, make_celery(settings)), launchers, artifact_store
    )
    job_id = store.create(
        {"executor": "docker", "image": "busybox", "steps": [{"name": "s", "command": ["true"]}]}
    ).id
    assert runner.run(job_id) == "failed"
    error = store.get(job_id).error or ""
    assert error.startswith("docker launcher failed on launch attempt 3: ")
    assert "\n" not in error
