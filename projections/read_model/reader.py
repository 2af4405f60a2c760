"""The read side of a view: the version a rebuild made live, followed while serving.

`payledger rebuild` builds a new version beside the live one and switches the pointer
(`projections.read_model.live`); a reader re-checks the pointer at most once a second and
moves to the new version, closing the old one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ledger.store.sql import Database
from ledger.store.views import ViewRecorder
from projections.read_model.live import live_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDERS_VIEW, OrdersView

__all__ = ["LiveOrdersView", "LiveView"]

V = TypeVar("V", bound=ViewRecorder)


class LiveView(Generic[V]):
    """The live version of `projection`'s view (`open_version(url, name)` opens one), re-checked at most
    once a second (a rebuild may switch it)."""

    def __init__(
        self, database: Database, projection: str, open_version: Callable[[str, str], V], interval: float = 1.0
    ) -> None:
        self._database = database  # the live pointer is read through it, once a second at most
        self._url = database.url
        self._projection = projection
        self._open = open_version
        self._interval = interval
        self._lock = threading.Lock()
        self._name = live_view(database, projection)
        self._view = open_version(self._url, self._name)
        self._checked = time.monotonic()

    def current(self) -> V:
        with self._lock:
            if time.monotonic() - self._checked >= self._interval:
                self._checked = time.monotonic()
                name = live_view(self._database, self._projection)
                if name != self._name:
                    old, self._view, self._name = self._view, self._open(self._url, name), name
                    old.close()
            return self._view

    def close(self) -> None:
        self._view.close()


class LiveOrdersView(LiveView[OrdersView]):
    """The live version of the orders view."""

    def __init__(self, database: Database, interval: float = 1.0) -> None:
        super().__init__(database, ORDERS_VIEW, open_orders_view, interval)
