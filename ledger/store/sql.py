"""`Database(url)`: the project's own tables (outbox, worklist, live-view pointers, locks) on
either backend, through one small interface.

The event table belongs to the `eventsourcing` recorders (`ledger.store.postgres`,
`ledger.store.sqlite`); everything else the project stores goes through here, so SQL is
written once, with ``%s`` placeholders and ``{name}`` table slots:

* **PostgreSQL**: connections come from a `psycopg_pool.ConnectionPool` (opened lazily, kept
  small: one process holds several `Database` users); a broken connection is dropped by the
  pool and the next transaction gets a fresh one. Table names are qualified with the URL's
  ``schema`` when it has one.
* **SQLite**: one connection in WAL mode, transactions ``BEGIN IMMEDIATE`` under a lock (SQLite
  has one writer at a time anyway); ``%s`` becomes ``?``.

Names in templates come from our own constants and a schema checked against a plain SQL
identifier, never from requests.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import psycopg

from ledger.errors import ConfigurationError
from ledger.store.backends import SETTING, persistence_env

__all__ = ["STORE_ERRORS", "Cursor", "Database", "Dialect"]

Dialect = Literal["sqlite", "postgres"]
# What a store that is away or refuses raises, on either backend: for callers that carry on.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, psycopg.Error)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Cursor(Protocol):
    """What both backends' cursors offer (psycopg's and sqlite3's)."""

    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


@functools.cache
def _render(template: str, dialect: Dialect, slots: tuple[tuple[str, str], ...]) -> str:
    text = template.format(**dict(slots)) if slots else template
    return text.replace("%s", "?") if dialect == "sqlite" else text


class Database:
    """One store (`LEDGER_DATABASE_URL`) for the project's own tables; thread-safe."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        env = persistence_env(url)
        self.url = url
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._pool: Any = None
        self._pool_size = pool_size
        self._env = env
        self.schema: str | None = None
        self.dialect: Dialect
        if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
            self.dialect = "sqlite"
            self._sqlite = sqlite3.connect(
                env["SQLITE_DBNAME"], timeout=30, check_same_thread=False, isolation_level=None
            )
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA busy_timeout=30000")
        else:
            self.dialect = "postgres"
            self.schema = env.get("POSTGRES_SCHEMA")
            if self.schema is not None and not _IDENTIFIER.fullmatch(self.schema):
                raise ConfigurationError(SETTING, "schema must be a plain SQL identifier")
        self.prefix = f'"{self.schema}".' if self.schema else ""

    def qualify(self, table: str) -> str:
        """The table's name as SQL must write it (schema-qualified on PostgreSQL)."""
        return self.prefix + table

    def sql(self, template: str, **slots: str) -> str:
        """`template` for this backend: ``{slot}``s filled (table names from `qualify`, dialect
        fragments), ``%s`` as the driver wants it. Cached: templates are our own constants."""
        return _render(template, self.dialect, tuple(sorted(slots.items())))

    def _postgres_pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                env = self._env
                self._pool = ConnectionPool(
                    kwargs={
                        "dbname": env["POSTGRES_DBNAME"],
                        "host": env["POSTGRES_HOST"],
                        "port": env["POSTGRES_PORT"],
                        "user": env["POSTGRES_USER"],
                        "password": env["POSTGRES_PASSWORD"] or None,
                        "connect_timeout": int(env.get("POSTGRES_CONNECT_TIMEOUT", "5")),
                        "autocommit": True,
                    },
                    min_size=1,
                    max_size=self._pool_size,
                    timeout=30,
                    name="payledger",
                    open=True,
                )
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        if self._sqlite is not None:
            with self._lock:
                cur = self._sqlite.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                    cur.execute("COMMIT")
                except BaseException:
                    if self._sqlite.in_transaction:
                        cur.execute("ROLLBACK")
                    raise
            return
        with self._postgres_pool().connection() as conn, conn.transaction(), conn.cursor() as pg_cursor:
            yield pg_cursor

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A PostgreSQL connection held for the block (session-level advisory locks); autocommit."""
        if self.dialect != "postgres":
            raise TypeError("connection() is for PostgreSQL session state only")
        with self._postgres_pool().connection() as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
            if self._pool is not None:
                self._pool.close()
                self._pool = None
