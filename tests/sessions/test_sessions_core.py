"""Sessions, capabilities and run records in the core, on the in-memory fakes (fast tier)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestrator.capabilities import LiveRunners, describe, unmet
from orchestrator.errors import ParamError
from orchestrator.job import Demands, DockerSpec, JobSpec, JobStatus
from orchestrator.problems import problems_of
from orchestrator.protocol import Verdict
from orchestrator.routing import queue_name, route, worker_queues
from orchestrator.runners import RunnerInfo
from orchestrator.sessions import copy_parent_workspace, workspace_of
from orchestrator.settings import Settings
from orchestrator.testing import MemoryCore, memory_core

A, B = "runner-aaaaaaaaaaaa", "runner-bbbbbbbbbbbb"
SPEC = TypeAdapter(JobSpec)


@pytest.fixture
def core(tmp_path: Path) -> Iterator[MemoryCore]:
    c = memory_core(Settings(home=tmp_path / "home"))
    yield c
    c.close()


def _proc(**extra: Any) -> dict[str, Any]:
    return {"executor": "process", "command": ["true"], **extra}


# ---------------------------------------------------------------- sessions


def test_one_run_of_a_session_at_a_time_in_order(core: MemoryCore) -> None:
    first = core.dispatcher.submit(_proc(session={"name": "s"}))
    sid = first.session_id
    assert sid is not None and sid.startswith("ses_")
    core.clock.advance(0.001)  # (the order is the submit time's)
    second = core.dispatcher.submit(_proc(session={"resume": sid}))
    other = core.dispatcher.submit(_proc())
    # The younger run may not go first, nor while the first is active.
    assert core.lifecycle.claim(second.id, B) is None
    assert core.lifecycle.claim(first.id, A) is not None
    assert core.lifecycle.claim(second.id, B) is None
    assert core.lifecycle.claim(other.id, B) is not None  # jobs without a session: unaffected
    core.lifecycle.start(first.id, A, 1, "pid:1")
    sent_before = len(core.celery.sent_for(second.id))
    core.lifecycle.end(first.id, A, 1, Verdict(status=JobStatus.succeeded, exit_code=0))
    # Its end sends the session's next run again (its first message may have been dropped).
    assert len(core.celery.sent_for(second.id)) == sent_before + 1
    assert core.lifecycle.claim(second.id, B) is not None


def test_a_resume_fills_what_the_job_left_out_from_the_session(core: MemoryCore) -> None:
    first = core.dispatcher.submit(
        {
            "executor": "docker",
            "image": "busybox:1",
            "steps": [{"name": "a", "command": ["true"]}],
            "env": {"K": "v"},
            "resources": {"memory_mb": 64},
        }
        | {"session": {"name": "d"}}
    )
    again = core.dispatcher.submit(
        {
            "executor": "docker",
            "steps": [{"name": "b", "command": ["ls"]}],
            "env": {"OWN": "1"},
            "session": {"resume": "d"},
        }
    )
    assert again.session_id == first.session_id
    assert isinstance(again.spec, DockerSpec)
    assert again.spec.image == "busybox:1"
    assert again.spec.resources.memory_mb == 64
    assert again.spec.env == {"OWN": "1"}  # given: kept
    assert again.spec.steps[0].name == "b"


def test_a_docker_job_needs_an_image_unless_it_resumes() -> None:
    with pytest.raises(ValidationError) as err:
        SPEC.validate_python({"executor": "docker", "steps": [{"name": "a", "command": ["x"]}]})
    assert problems_of(err.value.errors())[0]["field"] == "image"
    SPEC.validate_python(
        {
            "executor": "docker",
            "steps": [{"name": "a", "command": ["x"]}],
            "session": {"resume": "ses_0123456789ab"},
        }
    )


def test_a_fork_copies_the_parents_workspace_and_the_parent_stays(tmp_path: Path) -> None:
    parent = workspace_of(tmp_path, "ses_aaaaaaaaaaaa")
    (parent / "sub").mkdir(parents=True)
    (parent / "sub" / "f").write_text("p")
    ws = copy_parent_workspace(tmp_path, "ses_bbbbbbbbbbbb", "ses_aaaaaaaaaaaa")
    assert (ws / "sub" / "f").read_text() == "p"
    (ws / "sub" / "f").write_text("changed")
    assert (parent / "sub" / "f").read_text() == "p"
    # Made once: a later run finds it as it was left.
    assert copy_parent_workspace(tmp_path, "ses_bbbbbbbbbbbb", "ses_aaaaaaaaaaaa") == ws
    assert (ws / "sub" / "f").read_text() == "changed"


# ---------------------------------------------------------------- run records


def test_the_start_and_end_write_the_run_record(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_proc())
    core.lifecycle.claim(job.id, A)
    core.lifecycle.start(job.id, A, 1, handle="4242")
    assert core.store.attempts(job.id)[0].handle == "4242"
    verdict = Verdict(
        status=JobStatus.succeeded,
        exit_code=0,
        handle="4242",
        cleanup="removed",
        resource_usage={"wall_s": 1.5},
    )
    core.lifecycle.end(job.id, A, 1, verdict)
    (rec,) = core.store.attempts(job.id)
    assert (rec.handle, rec.cleanup, rec.resource_usage) == ("4242", "removed", {"wall_s": 1.5})


def test_a_success_ends_at_100_percent_whatever_it_last_printed(core: MemoryCore) -> None:
    job = core.dispatcher.submit(_proc())
    core.lifecycle.claim(job.id, A)
    core.lifecycle.start(job.id, A, 1)
    core.lifecycle.progress(job.id, A, 1, 50, "half")
    done = core.lifecycle.end(job.id, A, 1, Verdict(status=JobStatus.succeeded, exit_code=0))
    assert done.progress.percent == 100


# ---------------------------------------------------------------- capabilities


def _runner(**kw: Any) -> RunnerInfo:
    return RunnerInfo(**{"executors": ["process"], "hostname": "build-01", **kw})


def test_matching_rules() -> None:
    r = _runner(tags=["gpu"], project_dirs=["/srv/app"], capabilities={"zone": "eu"})
    assert unmet(r, "process", Demands(tags=["gpu"], hostname="BUILD-01")) == []
    assert unmet(r, "process", Demands(project_dir="/srv/app/sub")) == []
    assert unmet(r, "process", Demands(project_dir="/srv/application")) == [
        "project_dir=/srv/application"
    ]
    assert unmet(r, "docker", Demands(values={"zone": "us"}, hostname="other")) == [
        "executor docker",
        "hostname=other",
        "zone=us",
    ]
    assert describe("process", Demands(tags=["b", "a"])) == "executor process, tags a,b"


def test_a_demand_no_live_runner_meets_is_warned() -> None:
    live = LiveRunners(lambda: [_runner()])
    assert live.warnings("process", Demands(hostname="build-01")) == []
    (warning,) = live.warnings("process", Demands(hostname="elsewhere"))
    assert "hostname=elsewhere" in warning and "lacks hostname=elsewhere" in warning
    (none,) = LiveRunners(list).warnings("docker", Demands())
    assert "none is live" in none


def test_a_host_demand_routes_to_that_hosts_queue() -> None:
    spec = SPEC.validate_python(_proc(demands={"hostname": "Build-01", "tags": ["gpu"]}))
    assert route(spec) == "lb.process.gpu@build-01"
    queues = worker_queues(["process"], ["gpu"], "build-01")
    assert route(spec) in queues and queue_name("process") in queues
    assert route(spec) not in worker_queues(["process"], ["gpu"], "build-02")


@pytest.mark.parametrize(
    ("demands", "field"),
    [
        ({"hostname": "two words"}, "demands.hostname"),
        ({"hostname": "-leading-dash"}, "demands.hostname"),
        ({"project_dir": "not/absolute"}, "demands.project_dir"),
        ({"project_dir": "/a/../b"}, "demands.project_dir"),
        ({"values": {"sp ace": "x"}}, "demands.values"),
    ],
)
def test_a_demand_no_runner_could_declare_is_refused(demands: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        SPEC.validate_python(_proc(demands=demands))
    assert problems_of(err.value.errors())[0]["field"] == field


# ---------------------------------------------------------------- defects refused at submit


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, "hostNetwork"),
        (
            {
                "spec": {
                    "template": {
                        "spec": {
                            "initContainers": [
                                {"name": "x", "securityContext": {"privileged": True}}
                            ]
                        }
                    }
                }
            },
            "privileged",
        ),
        ({"apiVersion": "apps/v1", "kind": "Deployment"}, "batch/v1 Job"),
        (
            {
                "spec": {
                    "template": {"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}}
                }
            },
            "hostPath",
        ),
    ],
)
def test_an_unsafe_kubernetes_template_is_refused_at_submit(
    template: dict[str, Any], why: str
) -> None:
    body = {"executor": "kubernetes", "image": "busybox", "command": ["true"], "template": template}
    with pytest.raises(ValidationError) as err:
        SPEC.validate_python(body)
    (problem,) = problems_of(err.value.errors())
    assert problem["field"] == "template" and why in problem["message"]


def test_a_missing_executor_says_so() -> None:
    with pytest.raises(ValidationError) as err:
        SPEC.validate_python({"command": ["true"]})
    assert problems_of(err.value.errors()) == [
        {"field": "executor", "message": "required: one of builtin, process, docker, kubernetes"}
    ]


def test_the_default_match_timeout_is_300_s(core: MemoryCore) -> None:
    assert Settings().default_match_timeout_s == 300
    job = core.dispatcher.submit(_proc())
    assert job.match_deadline is not None
    assert (job.match_deadline - job.created_at).total_seconds() == 300


def test_session_ref_refuses_resume_and_fork_together() -> None:
    with pytest.raises((ValidationError, ParamError)):
        SPEC.validate_python(
            _proc(session={"resume": "x", "parent_session_id": "ses_0123456789ab"})
        )


def test_a_session_is_pinned_to_the_host_of_its_first_run(core: MemoryCore) -> None:
    core.runners.heartbeat(RunnerInfo(id=A, hostname="agent-host-1", executors=["process"]))
    first = core.dispatcher.submit(_proc(session={"name": "pinned"}))
    core.lifecycle.claim(first.id, A)
    core.lifecycle.start(first.id, A, 1)
    sid = first.session_id
    assert sid is not None
    assert core.dispatcher.sessions.get(sid).hostname == "agent-host-1"
    again = core.dispatcher.submit(_proc(session={"resume": sid}))
    assert again.spec.demands.hostname == "agent-host-1"
    fork = core.dispatcher.submit(_proc(session={"parent_session_id": sid}))
    assert fork.spec.demands.hostname == "agent-host-1"  # the copy is made where the parent is
    own = core.dispatcher.submit(_proc(session={"resume": sid}, demands={"hostname": "other"}))
    assert own.spec.demands.hostname == "other"
