"""The pure job model: spec validation, parameter schemas, the transition table."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import ParamError
from orchestrator.job import (
    TERMINAL_STATUSES,
    TRANSITIONS,
    BuiltinSpec,
    JobSpec,
    JobStatus,
    ProcessSpec,
    can_transition,
    sources_of,
)
from orchestrator.jobtypes import JOB_TYPES, validate_params

SPEC = TypeAdapter(JobSpec)


def test_terminal_statuses_have_no_way_out() -> None:
    for s in TERMINAL_STATUSES:
        assert TRANSITIONS[s] == frozenset()


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        ("queued", "claimed", True),
        ("queued", "cancelled", True),
        ("queued", "failed", True),
        ("queued", "running", False),
        ("queued", "succeeded", False),
        ("claimed", "running", True),
        ("claimed", "queued", True),
        ("claimed", "succeeded", False),
        ("running", "succeeded", True),
        ("running", "timed_out", True),
        ("running", "queued", True),
        ("running", "claimed", False),
        ("succeeded", "cancelled", False),
        ("cancelled", "running", False),
    ],
)
def test_transition_table(src: str, dst: str, ok: bool) -> None:
    assert can_transition(JobStatus(src), JobStatus(dst)) is ok


def test_sources_of_matches_table() -> None:
    assert sources_of(JobStatus.claimed) == {JobStatus.queued}
    assert sources_of(JobStatus.succeeded) == {JobStatus.running}
    assert sources_of(JobStatus.cancelled) == {
        JobStatus.queued,
        JobStatus.claimed,
        JobStatus.running,
    }


def test_builtin_defaults_are_filled() -> None:
    spec = SPEC.validate_python({"executor": "builtin", "type": "primes"})
    assert isinstance(spec, BuiltinSpec)
    assert spec.params == {"limit": 1000}


@pytest.mark.parametrize(
    ("type_", "params", "field"),
    [
        ("countdown", {"seconds": 0}, "params.seconds"),
        ("countdown", {"seconds": 61}, "params.seconds"),
        ("countdown", {"seconds": "ten"}, "params.seconds"),
        ("countdown", {"seconds": True}, "params.seconds"),
        ("primes", {"limit": 99}, "params.limit"),
        ("fibonacci", {"count": 1001}, "params.count"),
        ("echo_delay", {"delay": 31}, "params.delay"),
        ("url_fetch", {"urls": ["http://a"] * 11}, "params.urls"),
        ("url_fetch", {"urls": ["ftp://x"]}, "params.urls"),
        ("url_fetch", {}, "params.urls"),
        ("countdown", {"bogus": 1}, "params.bogus"),
    ],
)
def test_bad_params_name_the_field(type_: str, params: dict, field: str) -> None:
    with pytest.raises(ParamError) as info:
        validate_params(type_, params)
    assert info.value.field == field


def test_numeric_strings_are_coerced() -> None:
    assert validate_params("countdown", {"seconds": "5"}) == {"seconds": 5}


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        SPEC.validate_python({"executor": "builtin", "type": "nope"})
    assert "unknown job type" in str(info.value)


def test_every_job_type_has_a_schema() -> None:
    assert set(JOB_TYPES) == {"countdown", "primes", "fibonacci", "url_fetch", "echo_delay"}
    for jt in JOB_TYPES.values():
        d = jt.to_dict()
        assert d["params"], jt.name
        for p in d["params"]:
            assert {"name", "type", "description"} <= set(p)


def test_specs_are_strict() -> None:
    with pytest.raises(ValidationError):
        SPEC.validate_python({"executor": "builtin", "type": "countdown", "surprise": 1})
    with pytest.raises(ValidationError):
        SPEC.validate_python({"executor": "teleport"})


def test_process_needs_exactly_one_of_command_or_steps() -> None:
    with pytest.raises(ValidationError):
        SPEC.validate_python({"executor": "process"})
    with pytest.raises(ValidationError):
        SPEC.validate_python(
            {
                "executor": "process",
                "command": ["true"],
                "steps": [{"name": "a", "command": ["true"]}],
            }
        )
    spec = SPEC.validate_python({"executor": "process", "command": ["true"]})
    assert isinstance(spec, ProcessSpec)
    assert spec.command == ["true"]


def test_command_must_be_an_argv_list() -> None:
    with pytest.raises(ValidationError):
        SPEC.validate_python({"executor": "process", "command": "rm -rf /"})
