"""The PostgreSQL application recorder with a cheaper insert.

The library inserts in a pipelined transaction (SET LOCAL, LOCK TABLE, NOTIFY, INSERT)
through an array of a composite type that psycopg dumps as text: every byte of each event's
JSON state goes through a regex escape (costly for a notification event's few KB), and the
pipeline costs more Python than the database work. Here one server-side function does the
same four things inside the statement's own transaction, and the rows travel as four
binary arrays: one round trip per commit.

What matters is kept exactly: the EXCLUSIVE table lock held until commit (notification-id
order equals commit order, so tailing readers never skip an event), the NOTIFY, the lock
timeout, the returned notification ids, and the unique (originator_id, originator_version)
key that gives optimistic concurrency. Unlike the library's own function option
(`POSTGRES_ENABLE_DB_FUNCTIONS`), the lock is not dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier, Literal

from ledger.store.eventlog import EventLog, Row

__all__ = ["LedgerPostgresRecorder", "uuid_array_literal"]


def _array_literal(elements: Iterable[str]) -> str:
    return "{" + ",".join(elements) + "}"


def _quoted(element: str) -> str:
    """An array literal element, double-quoted (topics hold `:` and `.`, and may hold more)."""
    return '"' + element.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uuid_array_literal(ids: Iterable[UUID]) -> str:
    """`{...}` for a `uuid[]` parameter: cheaper than psycopg's binary list dumper (docs/benchmarks.md)."""
    return "{" + ",".join(map(str, ids)) + "}"


