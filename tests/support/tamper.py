"""What an attacker (or a bad migration) does to the event table, done directly in the database."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg

from ledger.store.backends import connect_postgres, persistence_env

__all__ = ["all_states", "delete_event", "edit_json", "edit_state", "rechain", "stored_state"]


@contextmanager
def _table(url: str) -> Iterator[tuple[Any, str, str]]:
    """A connection, the events table's qualified name and the placeholder style."""
    env = persistence_env(url)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        conn = sqlite3.connect(env["SQLITE_DBNAME"])
        try:
            with conn:
                yield conn, "stored_events", "?"
        finally:
            conn.close()
        return
    with connect_postgres(env) as pg:
        yield pg, f'"{env.get("POSTGRES_SCHEMA", "public")}".ledger_events', "%s"


def _id(url: str, stream_id: UUID) -> Any:
    return stream_id.hex if persistence_env(url)["PERSISTENCE_MODULE"] == "eventsourcing.sqlite" else stream_id


def stored_state(url: str, stream_id: UUID, version: int) -> bytes:
    with _table(url) as (conn, table, p):
        row = conn.execute(
            f"SELECT state FROM {table} WHERE originator_id = {p} AND originator_version = {p}",
            (_id(url, stream_id), version),
        ).fetchone()
    assert row is not None, f"no event {version} in {stream_id}"
    return bytes(row[0])


def all_states(url: str) -> list[bytes]:
    with _table(url) as (conn, table, _):
        return [bytes(row[0]) for row in conn.execute(f"SELECT state FROM {table}").fetchall()]


def edit_state(url: str, stream_id: UUID, version: int, edit: Callable[[bytes], bytes]) -> None:
    """Rewrite one stored event's state bytes in place."""
    state = edit(stored_state(url, stream_id, version))
    value: Any = (
        state if persistence_env(url)["PERSISTENCE_MODULE"] == "eventsourcing.sqlite" else psycopg.Binary(state)
    )
    with _table(url) as (conn, table, p):
        conn.execute(
            f"UPDATE {table} SET state = {p} WHERE originator_id = {p} AND originator_version = {p}",
            (value, _id(url, stream_id), version),
        )


def edit_json(url: str, stream_id: UUID, version: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite one stored (plaintext) event's JSON state."""

    def change(state: bytes) -> bytes:
        data = json.loads(state)
        edit(data)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    edit_state(url, stream_id, version, change)


def delete_event(url: str, stream_id: UUID, version: int) -> None:
    with _table(url) as (conn, table, p):
        conn.execute(
            f"DELETE FROM {table} WHERE originator_id = {p} AND originator_version = {p}",
            (_id(url, stream_id), version),
        )


def rechain(url: str, ledger: Any, stream_id: UUID, start: int) -> None:
    """What an attacker with write access does after an edit: recompute every chain of
    `stream_id` from version `start` on, so the chain alone shows nothing."""
    from ledger.hashchain import event_fields, link

    events = list(ledger.events.get(stream_id))
    previous = events[start - 2].chain
    for event in events[start - 1 :]:
        chain = link(previous, type(event), event_fields(event))
        edit_json(url, stream_id, event.originator_version, lambda s, c=chain: s.update(chain=c))
        previous = chain
