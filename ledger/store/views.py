"""Projection views: the tables a projection writes, and its tracking position, in one transaction.

The library's tracking recorders keep the position (the last event a projection has applied).
A view adds tables of its own and writes its rows and the position together, so a projector
that stops mid-way repeats nothing and skips nothing. `ViewRecorder` is what a view's code is
written against, once for both stores: a transaction with a plain cursor (tuples, `rowcount`),
`write_tracking` inside it, `max_tracking_id`, and SQL written with ``%s`` and ``{slot}``s
that each store renders in its own dialect. `PostgresViewRecorder` and `SQLiteViewRecorder`
supply it on top of the library's recorders; `open_view` picks the one the URL needs.

Where a view lives: on PostgreSQL beside the events, in the URL's schema; on SQLite in a file
of its own beside the ledger's (``<stem>.<name>.sqlite3``), since the library keeps one
tracking table per SQLite file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, cast

from eventsourcing.persistence import InfrastructureFactory, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.rows import tuple_row

from ledger.store.backends import persistence_env, schema_lock, small_pool
from ledger.store.sql import Cursor, Database, Dialect, dialect_of, render

__all__ = [
    "PostgresViewRecorder",
    "SQLiteViewRecorder",
    "ViewRecorder",
    "drop_view",
    "open_view",
    "view_env",
    "view_file",
]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ViewRecorder:
    """What a view's own code uses; supplied by `PostgresViewRecorder` or `SQLiteViewRecorder`."""

    dialect: ClassVar[Dialect]

    @property
    def schema(self) -> str | None:
        """The PostgreSQL schema the view's tables are in (None on SQLite)."""
        raise NotImplementedError

    @property
    def file(self) -> str | None:
        """The SQLite file the view is kept in (None on PostgreSQL)."""
        return None

    def transaction(self, *, commit: bool = True) -> AbstractContextManager[Cursor]:
        """A transaction on the view's store; rolled back when `commit` is false or it raises."""
        raise NotImplementedError

    def write_tracking(self, cursor: Cursor, tracking: Tracking) -> None:
        """Record the projection's position in the caller's transaction."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only statement (written by `sql`), a transaction of its own."""
        with self.transaction(commit=False) as curs:
            curs.execute(sql, list(params))
            return list(curs.fetchall())

    def max_tracking_id(self, application_name: str) -> int | None:
        raise NotImplementedError

    def qualify(self, table: str) -> str:
        """A table's name as SQL must write it (schema-qualified on PostgreSQL)."""
        raise NotImplementedError

    def quote(self, name: str) -> str:
        """Any other name (an index) as SQL must write it."""
        raise NotImplementedError

    def sql(self, template: str, **slots: str) -> str:
        """`template` with its ``{slot}``s filled and ``%s`` as this store's driver wants it."""
        return render(template, self.dialect, tuple(sorted(slots.items())))

    def table_columns(self, table: str) -> set[str]:
        """The columns table `table` (unqualified) has now; empty when there is no such table."""
        if self.dialect == "postgres":
            query, params = (
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                [self.schema, table],
            )
        else:
            query, params = "SELECT name FROM pragma_table_info(%s)", [table]
        with self.transaction(commit=False) as curs:
            curs.execute(self.sql(query), params)
            return {str(row[0]) for row in curs.fetchall()}

    def create_view_tables(self) -> None:
        """Run `view_statements` in one transaction (after the library created the tracking table)."""
        if statements := self.view_statements():
            with self.transaction() as curs:
                for statement in statements:
                    curs.execute(statement)

    def view_statements(self) -> list[str]:
        """The view's own tables and indexes (``IF NOT EXISTS``), created with the tracking table."""
        return []

    def close(self) -> None:
        raise NotImplementedError


