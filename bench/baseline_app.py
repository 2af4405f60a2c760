"""The benchmark's baseline: what most WeChat Pay integrations do with a payment notification.

Verify the signature and decrypt the resource with the ledger's own `NotificationVerifier` (so
both servers pay the same crypto cost), run one ``UPDATE orders ... WHERE out_trade_no = ...``
in the same kind of database, answer 204. No history, no duplicate detection, no anomalies.

It reads the ledger's own settings (``WECHATPAY_*``, ``LEDGER_DATABASE_URL``,
``LEDGER_WORKER_THREADS``) and sizes its thread limiter and PostgreSQL pool like the ledger's,
so the comparison is between what the two handlers do, not how they are provisioned::

    python bench/baseline_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import uvicorn
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.errors import answer_for
from api.serving import SERVER_OPTIONS, run_workers
from ledger.errors import NotificationRejected
from ledger.settings import Settings
from ledger.store.backends import persistence_env
from ledger.wechatpay.notification import NotificationVerifier

__all__ = ["OrderTable", "create_app", "main", "open_orders"]

CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS orders ("
    " out_trade_no VARCHAR(32) PRIMARY KEY,"
    " amount_total INTEGER NOT NULL,"
    " state VARCHAR(16) NOT NULL,"
    " transaction_id VARCHAR(32))"
)
# The two drivers spell placeholders differently; the statements are otherwise the same.
_SQL = {
    "sqlite": {
        "insert": "INSERT INTO orders (out_trade_no, amount_total, state) VALUES (?, ?, 'NOTPAY')",
        "update": "UPDATE orders SET state = 'SUCCESS', transaction_id = ? WHERE out_trade_no = ?",
    },
    "postgres": {
        "insert": "INSERT INTO orders (out_trade_no, amount_total, state) VALUES (%s, %s, 'NOTPAY')",
        "update": "UPDATE orders SET state = 'SUCCESS', transaction_id = %s WHERE out_trade_no = %s",
    },
}
COUNT_PAID = "SELECT count(*) FROM orders WHERE state = 'SUCCESS'"


class OrderTable(Protocol):
    def insert_unpaid(self, out_trade_nos: Sequence[str], amount_total: int) -> None: ...
    def mark_paid(self, out_trade_no: str, transaction_id: str) -> bool: ...
    def count_paid(self) -> int: ...
    def close(self) -> None: ...


class SqliteOrders:
    """One autocommit connection in WAL mode (as the ledger's store), shared behind a lock."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(CREATE_TABLE)
        self._lock = threading.Lock()
        self._sql = _SQL["sqlite"]

    def insert_unpaid(self, out_trade_nos: Sequence[str], amount_total: int) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(self._sql["insert"], [(n, amount_total) for n in out_trade_nos])
            self._conn.execute("COMMIT")

    def mark_paid(self, out_trade_no: str, transaction_id: str) -> bool:
        with self._lock:
            cursor = self._conn.execute(self._sql["update"], (transaction_id, out_trade_no))
        return cursor.rowcount == 1

    def count_paid(self) -> int:
        with self._lock:
            row = self._conn.execute(COUNT_PAID).fetchone()
        return int(row[0])

    def close(self) -> None:
        self._conn.close()


class PostgresOrders:
    """A psycopg pool of autocommit connections: the UPDATE is one round trip."""

    def __init__(self, env: dict[str, str], min_size: int, max_size: int) -> None:
        kwargs: dict[str, Any] = {
            "dbname": env["POSTGRES_DBNAME"],
            "host": env["POSTGRES_HOST"],
            "port": env["POSTGRES_PORT"],
            "user": env["POSTGRES_USER"],
            "connect_timeout": env["POSTGRES_CONNECT_TIMEOUT"],
            "autocommit": True,
        }
        if env["POSTGRES_PASSWORD"]:
            kwargs["password"] = env["POSTGRES_PASSWORD"]
        if "POSTGRES_SCHEMA" in env:
            kwargs["options"] = f"-c search_path={env['POSTGRES_SCHEMA']}"
        self._pool = ConnectionPool(kwargs=kwargs, min_size=min_size, max_size=max_size, open=True)
        self._sql = _SQL["postgres"]
        with self._pool.connection() as conn:
            conn.execute(CREATE_TABLE)

    def insert_unpaid(self, out_trade_nos: Sequence[str], amount_total: int) -> None:
        with self._pool.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(self._sql["insert"], [(n, amount_total) for n in out_trade_nos])

    def mark_paid(self, out_trade_no: str, transaction_id: str) -> bool:
        with self._pool.connection() as conn:
            cursor = conn.execute(self._sql["update"], (transaction_id, out_trade_no))
        return cursor.rowcount == 1

    def count_paid(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(COUNT_PAID).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self._pool.close()


def open_orders(database_url: str, *, serving: bool = False) -> OrderTable:
    """The orders table in the store `database_url` names (created if missing).

    Serving, the PostgreSQL pool is sized like the ledger's (its pool size plus overflow);
    otherwise (seeding, checking) one connection is enough.
    """
    env = persistence_env(database_url)
    if env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite":
        return SqliteOrders(env["SQLITE_DBNAME"])
    if not serving:
        return PostgresOrders(env, 1, 1)
    size = int(env["POSTGRES_POOL_SIZE"])
    return PostgresOrders(env, size, size + int(env["POSTGRES_MAX_OVERFLOW"]))


def _fail(status_code: int, message: str) -> Response:
    return JSONResponse({"code": "FAIL", "message": message}, status_code=status_code)


def create_app(settings: Settings) -> Starlette:
    merchant = settings.default_merchant
    if merchant is None:
        raise SystemExit("baseline: no merchant configured")
    verifier = NotificationVerifier(merchant.keys, merchant.apiv3_key.value.encode())
    limiter = anyio.CapacityLimiter(settings.worker_threads)
    orders = open_orders(settings.database_url.value, serving=True)

    async def notify(request: Request) -> Response:
        body = await request.body()
        try:
            # Synchronous on the event loop, exactly where the ledger verifies too.
            resource = verifier.verify(request.headers, body).resource
        except NotificationRejected as exc:
            return _fail(answer_for(exc).status, exc.reason)
        out_trade_no = str(resource.get("out_trade_no", ""))
        transaction_id = str(resource.get("transaction_id", ""))
        updated = await anyio.to_thread.run_sync(orders.mark_paid, out_trade_no, transaction_id, limiter=limiter)
        if not updated:
            return _fail(404, "unknown order")
        return Response(status_code=204)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        orders.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/wechatpay/notify", notify, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="baseline WeChat Pay notify handler (benchmark only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=1, help="processes, pre-forked as `payledger serve` does")
    args = parser.parse_args(argv)
    settings = Settings.load()
    # The same server options, and for several processes the same pre-fork, as `payledger serve`.
    if args.workers > 1:
        open_orders(settings.database_url.value).close()  # the table, created once before forking
        return run_workers(lambda: create_app(settings), args.host, args.port, args.workers)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, **SERVER_OPTIONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