class LedgerPostgresRecorder(PostgresApplicationRecorder, EventLog):
    cuts_heads = True

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        id_type = SQL("uuid" if datastore.originator_id_type == "uuid" else "text")
        function = Identifier(f"{self.events_table_name}_append")
        names = {
            "schema": Identifier(datastore.schema),
            "table": Identifier(self.events_table_name),
            "function": function,
            "id_type": id_type,
            "channel": Identifier(self.channel_name),
            "lock_timeout": SQL(str(int(datastore.lock_timeout))),
        }
        id_array = "uuid[]" if datastore.originator_id_type == "uuid" else "text[]"
        self._text_ids = datastore.originator_id_type != "uuid"
        names["signature"] = Literal(
            f"{datastore.schema}.{self.events_table_name}_append({id_array}, integer[], text[], bytea[])"
        )
        # Every process creates its tables at start. `CREATE OR REPLACE FUNCTION` from two
        # sessions at once fails ("tuple concurrently updated") and can break a concurrent
        # append, so the library's unused function is not created and ours only if missing.
        self.sql_create_statements.pop(self.create_insert_function_statement_index)
        self.sql_create_statements.append(
            SQL(
                "DO $OUTER$ BEGIN"
                " IF to_regprocedure({signature}) IS NULL THEN"
                " CREATE FUNCTION {schema}.{function}"
                "(ids {id_type}[], versions int[], topics text[], states bytea[])"
                " RETURNS SETOF bigint LANGUAGE plpgsql AS $BODY$"
                " BEGIN"
                "  SET LOCAL lock_timeout = '{lock_timeout}s';"
                "  LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE;"
                "  NOTIFY {channel};"
                "  RETURN QUERY INSERT INTO {schema}.{table}"
                "   (originator_id, originator_version, topic, state)"
                "   SELECT * FROM unnest(ids, versions, topics, states)"
                "   RETURNING notification_id;"
                " END; $BODY$;"
                " END IF;"
                " EXCEPTION WHEN duplicate_function THEN NULL;"
                " END $OUTER$"
            ).format(**names)
        )
        # Ids, versions and topics go as array literals (psycopg's binary list dumpers cost more
        # Python than the whole statement); the states, most of the bytes, as a binary array.
        self._append_statement = SQL(
            "SELECT * FROM {schema}.{function}(%s::{id_type}[], %s::int[], %s::text[], %b::bytea[])"
        ).format(**names)
        self._events = Identifier(datastore.schema, self.events_table_name)
        self._stream_version_statement = SQL(
            "SELECT originator_version FROM {schema}.{table} WHERE originator_id = %s"
            " ORDER BY originator_version DESC LIMIT 1"
        ).format(**names)
        self._select_streams_statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table}"
            " WHERE originator_id = ANY(%s::uuid[]) ORDER BY originator_id, originator_version"
        ).format(**names)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if not stored_events:
            return []
        # The pool's connections are in autocommit mode: this one statement is one transaction.
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self._append_statement,
                (
                    _array_literal(
                        _quoted(str(e.originator_id)) if self._text_ids else str(e.originator_id) for e in stored_events
                    ),
                    _array_literal(str(e.originator_version) for e in stored_events),
                    _array_literal(_quoted(e.topic) for e in stored_events),
                    [e.state for e in stored_events],
                ),
                prepare=True,
            )
            return [next(iter(row.values())) for row in curs.fetchall()]

    def select_streams(self, ids: Sequence[UUID]) -> list[Row]:
        # Tuples in binary format: no per-row dict, no hex-decoding of the state.
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._select_streams_statement, (uuid_array_literal(ids),), prepare=True, binary=True)
            return curs.fetchall()

    def select_pages(
        self, stop: int, topics: Sequence[str], *, page: int, heads: tuple[str, int] | None = None
    ) -> Iterator[list[Row]]:
        # Each page is a window of notification ids, not "the next `page` events up to `stop`":
        # with a topic filter PostgreSQL answers the latter by sorting everything up to `stop`
        # for every page, which makes a whole-log read quadratic in the log's length. Binary
        # rows, no per-row objects.
        state = SQL("CASE WHEN topic = %s THEN substring(state FROM 1 FOR %s) ELSE state END" if heads else "state")
        statement = SQL(
            "SELECT originator_id, originator_version, topic, {state} FROM {events}"
            " WHERE notification_id > %s AND notification_id <= %s AND topic = ANY(%s) ORDER BY notification_id"
        ).format(state=state, events=self._events)
        wanted = list(topics)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            for position in range(0, stop, page):
                window = [position, min(position + page, stop), wanted]
                params = [*heads, *window] if heads else window
                curs.execute(statement, params, prepare=True, binary=True)
                rows = curs.fetchall()
                if rows:
                    yield rows

    def _newest(self, topics: Sequence[str], after: int, upto: int) -> int:
        # Backwards along the primary key from `upto`, skipping other topics, no further than `after`.
        statement = SQL(
            "SELECT notification_id FROM {events} WHERE topic = ANY(%s) AND notification_id > %s"
            " AND notification_id <= %s ORDER BY notification_id DESC LIMIT 1"
        ).format(events=self._events)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(statement, (list(topics), after, upto))
            row = curs.fetchone()
        return int(row[0]) if row else 0

    def stream_version(self, stream_id: UUID) -> int | None:
        # The last entry of the primary key's range: no state read, one round trip (autocommit).
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(self._stream_version_statement, (stream_id,), prepare=True)
            row = curs.fetchone()
        return int(row[0]) if row else None

    def wake_subscribers(self) -> None:
        # The library's subscription waits for a NOTIFY without a timeout (upstream #305).
        with self.datastore.get_connection() as conn:
            conn.execute(SQL("NOTIFY {0}").format(Identifier(self.channel_name)))

    def _select_in_range(
        self, template: str, after: int, upto: int, topics: Sequence[str], *extra: Any
    ) -> list[tuple[Any, ...]]:
        where = "notification_id > %s AND notification_id <= %s AND topic = ANY(%s)"
        statement = SQL(template.format(events="{events}", where=where, p="%s")).format(events=self._events)
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(statement, (after, upto, list(topics), *extra))
            return cur.fetchall()
