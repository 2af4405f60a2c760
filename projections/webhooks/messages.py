"""The message queue: how messages are written, and what operators see and do with them.

The projection writes messages with `enqueue` on its own cursor, in the transaction that also
moves its tracking position, so a message is written exactly when its event is processed; the
message id (the ``webhook-id``) is derived from the event and the endpoint, so processing an
event again is a no-op. Operators list messages with their attempts, and queue them again
(`Messages.resend`, `Messages.recover`), each such act recorded in the operator log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ledger.errors import MessageNotFound
from ledger.store.sql import Cursor, Database
from projections.webhooks.endpoints import load_endpoints, log_operator_event
from projections.webhooks.records import STATES, Attempt, Endpoint, Message, attempt_from_row, message_from_row
from projections.webhooks.schema import Store, sql
from projections.webhooks.signing import payload

__all__ = ["Messages", "enqueue", "message_id"]

_INSERT = (
    "INSERT INTO {outbox} (id, source_id, endpoint_id, event_type, mchid, out_trade_no, stream_version, body,"
    " state, attempts, next_attempt_at, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'pending', 0, %s, %s)"
    " ON CONFLICT (source_id, endpoint_id) DO NOTHING"
)
# Selections: a WHERE clause with its ORDER BY (and LIMIT), for the messages and for their attempts.
# Only the filters given are written: "(%s IS NULL OR state = %s)" would keep SQLite from any index.
_NEWEST = " ORDER BY created_at DESC, id LIMIT %s"
_OF_ORDER = "mchid = %s AND out_trade_no = %s ORDER BY stream_version, endpoint_id"
_RESEND = (
    "UPDATE {outbox} SET state = 'pending', attempts = 0, next_attempt_at = %s,"
    " lease_owner = NULL, lease_until = NULL WHERE id = %s RETURNING endpoint_id"
)
_RECOVER = (
    "UPDATE {outbox} SET state = 'pending', attempts = 0, next_attempt_at = %s,"
    " lease_owner = NULL, lease_until = NULL WHERE state IN ('dead', 'failing')"
    " AND created_at >= %s AND created_at < %s AND (lease_until IS NULL OR lease_until < %s)"
    " AND (CAST(%s AS TEXT) IS NULL OR endpoint_id = %s)"
)
_COUNTS = "SELECT state, COUNT(*) FROM {outbox} GROUP BY state"


def message_id(source_id: str, endpoint_id: str) -> str:
    """The ``webhook-id``: the same event for the same endpoint always gets the same id."""
    return "msg_" + hashlib.sha256(f"{source_id}\x00{endpoint_id}".encode()).hexdigest()[:32]


def enqueue(
    cursor: Cursor,
    store: Store,
    *,
    source_id: str,
    event_type: str,
    mchid: str,
    out_trade_no: str,
    stream_version: int,
    data: Mapping[str, Any],
    occurred_at: dt.datetime,
    endpoints: Sequence[Endpoint],
    created_at: float | None = None,
) -> int:
    """Write one message per endpoint accepting `event_type`, in the caller's transaction.

    `source_id` names the decision event (``"<stream uuid>:<version>"``); returns how many
    messages are new (0 when this event was enqueued before).
    """
    body = payload(event_type, occurred_at, {**data, "stream_version": stream_version}).decode("utf-8")
    now = time.time() if created_at is None else created_at
    statement = sql(store, _INSERT)
    added = 0
    for endpoint in endpoints:
        if endpoint.accepts(event_type):
            msg = message_id(source_id, endpoint.id)
            params = (msg, source_id, endpoint.id, event_type, mchid, out_trade_no, stream_version, body, now, now)
            cursor.execute(statement, params)
            added += max(cursor.rowcount, 0)
    return added


class Messages:
    """The queue on one `Database`, as operators (and tests, and tools) use it."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def enqueue(self, **message: Any) -> int:
        """`enqueue` in a transaction of its own, for every endpoint: the same keywords but `endpoints`."""
        with self._db.transaction() as cur:
            return enqueue(cur, self._db, endpoints=load_endpoints(cur, self._db), **message)

    def newest(
        self, state: str | None = None, limit: int = 50, *, endpoint_id: str | None = None, message: str | None = None
    ) -> list[Message]:
        """The newest messages first, each with its attempts oldest first."""
        given = [(column, value) for column, value in (("state", state), ("endpoint_id", endpoint_id), ("id", message))]
        clauses = [f"{column} = %s" for column, value in given if value is not None] or ["1 = 1"]
        params = [value for _, value in given if value is not None]
        return self._select(" AND ".join(clauses) + _NEWEST, (*params, limit))

    def for_order(self, mchid: str, out_trade_no: str, *, stream_id: str | None = None) -> list[Message]:
        """One order's messages in the order of its events, each with its attempts oldest first.

        `stream_id` (the order's stream) keeps only that order's: two sub-merchants of a service
        provider may have orders of one out_trade_no, and a message's `source_id` names its stream."""
        found = self._select(_OF_ORDER, (mchid, out_trade_no))
        if stream_id is None:
            return found
        return [m for m in found if m.source_id.startswith(f"{stream_id}:")]

    def get(self, message_id: str) -> Message:
        found = self.newest(message=message_id, limit=1)
        if not found:
            raise MessageNotFound(message_id)
        return found[0]

    def resend(self, message_id: str, *, at: float | None = None) -> None:
        """Queue a message again, whatever its state, due now with a fresh retry schedule."""
        at = time.time() if at is None else at
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, _RESEND), (at, message_id))
            row = cur.fetchone()
            if row is None:
                raise MessageNotFound(message_id)
            log_operator_event(cur, self._db, at, "message_resent", row[0], message_id=message_id)

    def recover(
        self, since: dt.datetime, until: dt.datetime, *, endpoint_id: str | None = None, at: float | None = None
    ) -> int:
        """Queue again the dead and failing messages created in [since, until); returns how many."""
        at = time.time() if at is None else at
        with self._db.transaction() as cur:
            cur.execute(
                sql(self._db, _RECOVER), (at, since.timestamp(), until.timestamp(), at, endpoint_id, endpoint_id)
            )
            count = max(cur.rowcount, 0)
            window = {"since": since.isoformat(), "until": until.isoformat()}
            log_operator_event(cur, self._db, at, "messages_recovered", endpoint_id, count=count, **window)
        return count

    def counts(self) -> dict[str, int]:
        """How many messages are in each state (every state named, 0 included)."""
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, _COUNTS))
            found = {row[0]: int(row[1]) for row in cur.fetchall()}
        return {state: found.get(state, 0) for state in STATES}

    def _select(self, selection: str, params: Sequence[Any]) -> list[Message]:
        """The messages `selection` picks, in its order, each with its attempts oldest first."""
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, "SELECT {mcols} FROM {outbox} WHERE " + selection), params)
            messages = [message_from_row(row) for row in cur.fetchall()]
            cur.execute(
                sql(
                    self._db,
                    "SELECT {acols} FROM {attempts}"
                    " WHERE message_id IN (SELECT id FROM {outbox} WHERE " + selection + ") ORDER BY id",
                ),
                params,
            )
            history: dict[str, list[Attempt]] = {}
            for row in cur.fetchall():
                msg, attempt = attempt_from_row(row)
                history.setdefault(msg, []).append(attempt)
        return [dataclasses.replace(m, history=tuple(history.get(m.id, ()))) for m in messages]
