"""The `Database` contract, on SQLite and PostgreSQL alike: what the outbox, the worklist, the
live-view pointer and the projector locks rely on."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from ledger.store.sql import STORE_ERRORS, Database
from tests.support.constants import POSTGRES_URL
from tests.support.threads import all_at_once

TABLE = "store_contract"


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    with db.transaction() as cur:
        cur.execute(db.sql("CREATE TABLE {t} (k TEXT PRIMARY KEY, n INTEGER NOT NULL)", t=db.qualify(TABLE)))
    yield db
    db.close()


def rows(db: Database) -> dict[str, int]:
    with db.transaction() as cur:
        cur.execute(db.sql("SELECT k, n FROM {t}", t=db.qualify(TABLE)))
        return {k: int(n) for k, n in cur.fetchall()}


def insert(db: Database, key: str, n: int = 0) -> None:
    with db.transaction() as cur:
        cur.execute(db.sql("INSERT INTO {t} (k, n) VALUES (%s, %s)", t=db.qualify(TABLE)), (key, n))


def test_a_transaction_commits_when_its_block_ends(database: Database, database_url: str) -> None:
    with database.transaction() as cur:
        cur.execute(database.sql("INSERT INTO {t} (k, n) VALUES (%s, %s)", t=database.qualify(TABLE)), ("a", 1))
        cur.execute(database.sql("UPDATE {t} SET n = n + 1 WHERE k = %s", t=database.qualify(TABLE)), ("a",))
        assert cur.rowcount == 1
    other = Database(database_url)  # another process would see it too
    try:
        assert rows(other) == {"a": 2}
    finally:
        other.close()


def test_a_transaction_that_raises_is_rolled_back_and_the_error_passes(database: Database) -> None:
    insert(database, "kept", 1)
    with pytest.raises(LookupError), database.transaction() as cur:
        cur.execute(database.sql("INSERT INTO {t} (k, n) VALUES (%s, %s)", t=database.qualify(TABLE)), ("gone", 2))
        cur.execute(database.sql("DELETE FROM {t} WHERE k = %s", t=database.qualify(TABLE)), ("kept",))
        raise LookupError("changed my mind")
    assert rows(database) == {"kept": 1}


def test_a_read_neither_waits_for_nor_holds_up_a_writer(database: Database, database_url: str) -> None:
    insert(database, "a", 1)
    reader = Database(database_url)
    try:
        with database.transaction() as cur:  # a writer, mid-transaction
            cur.execute(database.sql("UPDATE {t} SET n = 2", t=database.qualify(TABLE)))
            started = time.monotonic()
            with reader.transaction(write=False) as other:
                other.execute(reader.sql("SELECT n FROM {t}", t=reader.qualify(TABLE)))
                assert other.fetchall() == [(1,)]  # what was committed before
            assert time.monotonic() - started < 1
        assert rows(reader) == {"a": 2}
    finally:
        reader.close()


def test_a_failing_statement_raises_a_store_error_and_leaves_the_database_usable(database: Database) -> None:
    insert(database, "a")
    with pytest.raises(STORE_ERRORS):
        insert(database, "a")  # the primary key
    insert(database, "b")
    assert rows(database) == {"a": 0, "b": 0}


def test_placeholders_are_written_once_for_both_drivers(database: Database) -> None:
    template = "SELECT k FROM {t} WHERE k = %s OR k = %s ORDER BY k"
    assert ("?" in database.sql(template, t=TABLE)) is (database.dialect == "sqlite")
    assert "%s" not in database.sql(template, t=TABLE) or database.dialect == "postgres"
    insert(database, "what? 100% sure", 1)
    insert(database, "%s", 2)
    with database.transaction() as cur:
        cur.execute(database.sql(template, t=database.qualify(TABLE)), ["what? 100% sure", "%s"])
        assert [row[0] for row in cur.fetchall()] == ["%s", "what? 100% sure"]
    with database.transaction() as cur:
        cur.executemany(
            database.sql("UPDATE {t} SET n = n + %s WHERE k = %s", t=database.qualify(TABLE)), [(10, "%s"), (20, "%s")]
        )
    assert rows(database)["%s"] == 32


def test_tables_are_named_within_the_urls_schema(database: Database, database_url: str) -> None:
    if database.dialect == "sqlite":
        assert database.qualify(TABLE) == TABLE
        return
    assert database.schema is not None and database.schema.startswith("t_")
    assert database.qualify(TABLE) == f'"{database.schema}".{TABLE}'
    with psycopg.connect(POSTGRES_URL) as conn:  # a session whose search path does not name it
        found = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = %s", (TABLE,)
        ).fetchall()
    assert found == [(database.schema,)]


def test_a_schema_that_is_not_a_plain_identifier_is_refused() -> None:
    with pytest.raises(Exception, match="plain SQL identifier"):
        Database(f"{POSTGRES_URL}?schema=x%22%3B%20DROP")


def test_concurrent_threads_each_get_whole_transactions(database: Database) -> None:
    insert(database, "c")
    threads, increments = 8, 25  # more threads than pooled connections: they take turns
    sessions: set[int] = set()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(increments):
                with database.transaction() as cur:
                    cur.execute(database.sql("UPDATE {t} SET n = n + 1 WHERE k = %s", t=database.qualify(TABLE)), ["c"])
                    if database.dialect == "postgres":
                        cur.execute("SELECT pg_backend_pid()")
                        sessions.add(int(cur.fetchone()[0]))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert errors == []
    assert rows(database)["c"] == threads * increments
    assert len(sessions) <= 4  # the pool's size: connections are shared, not one per transaction


def _backend_pid(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


@pytest.mark.postgres
def test_a_connection_the_server_drops_is_replaced(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        first = _backend_pid(db)
        assert _backend_pid(db) == first  # kept between transactions
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
            deadline = time.monotonic() + 10
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone():
                assert time.monotonic() < deadline, "the backend did not end"
                time.sleep(0.02)
        replacement = _backend_pid(db)  # the next transaction works, on a new connection
        assert replacement != first
    finally:
        db.close()


@pytest.mark.postgres
def test_a_connection_that_breaks_within_a_transaction_is_not_reused(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        with pytest.raises(STORE_ERRORS), db.transaction() as cur:
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert _backend_pid(db) > 0
    finally:
        db.close()


@pytest.mark.postgres
def test_a_server_that_refuses_connections_is_reported_at_once() -> None:
    db = Database("postgresql://127.0.0.1:1/test")  # nothing listens on port 1
    started = time.monotonic()
    try:
        with pytest.raises(STORE_ERRORS), db.transaction():
            pass
    finally:
        db.close()
    assert time.monotonic() - started < 3


@pytest.mark.postgres
def test_a_held_session_keeps_its_advisory_lock_until_the_block_ends(postgres_url: str) -> None:
    key = random.getrandbits(62)  # advisory locks are database-wide: one no other test uses
    db, other = Database(postgres_url), Database(postgres_url)
    try:
        with db.connection() as session:
            assert session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0] is True
            with other.transaction() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                assert cur.fetchone()[0] is False
        # The session ended, and its lock with it (the server notices within moments).
        deadline = time.monotonic() + 10
        with other.connection() as session:
            while not session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the lock outlived its session"
                time.sleep(0.02)
    finally:
        db.close()
        other.close()


def test_a_held_session_is_for_postgresql_only(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        with pytest.raises(TypeError), db.connection():
            pass
    finally:
        db.close()


def test_after_close_a_transaction_raises_a_store_error(database: Database) -> None:
    insert(database, "a")
    database.close()
    with pytest.raises(STORE_ERRORS), database.transaction():
        pass
    database.close()  # twice is fine


def test_processes_starting_together_create_our_tables_without_colliding(postgres_url: str) -> None:
    """Two `payledger serve` starting at once on a fresh store both create the bill reports and the
    worklist; on PostgreSQL concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type, so our
    DDL takes turns on one advisory lock (`Database.ddl`). Eight at once, each with its own connection."""
    from projections.bills.reports import BillReports
    from projections.reconcile.worklist import Worklist

    databases = [Database(postgres_url, pool_size=1) for _ in range(8)]

    def create(database: Database) -> None:
        BillReports(database)
        Worklist(database)

    errors = all_at_once(create, databases)
    for database in databases:
        database.close()
    assert errors == []
