"""Building a JobSpec dict from ``launchbay run`` arguments or a YAML/JSON file.

Everything here is local and pure (no HTTP); bad input raises :class:`SpecInputError`, which
the command turns into one line on stderr and exit code 2. The server validates the rest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.job import SPEC_MODELS


class SpecInputError(ValueError):
    """Input the CLI refuses before asking the server."""


@dataclass
class RunOptions:
    """The common ``launchbay run`` options that apply to every kind of job."""

    env: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    cpu: float | None = None
    memory: str | None = None
    timeout: str | None = None
    name: str | None = None


def split_pairs(items: Sequence[str], what: str, *, from_env: bool = False) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``; ``KEY`` alone reads the local env
    when ``from_env`` (like ``docker run -e KEY``)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            if from_env and key and key in os.environ:
                out[key] = os.environ[key]
                continue
            hint = " (or a variable set here)" if from_env else ""
            raise SpecInputError(f"bad {what} {item!r}: expected KEY=VALUE{hint}")
        if not key:
            raise SpecInputError(f"bad {what} {item!r}: the key is empty")
        out[key] = value
    return out


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Built-in params from ``key=value`` words.

    Values stay strings (the server coerces numbers), except a JSON array/object and a key
    given several times (a list).
    """
    out: dict[str, Any] = {}
    for key, value in _pairs_in_order(items):
        decoded: Any = value
        if value and value[0] in "[{":
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
        if key in out:
            prev = out[key]
            out[key] = [*(prev if isinstance(prev, list) else [prev]), decoded]
        else:
            out[key] = decoded
    return out


def fit_to_schema(params: dict[str, Any], schema: Mapping[str, str]) -> dict[str, Any]:
    """A single value for an ``array`` parameter becomes a one-item list."""
    out = dict(params)
    for key, kind in schema.items():
        if kind == "array" and isinstance(out.get(key), str):
            out[key] = [out[key]]
    return out