class PostgresViewRecorder(PostgresTrackingRecorder, ViewRecorder):
    dialect = "postgres"

    @property
    def schema(self) -> str | None:
        return str(self.datastore.schema)

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(force_rollback=not commit),
            conn.cursor(row_factory=tuple_row) as curs,
        ):
            yield curs

    def write_tracking(self, cursor: Cursor, tracking: Tracking) -> None:
        self._insert_tracking(cast(Any, cursor), tracking)

    def query(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # The pool's connections are in autocommit mode: one statement is one transaction, and
        # BEGIN and ROLLBACK around it would be two more round trips.
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
            curs.execute(sql, list(params), prepare=True)
            return curs.fetchall()

    def qualify(self, table: str) -> str:
        return f"{_quoted(self.datastore.schema)}.{_quoted(table)}"

    def quote(self, name: str) -> str:
        return _quoted(name)

    def create_table(self) -> None:
        super().create_table()
        self.create_view_tables()

    def close(self) -> None:
        self.datastore.close()


class SQLiteViewRecorder(SQLiteTrackingRecorder, ViewRecorder):
    dialect = "sqlite"

    @property
    def schema(self) -> str | None:
        return None

    @property
    def file(self) -> str | None:
        return str(self.datastore.pool.db_name)

    @contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[Cursor]:
        with self.datastore.transaction(commit=commit) as curs:
            yield curs.sqlite_cursor  # the plain sqlite3 cursor: it has `rowcount`

    def write_tracking(self, cursor: Cursor, tracking: Tracking) -> None:
        self._insert_tracking(cast(Any, cursor), tracking)

    def qualify(self, table: str) -> str:
        return table

    def quote(self, name: str) -> str:
        return name

    def create_table(self) -> None:
        super().create_table()
        self.create_view_tables()

    def close(self) -> None:
        self.datastore.close()


def view_env(database_url: str, name: str) -> dict[str, str]:
    """The environment of the ledger plus, on SQLite, the view's own file."""
    env = small_pool(persistence_env(database_url))
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite" and "memory" not in env["SQLITE_DBNAME"]:
        path = Path(env["SQLITE_DBNAME"])
        env[_file_key(name)] = str(path.with_name(f"{path.stem}.{name}{path.suffix or '.sqlite3'}"))
    return env


def _file_key(name: str) -> str:
    return f"{name.upper()}_SQLITE_DBNAME"


def view_file(database_url: str, name: str) -> str | None:
    """The SQLite file view `name` is kept in (the ledger's own when that is in memory);
    None on PostgreSQL, where views sit beside the events."""
    env = view_env(database_url, name)
    if env["PERSISTENCE_MODULE"] != "eventsourcing.sqlite":
        return None
    return env.get(_file_key(name), env["SQLITE_DBNAME"])


def open_view(
    database_url: str,
    name: str,
    *,
    postgres: type[PostgresViewRecorder],
    sqlite: type[SQLiteViewRecorder],
    env: Mapping[str, str] | None = None,
) -> ViewRecorder:
    """View `name` of the class for the URL's store, its tables created if missing."""
    environment = Environment(name, dict(env) if env is not None else view_env(database_url, name))
    with schema_lock(database_url):
        factory = InfrastructureFactory.construct(env=environment)
        view = factory.tracking_recorder(postgres if dialect_of(database_url) == "postgres" else sqlite)
    assert isinstance(view, ViewRecorder)
    return view


def drop_view(database_url: str, name: str, tables: Sequence[str]) -> None:
    """Remove view `name` (its `tables` and its tracking position) entirely."""
    if dialect_of(database_url) == "sqlite":
        own = view_env(database_url, name).get(_file_key(name))  # never the ledger's own file
        for suffix in ("", "-wal", "-shm") if own else ():
            Path(f"{own}{suffix}").unlink(missing_ok=True)
        return
    database = Database(database_url, pool_size=1)
    try:
        with database.transaction() as cur:
            for table in (*tables, f"{name}_tracking"):
                cur.execute(f"DROP TABLE IF EXISTS {_quoted(str(database.schema))}.{_quoted(table)}")
    finally:
        database.close()
