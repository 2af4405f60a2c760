"""`Database(url)`: the project's own tables (outbox, worklist, live-view pointers, locks) on
either backend, through one small interface.

The event and tracking tables belong to the `eventsourcing` recorders (`ledger.store.postgres`,
`ledger.store.sqlite`, `ledger.store.views`); everything else the project stores goes through
here, so SQL is written once, with ``%s`` placeholders and ``{name}`` table slots:

* **PostgreSQL**: connections come from a small pool (at most `pool_size` open, kept between
  transactions). A connection the server has dropped (a restart, `pg_terminate_backend`) is
  noticed before it is handed out and replaced; one that breaks during a transaction is
  discarded when the transaction ends. A caller is never made to wait for a server that
  refuses connections: the refusal is raised at once, as a psycopg error. Table names are
  qualified with the URL's ``schema`` (``public`` when it names none, as the library does).
  `connection()` lends one for session state (advisory locks) and closes it afterwards.
* **SQLite**: one connection in WAL mode, transactions ``BEGIN IMMEDIATE`` under a lock (SQLite
  has one writer at a time anyway; a read-only block asks for a plain ``BEGIN``); ``%s``
  becomes ``?``.

Names in templates come from our own constants and a schema checked against a plain SQL
identifier, never from requests. Code outside the store catches `STORE_ERRORS`, never a
driver's exception by name.
"""

from __future__ import annotations

import functools
import re
import select
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol, cast

import psycopg
from psycopg import pq

from ledger.errors import ConfigurationError
from ledger.store.backends import SETTING, connect_postgres, persistence_env

__all__ = [
    "MISSING_TABLE",
    "STORE_ERRORS",
    "STORE_UNAVAILABLE",
    "Cursor",
    "Database",
    "Dialect",
    "Session",
    "dialect_of",
    "render",
    "schema_prefix",
]

Dialect = Literal["sqlite", "postgres"]
# Whatever either driver raises: the store is away, a statement failed, a table is missing.
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
# The store cannot be reached or does not answer (refused, timed out, locked, file unopenable).
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (sqlite3.OperationalError, psycopg.OperationalError)
# A statement on a table not created yet (SQLite's error is its broad OperationalError).
MISSING_TABLE: tuple[type[Exception], ...] = (sqlite3.OperationalError, psycopg.errors.UndefinedTable)
DDL_LOCK = 0x7061796C6F7574  # the advisory lock our CREATE TABLE IF NOT EXISTS statements take turns on
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Cursor(Protocol):
    """What both backends' cursors offer (psycopg's and sqlite3's)."""

    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Any: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class Session(Protocol):
    """A PostgreSQL connection held for its session state (advisory locks); autocommit."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


def dialect_of(url: str) -> Dialect:
    """Which backend `url` (a `LEDGER_DATABASE_URL`) names."""
    return "sqlite" if persistence_env(url)["PERSISTENCE_MODULE"] == "eventsourcing.sqlite" else "postgres"


def schema_prefix(schema: str | None) -> str:
    """``"schema".`` to qualify table names with (``""`` for none). Names in SQL come from our
    constants and this schema, checked to be a plain SQL identifier, never from requests."""
    if schema is None:
        return ""
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(SETTING, "schema must be a plain SQL identifier")
    return f'"{schema}".'


@functools.cache
def render(template: str, dialect: Dialect, slots: tuple[tuple[str, str], ...] = ()) -> str:
    """`template` with its ``{slot}``s filled and ``%s`` as `dialect`'s driver wants it."""
    text = template.format(**dict(slots)) if slots else template
    return text.replace("%s", "?") if dialect == "sqlite" else text


def _sound(conn: psycopg.Connection[Any]) -> bool:
    """Open, outside any transaction, and with nothing unasked-for from the server waiting on
    its socket: an idle session is only ever sent something when the server is ending it."""
    if conn.closed or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    poll = select.poll()
    poll.register(conn.fileno(), select.POLLIN)
    return not poll.poll(0)