def _pairs_in_order(items: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecInputError(f"bad parameter {item!r}: expected key=value")
        pairs.append((key.strip(), value))
    return pairs


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_MIB = {"": 1, "b": 1 / (1 << 20), "k": 1 / 1024, "m": 1, "g": 1024, "t": 1 << 20}


def parse_memory(text: str) -> int:
    """``512``, ``512m``, ``512Mi``, ``1g``, ``1.5GiB`` -> MiB (a bare number is MiB)."""
    m = _MEMORY.match(text)
    if not m:
        raise SpecInputError(f"bad --memory {text!r}: use MiB or a size like 512m, 2g")
    unit = (m.group(2) or "").lower()[:1]
    mib = float(m.group(1)) * _MIB[unit]
    if mib < 1:
        raise SpecInputError(f"bad --memory {text!r}: less than 1 MiB")
    return int(round(mib))


def parse_timeout(text: str) -> float:
    """``90`` (seconds), ``90s``, ``5m``, ``2h`` -> seconds."""
    try:
        seconds = float(text)
    except ValueError:
        from orchestrator.retention import parse_duration  # (brings SQLAlchemy; see _jobs.py)

        try:
            seconds = parse_duration(text)
        except ValueError:
            raise SpecInputError(f"bad --timeout {text!r}: use seconds or 30s, 5m, 2h") from None
    if seconds <= 0:
        raise SpecInputError(f"bad --timeout {text!r}: must be more than 0")
    return seconds


def load_spec_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON job spec (``-`` reads stdin); must be one mapping."""
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecInputError(f"spec file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecInputError(f"cannot read spec file {path}: {exc}") from None
    try:
        data = json.loads(text) if path.lower().endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecInputError(
            f"spec file {path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise SpecInputError(f"spec file {path} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise SpecInputError(
            f"spec file {path} must hold one mapping (a job spec), not {type(data).__name__}"
        )
    if "executor" not in data:
        raise SpecInputError(
            f"spec file {path} has no 'executor' (one of builtin, process, docker, kubernetes)"
        )
    return data


MAX_BATCH = 500  # (POST /jobs/batch takes at most this many)


def load_batch_file(path: str) -> list[dict[str, Any]]:
    """Read job specs for one batch (``-`` reads stdin): a JSON or YAML list of specs, a
    mapping ``{"jobs": [...]}``, or JSON Lines (one spec per line)."""
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecInputError(f"batch file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecInputError(f"cannot read batch file {path}: {exc}") from None
    data = _batch_data(text, path)
    if isinstance(data, dict) and "jobs" in data:
        data = data["jobs"]
    if not isinstance(data, list):
        raise SpecInputError(
            f"batch file {path} must hold a list of job specs (or {{'jobs': [...]}}), "
            f"not {type(data).__name__}"
        )
    if not data:
        raise SpecInputError(f"batch file {path} holds no job specs")
    if len(data) > MAX_BATCH:
        raise SpecInputError(
            f"batch file {path} holds {len(data)} job specs; a batch takes at most {MAX_BATCH}"
        )
    for i, spec in enumerate(data):
        if not isinstance(spec, dict):
            raise SpecInputError(
                f"batch file {path}: jobs[{i}] is a {type(spec).__name__}, not a job spec"
            )
    return data


def _batch_data(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as first:
        lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
        if len(lines) > 1 and lines[0][1].lstrip().startswith("{"):  # JSON Lines
            out = []
            for n, line in lines:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SpecInputError(
                        f"batch file {path}: line {n} is not JSON: {exc.msg} at column {exc.colno}"
                    ) from None
            return out
        if path.lower().endswith(".json"):
            raise SpecInputError(
                f"batch file {path} is not valid JSON: {first.msg} at line {first.lineno} "
                f"column {first.colno}"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise SpecInputError(f"batch file {path} is not valid YAML: {problem}{where}") from None


def build_spec(
    args: Sequence[str],
    *,
    process: bool = False,
    builtin: str | None = None,
    kubernetes: bool = False,
    spec_file: str | None = None,
    options: RunOptions | None = None,
) -> dict[str, Any]:
    """The JobSpec dict for one ``launchbay run`` invocation."""
    opts = options or RunOptions()
    chosen = [
        n
        for n, on in (
            ("--process", process),
            ("--builtin", builtin is not None),
            ("--kubernetes", kubernetes),
            ("--spec", spec_file is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise SpecInputError(f"choose one of {', '.join(chosen)}")
    args = list(args)
    spec: dict[str, Any]
    if spec_file is not None:
        if args:
            raise SpecInputError(f"--spec takes no other arguments (got {' '.join(args)!r})")
        spec = load_spec_file(spec_file)
    elif builtin is not None:
        spec = {"executor": "builtin", "type": builtin, "params": parse_params(args)}
    elif process:
        if not args:
            raise SpecInputError("--process needs a command: launchbay run --process -- CMD...")
        spec = {"executor": "process", "command": args}
    else:
        if len(args) < 2:
            raise SpecInputError(
                "give an image and a command: launchbay run IMAGE -- CMD... "
                "(or --process, --builtin TYPE, --spec FILE)"
            )
        image, command = args[0], args[1:]
        if kubernetes:
            spec = {"executor": "kubernetes", "image": image, "command": command}
        else:
            spec = {
                "executor": "docker",
                "image": image,
                "steps": [{"name": "main", "command": command}],
            }
    _apply(spec, opts)
    return spec


def _apply(spec: dict[str, Any], opts: RunOptions) -> None:
    """Layer the command-line options over the spec (a file's values are the base)."""
    if opts.name is not None:
        spec["name"] = opts.name
    if opts.env:
        spec["env"] = {
            **_mapping(spec.get("env"), "env"),
            **split_pairs(opts.env, "-e", from_env=True),
        }
    if opts.labels:
        spec["labels"] = {
            **_mapping(spec.get("labels"), "labels"),
            **split_pairs(opts.labels, "--label"),
        }
    if opts.artifacts:
        spec["artifacts"] = [*_sequence(spec.get("artifacts"), "artifacts"), *opts.artifacts]
    if opts.tags:
        demands = _mapping(spec.get("demands"), "demands")
        tags = [*_sequence(demands.get("tags"), "demands.tags")]
        tags += [t for t in opts.tags if t not in tags]
        spec["demands"] = {**demands, "tags": tags}
    if opts.timeout is not None:
        spec["timeout_s"] = parse_timeout(opts.timeout)
    if opts.cpu is not None or opts.memory is not None:
        limited = [e for e, model in SPEC_MODELS.items() if "resources" in model.model_fields]
        if spec.get("executor") not in limited:
            raise SpecInputError(f"--cpu and --memory apply to {' and '.join(limited)} jobs only")
        resources = _mapping(spec.get("resources"), "resources")
        if opts.cpu is not None:
            if opts.cpu <= 0:
                raise SpecInputError(f"bad --cpu {opts.cpu:g}: must be more than 0")
            resources["cpu"] = opts.cpu
        if opts.memory is not None:
            resources["memory_mb"] = parse_memory(opts.memory)
        spec["resources"] = resources


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecInputError(f"the spec's {what} must be a mapping")
    return dict(value)


def _sequence(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpecInputError(f"the spec's {what} must be a list")
    return list(value)
