"""The PostgreSQL application recorder with a faster insert.

The library inserts through an array of a composite type, which psycopg dumps as text:
every byte of each event's JSON state goes through a regex escape (≈80 µs for a 3 KB
notification event, more than the rest of the insert). Here the same rows go in as four
binary arrays. Everything that matters stays the library's: the table lock that makes
notification-id order equal commit order, the NOTIFY, the pipeline, the returned ids, and
the unique (originator_id, originator_version) key that gives optimistic concurrency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

__all__ = ["LedgerPostgresRecorder"]


class LedgerPostgresRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        id_type = "uuid" if datastore.originator_id_type == "uuid" else "text"
        self._insert_arrays_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::{id_type}[], %b::int[], %b::text[], %b::bytea[])"
            " RETURNING notification_id"
        ).format(
            schema=Identifier(datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=SQL(id_type),
        )

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.execute(
            self._insert_arrays_statement,
            (
                [e.originator_id for e in stored_events],
                [e.originator_version for e in stored_events],
                [e.topic for e in stored_events],
                [e.state for e in stored_events],
            ),
            prepare=True,
        )
