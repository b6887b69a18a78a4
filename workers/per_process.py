"""One instance of a class per process: what owns threads (a sender, a watcher starter) or
per-process kernel state (the process-tree tracker) must not be shared with a forked child,
whose copy has none of the parent's threads."""

from __future__ import annotations

import os
import threading
from typing import Any, TypeVar

T = TypeVar("T")

_mine: dict[type, tuple[int, Any]] = {}  # class -> (pid, this process's one instance)
_mine_lock = threading.Lock()


def of_this_process(cls: type[T]) -> T:
    """This process's one ``cls()`` (made on first use; a forked child makes its own)."""
    with _mine_lock:
        made = _mine.get(cls)
        if made is None or made[0] != os.getpid():
            made = _mine[cls] = (os.getpid(), cls())
        return made[1]  # type: ignore[no-any-return]
