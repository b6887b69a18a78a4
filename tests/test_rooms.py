"""The rooms of DESIGN.md import only what they may; this keeps the layering honest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("orchestrator", "workers", "api", "tasks")
ALLOWED = {
    "orchestrator": set(),
    "workers": {"orchestrator"},
    "api": {"orchestrator"},
    "tasks": {"orchestrator", "workers"},
}


def _imported_rooms(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in ROOMS}
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_room_imports_only_what_it_may(room: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(bad)
        for p in sorted((ROOT / room).rglob("*.py"))
        if (bad := _imported_rooms(p) - ALLOWED[room] - {room})
    }
    assert offenders == {}, f"{room}/ may import only {sorted(ALLOWED[room])}: {offenders}"
