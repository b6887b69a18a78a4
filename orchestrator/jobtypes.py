"""Parameter schemas of the built-in job types (pure: the implementations live on workers).

The API validates ``builtin`` jobs against these schemas and publishes them at
``GET /api/v1/job-types`` so the dashboard can build a form from them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from orchestrator.errors import ParamError

ParamType = Literal["integer", "number", "string", "array"]

URL_FETCH_MAX_BYTES = 10 << 20  # url_fetch reads at most this much of each body by default
URL_FETCH_MAX_BYTES_LIMIT = 100 << 20


@dataclass(frozen=True)
class Param:
    name: str
    type: ParamType
    description: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    required: bool = False
    max_items: int | None = None
    items: str | None = None  # item type for arrays
    max_length: int | None = None  # characters of a string, or of each item of an array


@dataclass(frozen=True)
class JobType:
    name: str
    title: str
    description: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["params"] = [{k: v for k, v in asdict(p).items() if v is not None} for p in self.params]
        return d


JOB_TYPES: dict[str, JobType] = {
    t.name: t
    for t in (
        JobType(
            "countdown",
            "Countdown",
            "Count down from N seconds, reporting progress every second.",
            (Param("seconds", "integer", "Seconds to count down", 10, 1, 60),),
        ),
        JobType(
            "primes",
            "Prime calculator",
            "Find every prime up to a limit with the sieve of Eratosthenes.",
            (Param("limit", "integer", "Upper bound (inclusive)", 1000, 100, 100000),),
        ),
        JobType(
            "fibonacci",
            "Fibonacci",
            "Generate the first N Fibonacci numbers.",
            (Param("count", "integer", "How many numbers", 50, 1, 1000),),
        ),
        JobType(
            "url_fetch",
            "URL fetcher",
            "Fetch up to 10 URLs concurrently; each URL's status, size and duration.",
            (
                Param(
                    "urls",
                    "array",
                    "URLs to fetch (http or https)",
                    None,
                    required=True,
                    max_items=10,
                    items="string",
                    max_length=2048,
                ),
                Param("timeout", "number", "Per-URL timeout in seconds", 10, 1, 60),
                Param(
                    "max_bytes",
                    "integer",
                    "Bytes read per URL; a longer body fails that URL",
                    URL_FETCH_MAX_BYTES,
                    1,
                    URL_FETCH_MAX_BYTES_LIMIT,
                ),
            ),
        ),
        JobType(
            "echo_delay",
            "Echo with delay",
            "Wait for a delay, then return the message.",
            (
                Param("message", "string", "Message to echo", "hello", max_length=10000),
                Param("delay", "integer", "Seconds to wait", 3, 1, 30),
            ),
        ),
    )
}


def _coerce(p: Param, value: Any) -> Any:
    where = f"params.{p.name}"
    if p.type in ("integer", "number"):
        if isinstance(value, bool):
            raise ParamError(where, f"{p.name} must be a {p.type}")
        if isinstance(value, str):
            try:
                value = float(value) if p.type == "number" else int(value)
            except ValueError:
                raise ParamError(where, f"{p.name} must be a {p.type}") from None
        if p.type == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if p.type == "integer" and not isinstance(value, int):
            raise ParamError(where, f"{p.name} must be an integer")
        if not isinstance(value, int | float):
            raise ParamError(where, f"{p.name} must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(where, f"{p.name} must be a finite number")
        if p.min is not None and value < p.min:
            raise ParamError(where, f"{p.name} must be >= {p.min:g} (got {value})")
        if p.max is not None and value > p.max:
            raise ParamError(where, f"{p.name} must be <= {p.max:g} (got {value})")
        return value
    if p.type == "string":
        if not isinstance(value, str):
            raise ParamError(where, f"{p.name} must be a string")
        if p.max_length is not None and len(value) > p.max_length:
            raise ParamError(where, f"{p.name} takes at most {p.max_length} characters")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamError(where, f"{p.name} must be a list of strings")
    if not value:
        raise ParamError(where, f"{p.name} must not be empty")
    if p.max_items is not None and len(value) > p.max_items:
        raise ParamError(where, f"{p.name} takes at most {p.max_items} items")
    if p.max_length is not None and any(len(v) > p.max_length for v in value):
        raise ParamError(where, f"each of {p.name} takes at most {p.max_length} characters")
    return value


def validate_params(type_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return ``params`` checked against the type's schema, with defaults filled in."""
    jt = JOB_TYPES.get(type_name)
    if jt is None:
        raise ParamError("type", f"unknown job type {type_name!r}; one of {sorted(JOB_TYPES)}")
    known = {p.name for p in jt.params}
    for key in params:
        if key not in known:
            raise ParamError(f"params.{key}", f"{type_name} has no parameter {key!r}")
    out: dict[str, Any] = {}
    for p in jt.params:
        if p.name in params and params[p.name] is not None:
            out[p.name] = _coerce(p, params[p.name])
        elif p.required:
            raise ParamError(f"params.{p.name}", f"{p.name} is required")
        else:
            out[p.name] = p.default
    if type_name == "url_fetch":
        for u in out["urls"]:
            if not u.startswith(("http://", "https://")):
                raise ParamError("params.urls", f"not an http(s) URL: {u!r}")
    return out
