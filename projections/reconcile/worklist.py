"""The reconciliation worklist: registered orders still open, with when to query them next, and
refunds told by an APIv2 `req_info` not confirmed yet by a refund query.

It is derived from the event log (``Registered`` adds an order; a final decision removes it; an
APIv2 refund delivery adds a refund, a final refund decision removes it) and kept in tables beside
the events, updated together with the log position they have reached, so it can always be rebuilt
and never misses an order. Leases make sure that two reconcilers never query the same order (or
refund) at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ledger.store.sql import Cursor, Database

__all__ = ["Due", "DueRefund", "Worklist"]

TABLE = "payledger_reconcile"
POSITION = "payledger_reconcile_position"
INDEX = "payledger_reconcile_due"
REFUNDS = "payledger_reconcile_refunds"
REFUNDS_INDEX = "payledger_reconcile_refunds_due"


@dataclass(frozen=True)
class Due:
    stream_id: str
    mchid: str
    out_trade_no: str
    registered_at: float
    expires_at: float
    attempts: int


@dataclass(frozen=True)
class DueRefund:
    """A refund of the order in `stream_id` that an APIv2 notification told and no query has confirmed."""

    stream_id: str
    out_refund_no: str
    mchid: str
    out_trade_no: str
    expires_at: float
    attempts: int


class Worklist:
    """The worklist's tables on `database` (created if missing); the caller closes the database."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._slots = {
            "table": database.qualify(TABLE),
            "position": database.qualify(POSITION),
            "index": INDEX,
            "refunds": database.qualify(REFUNDS),
            "refunds_index": REFUNDS_INDEX,
        }
        self._create()

    @property
    def table(self) -> str:
        return self._slots["table"]

    def _sql(self, template: str) -> str:
        return self._db.sql(template, **self._slots)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._db.transaction() as cur:
            yield cur

    def _create(self) -> None:
        with self._db.ddl() as cur:
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {table} ("
                    " stream_id TEXT PRIMARY KEY, mchid TEXT NOT NULL, out_trade_no TEXT NOT NULL,"
                    " registered_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,"
                    " next_due_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                    " state TEXT NOT NULL, trade_state TEXT, lease_owner TEXT,"
                    " lease_until DOUBLE PRECISION, last_error TEXT)"
                )
            )
            cur.execute(self._sql("CREATE INDEX IF NOT EXISTS {index} ON {table} (state, next_due_at)"))
            cur.execute(
                self._sql("CREATE TABLE IF NOT EXISTS {position} (name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
            )
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {refunds} ("
                    " stream_id TEXT NOT NULL, out_refund_no TEXT NOT NULL, mchid TEXT NOT NULL,"
                    " out_trade_no TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,"
                    " next_due_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                    " state TEXT NOT NULL, refund_status TEXT, lease_owner TEXT,"
                    " lease_until DOUBLE PRECISION, last_error TEXT, PRIMARY KEY (stream_id, out_refund_no))"
                )
            )
            cur.execute(self._sql("CREATE INDEX IF NOT EXISTS {refunds_index} ON {refunds} (state, next_due_at)"))

    # -- fed from the log ---------------------------------------------------------------------

    def position(self, cur: Cursor) -> int:
        cur.execute(self._sql("SELECT position FROM {position} WHERE name = %s"), ("orders",))
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def set_position(self, cur: Cursor, position: int) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO {position} (name, position) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
                "WHERE {position}.position < excluded.position"
            ),
            ("orders", position),
        )

    def add(self, cur: Cursor, due: Due, first_due_at: float) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO {table} (stream_id, mchid, out_trade_no, registered_at, expires_at,"
                " next_due_at, state) VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT (stream_id) DO NOTHING"
            ),
            (due.stream_id, due.mchid, due.out_trade_no, due.registered_at, due.expires_at, first_due_at),
        )

    def settle(self, cur: Cursor, stream_id: str, trade_state: str) -> None:
        cur.execute(
            self._sql(
                "UPDATE {table} SET state = 'done', trade_state = %s,"
                " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s"
            ),
            (trade_state, stream_id),
        )

    def add_refund(self, cur: Cursor, due: DueRefund, first_due_at: float) -> None:
        cur.execute(
            self._sql(
                "INSERT INTO {refunds} (stream_id, out_refund_no, mchid, out_trade_no, expires_at, next_due_at, state)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT (stream_id, out_refund_no) DO NOTHING"
            ),
            (due.stream_id, due.out_refund_no, due.mchid, due.out_trade_no, due.expires_at, first_due_at),
        )

    def settle_refund(self, cur: Cursor, stream_id: str, out_refund_no: str, status: str) -> None:
        cur.execute(
            self._sql(
                "UPDATE {refunds} SET state = 'done', refund_status = %s, lease_owner = NULL, lease_until = NULL"
                " WHERE stream_id = %s AND out_refund_no = %s"
            ),
            (status, stream_id, out_refund_no),
        )

    # -- used by reconcilers --------------------------------------------------------------------

    def claim(self, owner: str, now: float, lease: float, limit: int) -> list[Due]:
        """Lease up to `limit` due orders; an order leased by another reconciler is never returned."""
        columns = "stream_id, mchid, out_trade_no, registered_at, expires_at, attempts"
        rows = self._lease("{table}", ("stream_id",), columns, owner, now, lease, limit)
        return [Due(str(row[0]), row[1], row[2], float(row[3]), float(row[4]), int(row[5])) for row in rows]

    def _lease(
        self, table: str, key: tuple[str, ...], returning: str, owner: str, now: float, lease: float, limit: int
    ) -> list[tuple[Any, ...]]:
        """Lease up to `limit` due rows of `table` (a slot: "{table}", "{refunds}"), each named by its `key`
        columns; the `returning` columns of those this call leased."""
        with self.transaction() as cur:
            cur.execute(
                self._sql(
                    f"SELECT {', '.join(key)} FROM {table} WHERE state = 'open' AND next_due_at <= %s"
                    " AND (lease_until IS NULL OR lease_until < %s) ORDER BY next_due_at LIMIT %s"
                ),
                (now, now, limit),
            )
            candidates = cur.fetchall()
            named = " AND ".join(f"{column} = %s" for column in key)
            leased: list[tuple[Any, ...]] = []
            for candidate in candidates:
                # Re-checked in the UPDATE itself: whoever updates first owns the lease.
                cur.execute(
                    self._sql(
                        f"UPDATE {table} SET lease_owner = %s, lease_until = %s WHERE {named}"
                        f" AND state = 'open' AND (lease_until IS NULL OR lease_until < %s) RETURNING {returning}"
                    ),
                    (owner, now + lease, *candidate, now),
                )
                row = cur.fetchone()
                if row is not None:
                    leased.append(tuple(row))
            return leased

    def reschedule(self, owner: str, stream_id: str, next_due_at: float, error: str | None) -> None:
        with self.transaction() as cur:
            cur.execute(
                self._sql(
                    "UPDATE {table} SET next_due_at = %s, attempts = attempts + 1, last_error = %s,"
                    " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s AND lease_owner = %s"
                ),
                (next_due_at, error, stream_id, owner),
            )

    def finish(self, owner: str, stream_id: str, state: str, trade_state: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                self._sql(
                    "UPDATE {table} SET state = %s, trade_state = %s, attempts = attempts + 1,"
                    " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s AND lease_owner = %s"
                ),
                (state, trade_state, stream_id, owner),
            )

    def claim_refunds(self, owner: str, now: float, lease: float, limit: int) -> list[DueRefund]:
        """Lease up to `limit` due refunds, as `claim` leases orders."""
        columns = "stream_id, out_refund_no, mchid, out_trade_no, expires_at, attempts"
        rows = self._lease("{refunds}", ("stream_id", "out_refund_no"), columns, owner, now, lease, limit)
        return [DueRefund(str(row[0]), row[1], row[2], row[3], float(row[4]), int(row[5])) for row in rows]

    def release_refund(
        self,
        owner: str,
        due: DueRefund,
        *,
        state: str = "open",
        next_due_at: float | None = None,
        refund_status: str | None = None,
        error: str | None = None,
    ) -> None:
        """After a refund's query: still open and due at `next_due_at`, or `state` "done" or "expired"."""
        with self.transaction() as cur:
            cur.execute(
                self._sql(
                    "UPDATE {refunds} SET state = %s, next_due_at = COALESCE(%s, next_due_at),"
                    " attempts = attempts + 1, last_error = %s, refund_status = COALESCE(%s, refund_status),"
                    " lease_owner = NULL, lease_until = NULL"
                    " WHERE stream_id = %s AND out_refund_no = %s AND lease_owner = %s"
                ),
                (state, next_due_at, error, refund_status, due.stream_id, due.out_refund_no, owner),
            )

    def refund_counts(self) -> dict[str, int]:
        with self.transaction() as cur:
            cur.execute(self._sql("SELECT state, COUNT(*) FROM {refunds} GROUP BY state"))
            return {row[0]: int(row[1]) for row in cur.fetchall()}

    def counts(self) -> dict[str, int]:
        with self.transaction() as cur:
            cur.execute(self._sql("SELECT state, COUNT(*) FROM {table} GROUP BY state"))
            return {row[0]: int(row[1]) for row in cur.fetchall()}

    def open_sizes(self) -> tuple[int, int]:
        """(orders, refunds) still to be settled by a query: the reconciler's work, from the index alone."""
        with self._db.transaction(write=False) as cur:
            cur.execute(self._sql("SELECT COUNT(*) FROM {table} WHERE state = 'open'"))
            orders = int(cur.fetchone()[0])
            cur.execute(self._sql("SELECT COUNT(*) FROM {refunds} WHERE state = 'open'"))
            return orders, int(cur.fetchone()[0])
