"""The SQLite application recorder with a subscription, so projections can follow it.

The library implements `subscribe()` for PostgreSQL (LISTEN/NOTIFY) only. Here the same
pulling subscription is woken by a ticker instead of a NOTIFY: new events are seen within
`POLL_INTERVAL` seconds, read in pages, in notification-id order.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import ListenNotifySubscription
from eventsourcing.sqlite import SQLiteApplicationRecorder

__all__ = ["POLL_INTERVAL", "LedgerSQLiteRecorder", "PollingSubscription"]

POLL_INTERVAL = 0.2


class PollingSubscription(ListenNotifySubscription[SQLiteApplicationRecorder]):
    def __init__(self, recorder: SQLiteApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="sqlite-poll", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stopped.wait(POLL_INTERVAL):
            self._has_been_notified.set()

    def stop(self) -> None:
        self._stopped.set()
        super().stop()


class LedgerSQLiteRecorder(SQLiteApplicationRecorder):
    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Any:
        return PollingSubscription(self, gt=gt, topics=topics)
