"""Running the projections: the view objects and the projector process.

Exactly one projector may write a projection at a time (`projections.locks.ProjectorLock`);
it follows the live version of the view, and moves to a new one when a rebuild switches it. A
live version an earlier release made in another table layout is not written: the projector says
so and waits for `payledger rebuild` to switch to a version of the current layout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from eventsourcing.projection import BaseProjectionRunner

from ledger.application import Ledger, build_ledger
from ledger.errors import ReadModelBehind, ReadModelOutdated
from ledger.store.backends import SMALL_POOL
from ledger.store.sql import Database
from ledger.store.views import ViewRecorder, open_view, view_env
from projections.locks import ProjectorLock
from projections.read_model.live import live_view
from projections.read_model.view import (
    LAYOUT_COLUMN,
    ORDERS_VIEW,
    OrdersProjection,
    OrdersView,
    PostgresOrdersView,
    SQLiteOrdersView,
)

__all__ = [
    "catch_up_orders_view",
    "follow",
    "open_orders_view",
    "orders_head",
    "run_orders_projector",
    "start_orders_projector",
    "wake",
]

log = logging.getLogger("projections.runner")


def open_orders_view(database_url: str, name: str = ORDERS_VIEW) -> OrdersView:
    """The view for reading (the API) or writing (the projector); tables created if missing."""
    view = open_view(database_url, name, postgres=PostgresOrdersView, sqlite=SQLiteOrdersView)
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
    database_url: str, name: str = ORDERS_VIEW
) -> tuple[BaseProjectionRunner[Ledger], OrdersView, Ledger]:
    """Start following the log; returns the runner (a context manager), its view and its loader.
    Raises `ReadModelOutdated` for a view of an earlier layout (nothing is started)."""
    view = open_orders_view(database_url, name)
    if view.outdated:
        view.close()
        raise ReadModelOutdated(name)
    runner, loader = projection_runner(database_url, OrdersProjection(view), view, view_env(database_url, name))
    return runner, view, loader


def _is_live(database: Database, name: str) -> bool:
    return live_view(database, ORDERS_VIEW) == name


def follow(
    runner: BaseProjectionRunner[Ledger],
    view: ViewRecorder,
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
            view.close()


def wake(ledger: Ledger) -> None:
    """The library's PostgreSQL subscription waits for a NOTIFY without a timeout (upstream
    #305): send one, so a stopping runner is not left waiting for the next payment."""
    ledger.event_log.wake_subscribers()


@contextlib.contextmanager
def _held(lock: ProjectorLock) -> Iterator[None]:
    try:
        yield
    finally:
        lock.release()


def run_orders_projector(database_url: str, stop: threading.Event, poll: float = 1.0) -> None:
    """`payledger project`: wait for the lock, follow the log and the live version until `stop`."""
    lock = ProjectorLock(database_url, ORDERS_VIEW)
    if not lock.acquire(stop, poll):
        return
    pointer = Database(database_url, pool_size=1)  # asked once per `poll`
    refused: str | None = None  # the outdated version last refused, said once
    with _held(lock), contextlib.closing(pointer):
        while not stop.is_set():
            name = live_view(pointer, ORDERS_VIEW)
            try:
                runner, view, loader = start_orders_projector(database_url, name)
            except ReadModelOutdated:
                if refused != name:
                    refused = name
                    log.error(
                        "not projecting: the live orders view %s has the table layout of an earlier version"
                        " (no %s column); run `payledger rebuild` to build one of the current layout,"
                        " which this projector then follows",
                        name,
                        LAYOUT_COLUMN,
                    )
                stop.wait(poll)
                continue
            log.info("projecting %s from position %d", name, view.position())
            # A rebuild moves the pointer: then follow the new version from its position.
            follow(runner, view, loader, stop, poll, functools.partial(_is_live, pointer, name))


def orders_head(ledger: Ledger) -> int:
    """The notification id of the log's newest order event: what the orders view must reach.

    Not `max_notification_id()`: the log also holds events the view never tracks (bills, the
    notification inbox), and its position never passes the last order event it processed."""
    return ledger.event_log.last_id(OrdersProjection.topics)


def catch_up_orders_view(
    database_url: str, timeout: float = 60.0, *, ledger: Ledger | None = None, poll: float = 0.05
) -> int:
    """Make sure the live orders view has processed every order event in the log as of this
    call, and return its position (at least that event's notification id).

    Already there: nothing is done. Else if no projector holds the view (`ProjectorLock`), this
    process projects up to the head itself and lets the lock go; if one does, its progress is
    watched (and taken over, should it let go of the lock first). Raises `ReadModelBehind` (a
    `TimeoutError`) when the view is still behind after `timeout` seconds. `ledger` reads the
    log's head (the process's own); without one, one is opened for the call. Raises
    `ReadModelOutdated` when the live version has the layout of an earlier release."""
    deadline = time.monotonic() + timeout
    owned = ledger is None
    log_reader = build_ledger(database_url, SMALL_POOL) if ledger is None else ledger
    try:
        head = orders_head(log_reader)
    finally:
        if owned:
            log_reader.close()
    lock = ProjectorLock(database_url, ORDERS_VIEW)
    pointer = Database(database_url, pool_size=1)
    try:
        while True:
            name = live_view(pointer, ORDERS_VIEW)
            position = _reach(database_url, name, head, lock, deadline, poll, timeout)
            if live_view(pointer, ORDERS_VIEW) == name:
                return position
            # A rebuild switched versions meanwhile: make sure of the new one too.
    finally:
        lock.release()
        pointer.close()


def _reach(
    database_url: str, name: str, head: int, lock: ProjectorLock, deadline: float, poll: float, timeout: float
) -> int:
    """View `name` at `head` or beyond: already, by projecting it ourselves, or by waiting for
    the projector that holds `lock`; its position then."""
    view = open_orders_view(database_url, name)
    try:
        if view.outdated:
            raise ReadModelOutdated(name)
        while (position := view.position()) < head:
            if lock.try_acquire():
                try:
                    return _project_to(database_url, name, head, deadline, timeout)
                finally:
                    lock.release()
            if time.monotonic() >= deadline:
                raise ReadModelBehind(name, position, head, timeout)
            time.sleep(poll)
        return position
    finally:
        view.close()


def _project_to(database_url: str, name: str, head: int, deadline: float, timeout: float) -> int:
    """Run the projection of view `name` (our lock held) until it has processed `head`."""
    runner, view, loader = start_orders_projector(database_url, name)
    try:
        with runner:
            try:
                runner.wait(head, timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ReadModelBehind(name, view.position(), head, timeout) from None
            finally:
                runner.stop()
                wake(loader)
        return view.position()
    finally:
        loader.close()
        with contextlib.suppress(Exception):
            view.close()
