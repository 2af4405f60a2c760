"""The reconciliation worklist: registered orders still open, with when to query them next.

It is derived from the event log (``Registered`` adds an order; a final decision removes it)
and kept in two tables beside the events, updated together with the log position they have
reached, so it can always be rebuilt and never misses an order. Leases make sure that two
reconcilers never query the same order at once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.store.backends import connect_postgres, persistence_env

__all__ = ["Due", "Worklist", "open_worklist"]

TABLE = "payledger_reconcile"
POSITION = "payledger_reconcile_position"


@dataclass(frozen=True)
class Due:
    stream_id: str
    mchid: str
    out_trade_no: str
    registered_at: float
    expires_at: float
    attempts: int


class _Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class Worklist:
    """SQL is written once with ``%s`` placeholders; SQLite gets ``?``."""

    def __init__(self, database_url: str) -> None:
        env = persistence_env(database_url)
        self._lock = threading.Lock()
        if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            self._sqlite: sqlite3.Connection | None = sqlite3.connect(
                env["SQLITE_DBNAME"], timeout=10, check_same_thread=False, isolation_level=None
            )
            self._pg: dict[str, str] | None = None
            self._prefix = ""
        else:
            self._sqlite = None
            self._pg = env
            schema = env.get("POSTGRES_SCHEMA", "public")
            self._prefix = f'"{schema}".'
        self._create()

    @property
    def table(self) -> str:
        return f"{self._prefix}{TABLE}"

    @contextmanager
    def transaction(self) -> Iterator[_Cursor]:
        if self._sqlite is not None:
            with self._lock:
                cur = self._sqlite.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield _SQLiteCursor(cur)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            return
        assert self._pg is not None
        with connect_postgres(self._pg) as conn, conn.transaction(), conn.cursor() as pg_cursor:
            yield pg_cursor

    def _create(self) -> None:
        with self.transaction() as cur:
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " stream_id TEXT PRIMARY KEY, mchid TEXT NOT NULL, out_trade_no TEXT NOT NULL,"
                " registered_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL,"
                " next_due_at DOUBLE PRECISION NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                " state TEXT NOT NULL, trade_state TEXT, lease_owner TEXT,"
                " lease_until DOUBLE PRECISION, last_error TEXT)"
            )
            cur.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_due ON {self.table} (state, next_due_at)")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self._prefix}{POSITION} ("
                " name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
            )

    # -- fed from the log ---------------------------------------------------------------------

    def position(self, cur: _Cursor) -> int:
        cur.execute(f"SELECT position FROM {self._prefix}{POSITION} WHERE name = %s", ("orders",))
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def set_position(self, cur: _Cursor, position: int) -> None:
        cur.execute(
            f"INSERT INTO {self._prefix}{POSITION} (name, position) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
            f"WHERE {self._prefix}{POSITION}.position < excluded.position",
            ("orders", position),
        )

    def add(self, cur: _Cursor, due: Due, first_due_at: float) -> None:
        cur.execute(
            f"INSERT INTO {self.table} (stream_id, mchid, out_trade_no, registered_at, expires_at,"
            " next_due_at, state) VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT (stream_id) DO NOTHING",
            (due.stream_id, due.mchid, due.out_trade_no, due.registered_at, due.expires_at, first_due_at),
        )

    def settle(self, cur: _Cursor, stream_id: str, trade_state: str) -> None:
        cur.execute(
            f"UPDATE {self.table} SET state = 'done', trade_state = %s,"
            " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s",
            (trade_state, stream_id),
        )

    # -- used by reconcilers --------------------------------------------------------------------

    def claim(self, owner: str, now: float, lease: float, limit: int) -> list[Due]:
        """Lease up to `limit` due orders; an order leased by another reconciler is never returned."""
        with self.transaction() as cur:
            cur.execute(
                f"SELECT stream_id FROM {self.table} WHERE state = 'open' AND next_due_at <= %s"
                " AND (lease_until IS NULL OR lease_until < %s) ORDER BY next_due_at LIMIT %s",
                (now, now, limit),
            )
            candidates = [row[0] for row in cur.fetchall()]
            claimed: list[Due] = []
            for stream_id in candidates:
                # Re-checked in the UPDATE itself: whoever updates first owns the lease.
                cur.execute(
                    f"UPDATE {self.table} SET lease_owner = %s, lease_until = %s WHERE stream_id = %s"
                    " AND state = 'open' AND (lease_until IS NULL OR lease_until < %s)"
                    " RETURNING stream_id, mchid, out_trade_no, registered_at, expires_at, attempts",
                    (owner, now + lease, stream_id, now),
                )
                row = cur.fetchone()
                if row is not None:
                    claimed.append(Due(str(row[0]), row[1], row[2], float(row[3]), float(row[4]), int(row[5])))
            return claimed

    def reschedule(self, owner: str, stream_id: str, next_due_at: float, error: str | None) -> None:
        with self.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET next_due_at = %s, attempts = attempts + 1, last_error = %s,"
                " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s AND lease_owner = %s",
                (next_due_at, error, stream_id, owner),
            )

    def finish(self, owner: str, stream_id: str, state: str, trade_state: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                f"UPDATE {self.table} SET state = %s, trade_state = %s, attempts = attempts + 1,"
                " lease_owner = NULL, lease_until = NULL WHERE stream_id = %s AND lease_owner = %s",
                (state, trade_state, stream_id, owner),
            )

    def counts(self) -> dict[str, int]:
        with self.transaction() as cur:
            cur.execute(f"SELECT state, COUNT(*) FROM {self.table} GROUP BY state")
            return {row[0]: int(row[1]) for row in cur.fetchall()}

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()


class _SQLiteCursor:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql.replace("%s", "?"), tuple(params))

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    def fetchone(self) -> Any:
        return self._cur.fetchone()


def open_worklist(database_url: str) -> Worklist:
    return Worklist(database_url)
