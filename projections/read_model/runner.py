"""Running the projections: the view objects, the projector process and its exclusive lock.

Exactly one projector may write a projection at a time. On PostgreSQL a session-level
advisory lock enforces it (a second projector waits for the first to exit or die); on SQLite
an `flock` on a file beside the view does the same for processes on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.projection import BaseProjectionRunner
from eventsourcing.utils import Environment

from ledger.application import Ledger, build_ledger
from ledger.store.backends import SMALL_POOL, connect_postgres, schema_lock
from projections.read_model.live import live_view
from projections.read_model.view import (
    NAME,
    OrdersProjection,
    OrdersView,
    PostgresOrdersView,
    SQLiteOrdersView,
    view_env,
)

__all__ = ["ProjectorLock", "follow", "open_orders_view", "run_orders_projector", "start_orders_projector", "wake"]

log = logging.getLogger("projections.runner")


def _is_postgres(env: dict[str, str]) -> bool:
    return env["PERSISTENCE_MODULE"] == "eventsourcing.postgres"


def open_orders_view(database_url: str, name: str = NAME) -> OrdersView:
    """The view for reading (the API) or writing (the projector); tables created if missing."""
    env = view_env(database_url, name)
    view_class = PostgresOrdersView if _is_postgres(env) else SQLiteOrdersView
    with schema_lock(database_url):
        view = InfrastructureFactory.construct(env=Environment(name, env)).tracking_recorder(view_class)
    assert isinstance(view, OrdersView)
    return view


def projection_runner(
    database_url: str, projection: Any, view: Any, env: dict[str, str]
) -> tuple[BaseProjectionRunner[Ledger], Ledger]:
    """A runner feeding `projection` (which writes to `view`) from the log, and its own loader."""
    loader = build_ledger(database_url, SMALL_POOL)
    projection.ledger = loader
    runner: BaseProjectionRunner[Ledger] = BaseProjectionRunner(
        projection=projection,
        application_class=Ledger,
        tracking_recorder=view,
        topics=projection.topics,
        env=env,
    )
    return runner, loader


def start_orders_projector(
    database_url: str, name: str = NAME
) -> tuple[BaseProjectionRunner[Ledger], OrdersView, Ledger]:
    """Start following the log; returns the runner (a context manager), its view and its loader."""
    view = open_orders_view(database_url, name)
    runner, loader = projection_runner(database_url, OrdersProjection(view), view, view_env(database_url, name))
    return runner, view, loader


class ProjectorLock:
    """Held for as long as this process projects `name`; `acquire` waits for it."""

    def __init__(self, database_url: str, name: str = NAME) -> None:
        self._env = view_env(database_url, name)
        self._name = name
        self._conn: psycopg.Connection[Any] | None = None
        self._file: Any = None

    def acquire(self, stop: threading.Event, poll: float = 1.0) -> bool:
        """Block until the lock is ours (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            if self._try():
                return True
            if not announced:
                log.info("another projector holds %s; waiting", self._name)
                announced = True
            stop.wait(poll)
        return False

    def _try(self) -> bool:
        if _is_postgres(self._env):
            if self._conn is None:
                self._conn = connect_postgres(self._env)
            key = int.from_bytes(hashlib.sha256(f"payledger:{self._name}".encode()).digest()[:8], "big", signed=True)
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            return bool(row and row[0])
        path = Path(self._env.get(f"{self._name.upper()}_SQLITE_DBNAME", self._env["SQLITE_DBNAME"]) + ".lock")
        if self._file is None:
            self._file = path.open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session ends; PostgreSQL releases its advisory locks
            self._conn = None
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _is_live(database_url: str, name: str) -> bool:
    return live_view(database_url, NAME) == name


def follow(
    runner: BaseProjectionRunner[Ledger],
    view: Any,
    loader: Ledger,
    stop: threading.Event,
    poll: float,
    still_current: Callable[[], bool] = lambda: True,
) -> None:
    """Run a projection until `stop` (or until it is no longer current), then close its parts."""
    try:
        with runner:
            while not stop.is_set() and still_current():
                runner.run_forever(timeout=poll)
                if runner.is_interrupted.is_set():
                    break
            runner.stop()
            wake(loader)
    finally:
        loader.close()
        with contextlib.suppress(Exception):
            view.datastore.close()


def wake(ledger: Ledger) -> None:
    """The library's PostgreSQL subscription waits for a NOTIFY without a timeout (upstream
    #305): send one, so a stopping runner is not left waiting for the next payment."""
    recorder = ledger.recorder
    channel = getattr(recorder, "channel_name", None)
    if channel is None:
        return
    from psycopg.sql import SQL, Identifier

    with recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        conn.execute(SQL("NOTIFY {0}").format(Identifier(channel)))


@contextlib.contextmanager
def _held(lock: ProjectorLock) -> Iterator[None]:
    try:
        yield
    finally:
        lock.release()


def run_orders_projector(database_url: str, stop: threading.Event, poll: float = 1.0) -> None:
    """`payledger project`: wait for the lock, follow the log and the live version until `stop`."""
    lock = ProjectorLock(database_url)
    if not lock.acquire(stop, poll):
        return
    with _held(lock):
        while not stop.is_set():
            name = live_view(database_url, NAME)
            runner, view, loader = start_orders_projector(database_url, name)
            log.info("projecting %s from position %d", name, view.position())
            # A rebuild moves the pointer: then follow the new version from its position.
            follow(runner, view, loader, stop, poll, functools.partial(_is_live, database_url, name))
