"""Retention on a real store, real Valkey streams and real files."""

from __future__ import annotations

import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestrator.artifacts import ArtifactStore
from orchestrator.errors import JobNotEnded, JobNotFound
from orchestrator.events import Events, connect, job_events_key, job_logs_key
from orchestrator.job import Job, JobStatus, utcnow
from orchestrator.retention import cleanup_older_than, parse_duration, remove_run, sweep_strays
from orchestrator.settings import Settings
from orchestrator.store import JobStore

SPEC = {"executor": "builtin", "type": "countdown", "params": {"seconds": 1}}


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("7d", 7 * 86400),
        ("12h", 12 * 3600),
        ("30m", 1800),
        ("0s", 0),
        ("90s", 90),
        ("1.5h", 5400),
        ("2w", 14 * 86400),
        (" 3d ", 3 * 86400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "7 days", "7y", "1h30m", "abc"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def _run(
    store: JobStore,
    events: Events,
    artifacts: ArtifactStore,
    tmp_path: Path,
    *,
    end: JobStatus | None = JobStatus.succeeded,
    ended_ago: timedelta = timedelta(0),
    files: int = 2,
) -> Job:
    """A job as the worker leaves it: events, log lines, artifacts, then (maybe) ended."""
    job = store.create(SPEC)
    events.publish(job.id, "created", job.public())
    claimed = store.claim(job.id, "runner-test", 30)
    assert claimed is not None
    assert store.start(job.id, 1, 30) is not None
    events.append_logs(job.id, [("stdout", None, f"line {i}") for i in range(3)])
    saved = []
    for i in range(files):
        src = tmp_path / f"{job.id}-{i}.txt"
        src.write_text(f"artifact {i} of {job.id}\n")
        saved.append(artifacts.save(job.id, f"out/{i}.txt", src).model_dump(mode="json"))
    if end is None:
        return store.get(job.id)
    done = store.finish(
        job.id,
        1,
        end,
        exit_code=0 if end == JobStatus.succeeded else 1,
        artifacts=saved,
        finished_at=utcnow() - ended_ago,
    )
    assert done is not None
    events.publish(job.id, end.value, done.public())
    return done


def _traces(settings: Settings, events: Events, job_id: str) -> dict[str, bool]:
    return {
        "artifacts": (settings.artifacts_dir / job_id).exists(),
        "log_file": events.log_path(job_id).exists(),
        "log_stream": bool(events.r.exists(job_logs_key(job_id))),
        "event_stream": bool(events.r.exists(job_events_key(job_id))),
    }


def test_remove_run_removes_everything_of_an_ended_job(
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    settings: Settings,
    tmp_path: Path,
) -> None:
    job = _run(store, events, artifact_store, tmp_path, end=JobStatus.failed)
    ws = settings.workspaces_dir / job.id / "a1"
    ws.mkdir(parents=True)  # a workspace kept by cleanup: "never"
    assert all(_traces(settings, events, job.id).values())
    out = remove_run(store, events, artifact_store, job.id, workspaces_dir=settings.workspaces_dir)
    assert out == {"id": job.id, "status": "failed", "artifact_files": 2}
    assert not any(_traces(settings, events, job.id).values())
    assert not (settings.workspaces_dir / job.id).exists()
    with pytest.raises(JobNotFound):
        store.get(job.id)
    with pytest.raises(JobNotFound):
        remove_run(store, events, artifact_store, job.id)


def test_remove_run_refuses_a_job_that_has_not_ended(
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    settings: Settings,
    tmp_path: Path,
) -> None:
    running = _run(store, events, artifact_store, tmp_path, end=None)
    queued = store.create(SPEC)
    for job in (running, queued):
        with pytest.raises(JobNotEnded):
            remove_run(
                store, events, artifact_store, job.id, workspaces_dir=settings.workspaces_dir
            )
        assert store.get(job.id).status == job.status
    # The running job's artifacts and logs are untouched.
    assert all(_traces(settings, events, running.id).values())


def test_cleanup_keeps_recent_and_unended_runs(
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    settings: Settings,
    tmp_path: Path,
) -> None:
    old = _run(store, events, artifact_store, tmp_path, ended_ago=timedelta(days=8))
    old_cancelled = _run(
        store,
        events,
        artifact_store,
        tmp_path,
        end=JobStatus.cancelled,
        ended_ago=timedelta(days=10),
        files=1,
    )
    recent = _run(store, events, artifact_store, tmp_path, ended_ago=timedelta(days=6))
    running = _run(store, events, artifact_store, tmp_path, end=None)

    out = cleanup_older_than(
        store, events, artifact_store, parse_duration("7d"), workspaces_dir=settings.workspaces_dir
    )
    assert sorted(out["jobs"]) == sorted([old.id, old_cancelled.id])
    assert out["removed"] == 2
    assert out["artifact_files"] == 3
    assert out["errors"] == 0
    for job in (old, old_cancelled):
        assert not any(_traces(settings, events, job.id).values())
    for job in (recent, running):
        assert store.get(job.id).status == job.status
        assert all(_traces(settings, events, job.id).values())

    # "0s" takes every ended run, even one that ended a moment ago; never the running one.
    out = cleanup_older_than(store, events, artifact_store, 0)
    assert out["jobs"] == [recent.id]
    assert artifact_store.files(recent.id) == []
    assert store.get(running.id).status == JobStatus.running
    assert artifact_store.files(running.id) == ["out/0.txt", "out/1.txt"]


def test_one_broken_run_does_not_stop_the_sweep(
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    settings: Settings,
    tmp_path: Path,
) -> None:
    a = _run(store, events, artifact_store, tmp_path, ended_ago=timedelta(days=2))
    b = _run(store, events, artifact_store, tmp_path, ended_ago=timedelta(days=2))
    # A plain file where a's artifact folder should be: removing it fails (even as root).
    folder = settings.artifacts_dir / a.id
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    out = cleanup_older_than(store, events, artifact_store, 86400)
    assert out["jobs"] == [b.id]
    assert out["errors"] == 1
    # a keeps its record, so the next sweep can finish the job.
    assert store.get(a.id).status == JobStatus.succeeded
    folder.unlink()
    assert cleanup_older_than(store, events, artifact_store, 86400)["jobs"] == [a.id]


# ---------------------------------------------------------------- beat's daily task


def test_beat_schedules_retention_daily_on_the_maintenance_queue(settings: Settings) -> None:
    from orchestrator.celery_app import RETENTION, make_celery

    entry = make_celery(settings).conf.beat_schedule["retention"]
    assert entry["task"] == RETENTION
    assert entry["schedule"] == 86400
    assert entry["options"]["queue"] == "lb.maintenance"


def test_sweep_strays_removes_what_a_deleted_run_left_behind(
    store: JobStore,
    events: Events,
    artifact_store: ArtifactStore,
    settings: Settings,
    tmp_path: Path,
) -> None:
    gone = _run(store, events, artifact_store, tmp_path)
    remove_run(store, events, artifact_store, gone.id)
    # The worker's last event and log line land after the run was deleted.
    events.publish(gone.id, "succeeded", gone.public())
    events.append_logs(gone.id, [("stdout", None, "late line")])
    left = _traces(settings, events, gone.id)
    assert left["event_stream"] and left["log_stream"] and left["log_file"]
    live = _run(store, events, artifact_store, tmp_path, end=None)
    ended = _run(store, events, artifact_store, tmp_path)

    strays = sweep_strays(store, events)
    assert gone.id in strays and live.id not in strays and ended.id not in strays
    assert not any(_traces(settings, events, gone.id).values())
    for kept in (live.id, ended.id):
        assert all(_traces(settings, events, kept).values()), kept
    assert gone.id not in sweep_strays(store, events)  # nothing left to do


@pytest.mark.slow
def test_retention_task_removes_runs_past_retention_days(stack: Any, tmp_path: Path) -> None:
    """The task beat sends, run by the real worker with the default 30 days."""
    from orchestrator.celery_app import RETENTION, make_celery
    from tests.support import wait_until

    s = stack.settings
    st = JobStore(s.effective_database_url)
    ev = Events(connect(s.effective_redis_url), logs_dir=s.logs_dir)
    arts = ArtifactStore(s.artifacts_dir)
    celery = make_celery(s)
    try:
        old = _run(st, ev, arts, tmp_path, ended_ago=timedelta(days=s.retention_days + 1))
        young = _run(st, ev, arts, tmp_path, ended_ago=timedelta(days=s.retention_days - 1))
        stray = f"stray-{uuid.uuid4().hex}"  # what a deleted run's last event leaves
        ev.publish(stray, "succeeded", {"id": stray})
        ev.append_logs(stray, [("stdout", None, "late line")])
        celery.send_task(RETENTION, queue="lb.maintenance")
        wait_until(lambda: st.find(old.id) is None, timeout=30, what="the old run to go")
        # purge drops the Redis keys, then the file: wait for every trace, not the first.
        wait_until(
            lambda: not any(_traces(s, ev, stray).values()), timeout=30, what="the stray to go"
        )
        assert arts.files(old.id) == [] and not ev.log_path(old.id).exists()
        assert st.get(young.id).status == JobStatus.succeeded
        assert arts.files(young.id) == ["out/0.txt", "out/1.txt"]
    finally:
        celery.close()
        ev.r.close()
        st.dispose()
