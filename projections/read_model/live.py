"""Which version of a projection is live: a one-row-per-projection pointer beside the events.

A rebuild writes a new version (`orders_view_v2`, ...) beside the live one and then moves the
pointer in one statement; readers and the projector follow the pointer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from ledger.store.backends import schema_lock
from ledger.store.sql import MISSING_TABLE, Database

__all__ = ["live_view", "next_version", "set_live_view"]

TABLE = "payledger_live_views"


@contextmanager
def _opened(store: Database | str) -> Iterator[Database]:
    """`store` itself, or a `Database` on the URL for one call (a process asking repeatedly
    passes the `Database` it keeps)."""
    if isinstance(store, Database):
        yield store
        return
    database = Database(store, pool_size=1)
    try:
        yield database
    finally:
        database.close()


def live_view(store: Database | str, projection: str) -> str:
    """The live version's name; the projection's own name until a rebuild has switched it."""
    with _opened(store) as database:
        try:
            with database.transaction(write=False) as cur:
                cur.execute(
                    database.sql("SELECT name FROM {table} WHERE projection = %s", table=database.qualify(TABLE)),
                    (projection,),
                )
                row = cur.fetchone()
        except MISSING_TABLE:
            return projection  # no rebuild has ever switched anything
    return str(row[0]) if row else projection


def set_live_view(store: Database | str, projection: str, name: str) -> None:
    with _opened(store) as database:
        table = database.qualify(TABLE)
        with schema_lock(database.url), database.transaction() as cur:  # processes starting together
            cur.execute(
                database.sql(
                    "CREATE TABLE IF NOT EXISTS {table} (projection TEXT PRIMARY KEY, name TEXT NOT NULL)", table=table
                )
            )
        with database.transaction() as cur:
            cur.execute(
                database.sql(
                    "INSERT INTO {table} (projection, name) VALUES (%s, %s)"
                    " ON CONFLICT (projection) DO UPDATE SET name = excluded.name",
                    table=table,
                ),
                (projection, name),
            )


def next_version(name: str) -> str:
    match = re.fullmatch(r"(.*)_v(\d+)", name)
    if match:
        return f"{match.group(1)}_v{int(match.group(2)) + 1}"
    return f"{name}_v2"
