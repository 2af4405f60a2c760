"""Which version of a projection is live: a one-row-per-projection pointer beside the events.

A rebuild writes a new version (`orders_view_v2`, ...) beside the live one and then moves the
pointer in one statement; readers and the projector follow the pointer.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import psycopg

from ledger.store.backends import connect_postgres, persistence_env

__all__ = ["live_view", "next_version", "set_live_view"]

TABLE = "payledger_live_views"


def _connect(database_url: str) -> tuple[Any, str, str]:
    env = persistence_env(database_url)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        return sqlite3.connect(env["SQLITE_DBNAME"], timeout=10, isolation_level=None), "?", ""
    conn = connect_postgres(env)
    return conn, "%s", f'"{env.get("POSTGRES_SCHEMA", "public")}".'


def live_view(database_url: str, projection: str) -> str:
    """The live version's name; the projection's own name until a rebuild has switched it."""
    conn, mark, schema = _connect(database_url)
    try:
        row = conn.execute(f"SELECT name FROM {schema}{TABLE} WHERE projection = {mark}", (projection,)).fetchone()
    except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):
        return projection  # no rebuild has ever switched anything
    finally:
        conn.close()
    return str(row[0]) if row else projection


def set_live_view(database_url: str, projection: str, name: str) -> None:
    conn, mark, schema = _connect(database_url)
    try:
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}{TABLE} (projection TEXT PRIMARY KEY, name TEXT NOT NULL)"
            )
        except psycopg.errors.UniqueViolation:
            pass  # created concurrently by another process (a known PostgreSQL race): it exists now
        conn.execute(
            f"INSERT INTO {schema}{TABLE} (projection, name) VALUES ({mark}, {mark})"
            " ON CONFLICT (projection) DO UPDATE SET name = excluded.name",
            (projection, name),
        )
    finally:
        conn.close()


def next_version(name: str) -> str:
    match = re.fullmatch(r"(.*)_v(\d+)", name)
    if match:
        return f"{match.group(1)}_v{int(match.group(2)) + 1}"
    return f"{name}_v2"
