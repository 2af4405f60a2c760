"""The SQLite application recorder with a subscription, so projections can follow it.

The library implements `subscribe()` for PostgreSQL (LISTEN/NOTIFY) only. Here the same
pulling subscription is woken by a ticker instead of a NOTIFY: new events are seen within
`POLL_INTERVAL` seconds, read in pages, in notification-id order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ListenNotifySubscription
from eventsourcing.sqlite import SQLiteApplicationRecorder

from ledger.store.eventlog import EventLog, Row

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


class LedgerSQLiteRecorder(SQLiteApplicationRecorder, EventLog):
    cuts_heads = False

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Any:
        return PollingSubscription(self, gt=gt, topics=topics)

    def select_streams(self, ids: Sequence[UUID]) -> list[Row]:
        # One file on this machine: a read per stream costs no round trip.
        return [(e.originator_id, e.originator_version, e.topic, e.state) for i in ids for e in self.select_events(i)]

    def select_pages(
        self, stop: int, topics: Sequence[str], *, page: int, heads: tuple[str, int] | None = None
    ) -> Iterator[list[Row]]:
        wanted = list(topics)
        for position in range(0, stop, page):
            found = self.select_notifications(
                position, page, stop=min(position + page, stop), topics=wanted, inclusive_of_start=False
            )
            if found:
                yield [(n.originator_id, n.originator_version, n.topic, n.state) for n in found]

    def _newest(self, topics: Sequence[str], after: int, upto: int) -> int:
        if not topics:
            return 0
        # The library's own table name; one placeholder per topic.
        where = f"topic IN ({', '.join('?' * len(topics))}) AND rowid > ? AND rowid <= ?"
        statement = f"SELECT rowid FROM {self.events_table_name} WHERE {where} ORDER BY rowid DESC LIMIT 1"  # noqa: S608
        with self.datastore.transaction(commit=False) as cur:
            cur.execute(statement, (*topics, after, upto))
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def stream_version(self, stream_id: UUID) -> int | None:
        statement = (
            f"SELECT originator_version FROM {self.events_table_name}"  # noqa: S608 - the library's own table name
            " WHERE originator_id = ? ORDER BY originator_version DESC LIMIT 1"
        )
        with self.datastore.transaction(commit=False) as cur:
            cur.execute(statement, (stream_id.hex,))  # as the library stores it
            row = cur.fetchone()
        return int(row[0]) if row else None

    def wake_subscribers(self) -> None:
        pass  # the polling subscription wakes itself

    def _select_in_range(
        self, template: str, after: int, upto: int, topics: Sequence[str], *extra: Any
    ) -> list[tuple[Any, ...]]:
        where = f"rowid > ? AND rowid <= ? AND topic IN ({', '.join('?' * len(topics))})"
        with self.datastore.transaction(commit=False) as cur:
            cur.execute(
                template.format(events=self.events_table_name, where=where, p="?"), (after, upto, *topics, *extra)
            )
            return list(cur.fetchall())
