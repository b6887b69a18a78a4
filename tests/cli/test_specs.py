"""Building job specs from ``launchbay run`` words (pure), and the examples/ files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from orchestrator.cli._specs import (
    RunOptions,
    SpecInputError,
    build_spec,
    fit_to_schema,
    load_spec_file,
    parse_memory,
    parse_params,
    parse_timeout,
)
from orchestrator.job import JobSpec
from tests.cli.conftest import EXAMPLES

SPEC: TypeAdapter[Any] = TypeAdapter(JobSpec)


def test_every_executor_has_a_yaml_and_a_json_example() -> None:
    names = {p.name for p in EXAMPLES.iterdir()}
    for kind in ("builtin", "process", "docker", "kubernetes"):
        assert {f"{kind}.yaml", f"{kind}.json"} <= names


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.*")), ids=lambda p: p.name)
def test_examples_are_valid_job_specs(path: Path) -> None:
    data = load_spec_file(str(path))
    spec = SPEC.validate_python(data)
    assert spec.executor == path.stem


@pytest.mark.parametrize(
    "text,mib",
    [("512", 512), ("512m", 512), ("512Mi", 512), ("1g", 1024), ("1.5GiB", 1536), ("2048k", 2)],
)
def test_parse_memory(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "-1", "1x", "10b"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(SpecInputError):
        parse_memory(text)


@pytest.mark.parametrize("text,seconds", [("90", 90), ("1.5", 1.5), ("30s", 30), ("5m", 300)])
def test_parse_timeout(text: str, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["0", "-3", "soon", "5 minutes"])
def test_parse_timeout_refuses(text: str) -> None:
    with pytest.raises(SpecInputError):
        parse_timeout(text)


def test_params_stay_strings_except_json_and_repeats() -> None:
    got = parse_params(["seconds=3", "msg=a=b", "urls=x", "urls=y", 'obj={"k": 1}', "e="])
    assert got == {"seconds": "3", "msg": "a=b", "urls": ["x", "y"], "obj": {"k": 1}, "e": ""}
    assert fit_to_schema({"urls": "x", "n": "1"}, {"urls": "array", "n": "integer"}) == {
        "urls": ["x"],
        "n": "1",
    }


def test_docker_kubernetes_process_and_builtin_shapes() -> None:
    assert build_spec(["img", "sh", "-c", "x"]) == {
        "executor": "docker",
        "image": "img",
        "steps": [{"name": "main", "command": ["sh", "-c", "x"]}],
    }
    assert build_spec(["img", "echo"], kubernetes=True) == {
        "executor": "kubernetes",
        "image": "img",
        "command": ["echo"],
    }
    assert build_spec(["echo", "hi"], process=True) == {
        "executor": "process",
        "command": ["echo", "hi"],
    }
    assert build_spec(["seconds=2"], builtin="countdown") == {
        "executor": "builtin",
        "type": "countdown",
        "params": {"seconds": "2"},
    }


def test_options_layer_over_a_spec_file(tmp_path: Path) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(
        "executor: docker\nimage: i\nsteps: [{name: a, command: [x]}]\n"
        "env: {A: '1'}\nartifacts: [a.txt]\ndemands: {tags: [gpu]}\n"
        "resources: {cpu: 2}\n"
    )
    spec = build_spec(
        [],
        spec_file=str(f),
        options=RunOptions(
            env=["B=2"],
            artifacts=["b.txt"],
            tags=["gpu", "big"],
            memory="1g",
            timeout="1m",
            name="n",
        ),
    )
    assert spec["env"] == {"A": "1", "B": "2"}
    assert spec["artifacts"] == ["a.txt", "b.txt"]
    assert spec["demands"] == {"tags": ["gpu", "big"]}
    assert spec["resources"] == {"cpu": 2, "memory_mb": 1024}
    assert spec["timeout_s"] == 60 and spec["name"] == "n"
    SPEC.validate_python(spec)


def test_env_key_alone_reads_the_local_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LB_CLI_TEST_VAR", "from-here")
    spec = build_spec(["true"], process=True, options=RunOptions(env=["LB_CLI_TEST_VAR"]))
    assert spec["env"] == {"LB_CLI_TEST_VAR": "from-here"}
    monkeypatch.delenv("LB_CLI_TEST_VAR")
    with pytest.raises(SpecInputError, match="KEY=VALUE"):
        build_spec(["true"], process=True, options=RunOptions(env=["LB_CLI_TEST_VAR"]))
