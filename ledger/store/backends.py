"""`LEDGER_DATABASE_URL` → the `eventsourcing` persistence environment.

The library is configured by its own variable names; users only ever see ours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.errors import ConfigurationError

__all__ = ["SMALL_POOL", "connect_postgres", "persistence_env", "redact_url", "schema_lock", "small_pool"]

_SCHEMA_LOCK = 0x7061796C65646772  # "payledgr": one lock for all of the project's DDL

SETTING = "LEDGER_DATABASE_URL"
# Always installed: it reads LEDGER_ENCRYPTION_KEYS from the process environment, which the
# library merges into every application's environment (API, projectors, rebuild, verify alike).
CIPHER_TOPIC = "ledger.store.cipher:RotatingAESCipher"


def persistence_env(url: str) -> dict[str, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # The URL itself stays out of the message: it may hold a password.
        raise ConfigurationError(SETTING, "is not a valid URL") from None
    if parts.scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute/path.db, sqlite:///:memory:
        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ConfigurationError(SETTING, "sqlite URL needs a file name, e.g. sqlite:///payledger.sqlite3")
        if ":memory:" not in path and "mode=memory" not in path:
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise ConfigurationError(SETTING, f"directory {parent} does not exist")
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": path,
            "SQLITE_LOCK_TIMEOUT": "5",
            "CREATE_TABLE": "y",
            "APPLICATION_RECORDER_TOPIC": "ledger.store.sqlite:LedgerSQLiteRecorder",
            "CIPHER_TOPIC": CIPHER_TOPIC,
        }
    if parts.scheme in {"postgresql", "postgres"}:
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise ConfigurationError(SETTING, "postgresql URL needs a database name")
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_CONNECT_TIMEOUT": query.get("connect_timeout", "5"),
            "POSTGRES_LOCK_TIMEOUT": query.get("lock_timeout", "5"),
            "POSTGRES_POOL_SIZE": query.get("pool_size", "10"),
            "POSTGRES_MAX_OVERFLOW": query.get("max_overflow", "10"),
            "POSTGRES_PRE_PING": query.get("pre_ping", "n"),
            "APPLICATION_RECORDER_TOPIC": "ledger.store.postgres:LedgerPostgresRecorder",
            "CREATE_TABLE": "y",
            "CIPHER_TOPIC": CIPHER_TOPIC,
        }
        if "schema" in query:
            env["POSTGRES_SCHEMA"] = query["schema"]
        return env
    raise ConfigurationError(SETTING, "must start with sqlite:/// or postgresql://")


SMALL_POOL = {"POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "4"}


def small_pool(env: dict[str, str]) -> dict[str, str]:
    """For a process's secondary connections (projection views, loaders): one kept open, so
    several processes fit PostgreSQL's connection limit; the request path keeps its own pool."""
    return {**env, **SMALL_POOL} if env.get("PERSISTENCE_MODULE") == "eventsourcing.postgres" else env


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def connect_postgres(env: dict[str, str]) -> Any:
    """A plain autocommit psycopg connection to the store that `env` (from `persistence_env`) names."""
    import psycopg

    return psycopg.connect(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        connect_timeout=int(env.get("POSTGRES_CONNECT_TIMEOUT", "5")),
        autocommit=True,
    )


@contextlib.contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialise table creation across processes (replicas starting together on an empty
    PostgreSQL database would otherwise race on `CREATE ... IF NOT EXISTS`)."""
    env = persistence_env(url)
    if env["PERSISTENCE_MODULE"] != "eventsourcing.postgres":
        yield
        return
    with connect_postgres(env) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
