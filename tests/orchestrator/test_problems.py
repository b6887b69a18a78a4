"""One reading of validation errors: fields named as the sender wrote them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestrator.job import JobSpec
from orchestrator.problems import SUMMARY_PROBLEMS, problems_of, summary

_SPEC = TypeAdapter(JobSpec)


def _problems(raw: dict[str, Any], **kw: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        _SPEC.validate_python(raw)
    return problems_of(info.value.errors(), **kw)


def test_the_union_tag_is_left_out_but_a_key_that_looks_like_one_is_not() -> None:
    got = _problems({"executor": "docker", "image": "x", "steps": [], "labels": {"docker": 1}})
    assert {p["field"] for p in got} == {"steps", "labels.docker"}


def test_a_job_type_parameter_is_named_by_its_own_check() -> None:
    got = _problems({"executor": "builtin", "type": "countdown", "params": {"seconds": 0}})
    assert got == [{"field": "params.seconds", "message": "seconds must be >= 1 (got 0)"}]


def test_an_unknown_executor_names_the_executor_field() -> None:
    (got,) = _problems({"executor": "teleport"})
    assert got["field"] == "executor" and "teleport" in got["message"]


def test_under_whole_and_aliases_name_fields_as_a_larger_message_has_them() -> None:
    assert _problems({"executor": "process"}, under="spec", whole="spec")[0]["field"] == "spec"
    cmd = _problems({"executor": "process", "command": []}, under="spec")
    assert cmd[0]["field"] == "spec.command"
    typ = _problems({"executor": "builtin", "type": "nope"}, aliases={"type": "job_type"})
    assert typ[0]["field"] == "job_type"


def test_the_http_source_leads_a_location_and_is_dropped() -> None:
    errors: list[dict[str, Any]] = [
        {"loc": ("query", "limit"), "msg": "bad"},
        {"loc": ("body", "lines", 0), "msg": "x"},
    ]
    assert [p["field"] for p in problems_of(errors)] == ["limit", "lines.0"]
    assert problems_of([{"loc": ("body",), "msg": "Value error, broken"}]) == [
        {"field": "body", "message": "broken"}
    ]


def test_the_summary_shows_the_first_few_and_counts_the_rest() -> None:
    problems = [{"field": f"f{i}", "message": "bad"} for i in range(SUMMARY_PROBLEMS + 2)]
    text = summary(problems)
    assert text.startswith("invalid request: f0: bad; f1: bad")
    assert f"f{SUMMARY_PROBLEMS}" not in text and text.endswith("(and 2 more)")