class _Pool:
    """At most `size` PostgreSQL connections, opened on demand and kept for the next user.

    (`psycopg_pool` connects in the background and makes a caller wait its whole timeout while
    the server is down; the code this replaced saw a refusal at once, and so does this.)"""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int, timeout: float) -> None:
        self._connect = connect
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False

    @contextmanager
    def connection(self, *, keep: bool = True) -> Iterator[psycopg.Connection[Any]]:
        if not self._slots.acquire(timeout=self._timeout):
            raise psycopg.OperationalError(f"no database connection free after {self._timeout:g} s")
        try:
            conn = self._take()
            try:
                yield conn
            finally:
                self._give_back(conn, keep)
        finally:
            self._slots.release()

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._closed:
                raise psycopg.OperationalError("the database has been closed")
            while self._idle:
                conn = self._idle.pop()
                if _sound(conn):
                    return conn
                conn.close()
        return self._connect()

    def _give_back(self, conn: psycopg.Connection[Any], keep: bool) -> None:
        if keep and _sound(conn):
            with self._lock:
                if not self._closed:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Database:
    """One store (`LEDGER_DATABASE_URL`) for the project's own tables; thread-safe."""

    def __init__(self, url: str, *, pool_size: int = 4, timeout: float = 30.0) -> None:
        env = persistence_env(url)
        self.url = url
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._pool: _Pool | None = None
        self.schema: str | None = None
        self.dialect: Dialect = dialect_of(url)
        if self.dialect == "sqlite":
            self._sqlite = sqlite3.connect(
                env["SQLITE_DBNAME"], timeout=30, check_same_thread=False, isolation_level=None
            )
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA busy_timeout=30000")
            self.prefix = ""
        else:
            self.schema = env.get("POSTGRES_SCHEMA", "public")
            self.prefix = schema_prefix(self.schema)
            self._pool = _Pool(functools.partial(connect_postgres, env), pool_size, timeout)

    def qualify(self, table: str) -> str:
        """The table's name as SQL must write it (schema-qualified on PostgreSQL)."""
        return self.prefix + table

    def sql(self, template: str, **slots: str) -> str:
        """`template` for this backend: ``{slot}``s filled (table names from `qualify`, dialect
        fragments), ``%s`` as the driver wants it. Cached: templates are our own constants."""
        return render(template, self.dialect, tuple(sorted(slots.items())))

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Cursor]:
        """One transaction: committed when the block ends, rolled back when it raises.

        ``write=False`` is for a block that only reads: on SQLite it then neither waits for
        nor holds up the store's writers (a writing transaction takes the write lock first,
        so two writers never deadlock)."""
        if self._pool is not None:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as pg_cursor:
                yield pg_cursor
            return
        assert self._sqlite is not None
        with self._lock:
            cur = self._sqlite.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._sqlite.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read-only statement, a transaction of its own: on PostgreSQL (whose
        connections autocommit) without the two round trips of BEGIN and COMMIT around it."""
        if self._pool is not None:
            with self._pool.connection() as conn, conn.cursor() as pg_cursor:
                pg_cursor.execute(sql, params)
                return pg_cursor.fetchall()
        with self.transaction(write=False) as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def insert_rows(self, cur: Cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Many rows into `table` (as `qualify` writes it) in the caller's transaction: PostgreSQL's
        ``COPY`` (several times faster than INSERTs for a large batch), SQLite's ``executemany``."""
        names = ", ".join(columns)
        if self.dialect == "postgres":
            with cast("psycopg.Cursor[Any]", cur).copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)  # noqa: S608 -- our constants

    @contextmanager
    def reading_beside(self, files: Mapping[str, str]) -> Iterator[Cursor]:
        """A read-only transaction that also sees other SQLite files (alias -> path: a table of one is
        ``alias.table``), on a connection of its own with them attached for the block; on PostgreSQL,
        where every table is in the one database, a plain read (`files` is then empty)."""
        if self.dialect == "postgres":
            with self.transaction(write=False) as cur:
                yield cur
            return
        main = persistence_env(self.url)["SQLITE_DBNAME"]
        conn = sqlite3.connect(main, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            for alias, path in files.items():
                if not _IDENTIFIER.fullmatch(alias):
                    raise ValueError("an attached file's alias must be a plain SQL identifier")
                conn.execute(f"ATTACH DATABASE ? AS {alias}", (path,))
            cur = conn.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("ROLLBACK")
        finally:
            conn.close()

    @contextmanager
    def ddl(self) -> Iterator[Cursor]:
        """A transaction for ``CREATE ... IF NOT EXISTS``. On PostgreSQL two processes creating the same
        table at once can still collide (a unique violation in ``pg_type``): there they take turns,
        on the same advisory lock as every other table of ours."""
        with self.transaction() as cur:
            if self.dialect == "postgres":
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
            yield cur

    @contextmanager
    def connection(self) -> Iterator[Session]:
        """A PostgreSQL connection held for the block, for session state (advisory locks);
        closed afterwards, never handed to another user, so that state ends with the block."""
        if self._pool is None:
            raise TypeError("connection() is for PostgreSQL session state only")
        with self._pool.connection(keep=False) as conn:
            yield conn

    def close(self) -> None:
        """Close the connections; a transaction begun afterwards raises one of `STORE_ERRORS`."""
        with self._lock:
            if self._sqlite is not None:
                self._sqlite.close()
        if self._pool is not None:
            self._pool.close()
