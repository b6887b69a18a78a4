"""One reading of a pydantic validation error: the ``{"field", "message"}`` problems that
the HTTP API, the WebSocket feed and the CLI all report the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.errors import ParamError
from orchestrator.job import EXECUTORS

# Where FastAPI found the value; it leads a location and names no field.
_SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
# The JobSpec union puts the chosen member's tag in the location (once: specs do not nest);
# the user never typed it. A later part that looks like one is a key (labels.docker).
_TAGS = frozenset(EXECUTORS)
_BAD_TAG = frozenset({"union_tag_invalid", "union_tag_not_found"})
SUMMARY_PROBLEMS = 5


def field_of(err: Mapping[str, Any]) -> str:
    """The dotted field one pydantic error is about ("" for the value as a whole)."""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        return cause.field  # a job type's schema check names the parameter (params.seconds)
    loc = [str(p) for p in err.get("loc", ())]
    if loc and loc[0] in _SOURCES:
        loc = loc[1:]
    tag = next((i for i, p in enumerate(loc) if p in _TAGS), None)
    if tag is not None:
        del loc[tag]
    if err.get("type") in _BAD_TAG:
        loc.append(str((err.get("ctx") or {}).get("discriminator", "executor")).strip("'"))
    return ".".join(loc)


def problems_of(
    errors: Iterable[Mapping[str, Any]],
    *,
    under: str = "",
    whole: str = "body",
    aliases: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """``[{"field", "message"}]`` for pydantic's ``errors()``. ``under`` prefixes every field
    (the value sat at that key of a larger message), ``whole`` names the value itself, and
    ``aliases`` renames fields the sender called otherwise."""
    out = []
    for err in errors:
        if err.get("type") == "json_invalid":
            # The text is not JSON: its location is a character offset, not a field.
            at = [p for p in err.get("loc", ()) if isinstance(p, int)]
            why = (err.get("ctx") or {}).get("error") or "not JSON"
            where = f" at character {at[0]}" if at else ""
            out.append({"field": under or whole, "message": f"not valid JSON: {why}{where}"})
            continue
        field = field_of(err)
        field = (aliases or {}).get(field, field)
        if under:
            field = f"{under}.{field}" if field else under
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "union_tag_not_found":
            message = f"required: one of {', '.join(EXECUTORS)}"
        elif err.get("type") == "union_tag_invalid":
            got = (err.get("ctx") or {}).get("tag")
            message = f"unknown executor {got!r}: one of {', '.join(EXECUTORS)}"
        out.append({"field": field or whole, "message": message})
    return out


def summary(problems: list[dict[str, str]]) -> str:
    """One line for people: ``invalid request: field: message; ...`` (the first few)."""
    shown = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:SUMMARY_PROBLEMS])
    more = len(problems) - SUMMARY_PROBLEMS
    return f"invalid request: {shown}" + (f" (and {more} more)" if more > 0 else "")
