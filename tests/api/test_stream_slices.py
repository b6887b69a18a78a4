"""How a stream's batch is cut into writes (api/routes/streams.py): each write holds at
most ``_SLICE`` items and about ``_SLICE_CHARS`` of log text, so a client whose socket
stalls can have at most one such chunk waiting in the server beyond the transport's
high-water mark; the items go out whole, once each, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from api.follower import Cursor
from api.routes.streams import _SLICE, _SLICE_CHARS, _sliced

Item = tuple[str, dict[str, Any], Cursor]


def _line(seq: int, size: int) -> Item:
    return ("log", {"seq": seq, "line": "x" * size}, Cursor("0-0", seq))


def _event(n: int) -> Item:
    return ("event", {"id": f"{n}-0", "type": "progress"}, Cursor(f"{n}-0", 0))


def _parts(batch: list[Item]) -> list[list[Item]]:
    sliced = _sliced(batch)
    if sliced is None:
        return [batch]

    async def take() -> list[list[Item]]:
        return [part async for part in sliced]

    return asyncio.run(take())


def _chars(part: list[Item]) -> int:
    return sum(len(p["line"]) for kind, p, _ in part if kind == "log")


def test_a_small_batch_is_one_write_without_a_generator() -> None:
    assert _sliced([_line(1, 100), _event(1), _line(2, 100)]) is None
    assert _sliced([_line(1, 16 << 20)]) is None  # (one item: nothing to cut)


def test_long_lines_are_cut_by_their_text() -> None:
    batch = [_line(n, 100_000) for n in range(1, 11)]  # 1 MB in 10 lines
    parts = _parts(batch)
    assert [item for part in parts for item in part] == batch
    assert len(parts) > 1
    for part in parts:  # (a write is cut once it holds the bound: one line past it at most)
        assert _chars(part[:-1]) < _SLICE_CHARS, [len(p) for p in parts]


def test_many_short_items_are_cut_by_their_count() -> None:
    batch: list[Item] = []
    for n in range(1, 601):
        batch += [_line(n, 10), _event(n)]
    parts = _parts(batch)
    assert [item for part in parts for item in part] == batch
    assert [len(p) for p in parts] == [_SLICE] * 4 + [1200 - 4 * _SLICE]
