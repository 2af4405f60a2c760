"""What every small projection beside the orders view shares (the unrouted notifications, the
operators' activity): one projector per store under a lock that follows whichever version is live,
and a rebuild that projects the next version from the start of the log, then switches to it.

A projection module gives its view name, a `start(database_url, name)` returning (runner, view,
loader), the log position its view must reach (`head(loader)`) and the tables a crashed rebuild
may have left; its view counts its rows (`count()`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventsourcing.projection import BaseProjectionRunner

from ledger.application import Ledger
from ledger.store.sql import Database
from ledger.store.views import drop_view
from projections.locks import ProjectorLock
from projections.read_model.live import live_view, next_version, set_live_view
from projections.read_model.runner import follow, wake

__all__ = ["Rebuilt", "rebuild_live_view", "run_live_projector"]

log = logging.getLogger("projections.runner")

REBUILD_TIMEOUT = 3600.0  # seconds: the new version reads the whole log once


class _Counted(Protocol):
    def count(self) -> int: ...

    def position(self) -> int: ...

    def close(self) -> None: ...


Start = Callable[[str, str], tuple[BaseProjectionRunner[Ledger], Any, Ledger]]


def _is_live(database: Database, projection: str, name: str) -> bool:
    return live_view(database, projection) == name


def run_live_projector(
    database_url: str, projection: str, start: Start, stop: threading.Event, poll: float = 1.0
) -> None:
    """Part of `payledger project`: wait for the lock, follow the log and the live version until `stop`."""
    lock = ProjectorLock(database_url, projection)
    if not lock.acquire(stop, poll):
        return
    pointer = Database(database_url, pool_size=1)  # asked once per `poll`
    try:
        while not stop.is_set():
            name = live_view(pointer, projection)
            runner, view, loader = start(database_url, name)
            log.info("projecting %s from position %d", name, view.position())
            # A rebuild moves the pointer: then follow the new version from its position.
            follow(runner, view, loader, stop, poll, functools.partial(_is_live, pointer, projection, name))
    finally:
        lock.release()
        pointer.close()


@dataclass(frozen=True)
class Rebuilt:
    old: str
    new: str
    rows: int
    seconds: float


def rebuild_live_view(
    database_url: str,
    projection: str,
    start: Start,
    head: Callable[[Ledger], int],
    tables: Callable[[str], Sequence[str]],
    *,
    timeout: float = REBUILD_TIMEOUT,
) -> Rebuilt:
    """Project the next version of `projection` from the start of the log beside the live one, up to
    `head`, then switch to it (the projector follows the switch)."""
    started = time.perf_counter()
    old = live_view(database_url, projection)
    new = next_version(old)
    drop_view(database_url, new, tuple(tables(new)))  # what a crashed rebuild left
    runner, view, loader = start(database_url, new)
    try:
        with runner:
            runner.wait(head(loader) or None, timeout=timeout)
            runner.stop()
            wake(loader)
        rows = view.count()
    finally:
        loader.close()
        with contextlib.suppress(Exception):
            view.close()
    set_live_view(database_url, projection, new)
    return Rebuilt(old, new, rows, time.perf_counter() - started)
