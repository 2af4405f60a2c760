"""The endpoint registry and the operator log that records every change made to it.

Endpoints are the operator's own configuration: any http(s) host, loopback and private
included, or a broker (``nats://``, ``amqp://``: see `ledger.endpoint_urls`). Secrets are
Standard Webhooks ``whsec_`` secrets; several are kept while one is rotated, the newest first;
a broker endpoint may have none (its messages are not signed). A disabled endpoint keeps its
messages: they wait until it is enabled again, and then they are due at once.
"""

from __future__ import annotations

import json
import secrets as _random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from ledger.endpoint_urls import BROKER_SCHEMES, masked, url_problem
from ledger.errors import EndpointNotFound, InvalidEndpoint
from ledger.store.sql import Cursor, Database
from projections.webhooks.records import (
    Endpoint,
    OperatorEvent,
    decode_event_types,
    encode_event_types,
    endpoint_from_row,
    operator_event_from_row,
)
from projections.webhooks.schema import Store, sql
from projections.webhooks.signing import generate_secret, parse_secret

__all__ = ["Endpoints", "load_endpoints", "log_operator_event"]

_SELECT_ALL = "SELECT {ecols} FROM {endpoints} ORDER BY created_at, id"
_SELECT_ONE = "SELECT {ecols} FROM {endpoints} WHERE id = %s"
_UPSERT = (
    "INSERT INTO {endpoints} ({ecols}) VALUES (%s, %s, %s, %s, TRUE, NULL, NULL, %s)"
    " ON CONFLICT (id) DO UPDATE SET url = excluded.url, secrets = excluded.secrets,"
    " event_types = excluded.event_types"
)
_SET_SECRETS = "UPDATE {endpoints} SET secrets = %s WHERE id = %s"
_DISABLE = "UPDATE {endpoints} SET enabled = FALSE, disabled_reason = %s WHERE id = %s AND enabled = TRUE"
_ENABLE = (
    "UPDATE {endpoints} SET enabled = TRUE, disabled_reason = NULL, failing_since = NULL"
    " WHERE id = %s AND enabled = FALSE"
)
_WAITING_DUE_NOW = (
    "UPDATE {outbox} SET next_attempt_at = %s WHERE endpoint_id = %s"
    " AND state IN ('pending', 'failing') AND next_attempt_at > %s"
)
_FAILING = "UPDATE {endpoints} SET failing_since = %s WHERE id = %s AND failing_since IS NULL"
_FAILING_SINCE = "SELECT failing_since FROM {endpoints} WHERE id = %s"
_LOG = "INSERT INTO {events} ({opcols}) VALUES (%s, %s, %s, %s)"
_RECENT_EVENTS = "SELECT {opcols} FROM {events} ORDER BY id DESC LIMIT %s"


def load_endpoints(cursor: Cursor, store: Store) -> list[Endpoint]:
    """Every endpoint, disabled ones included: their messages wait until they are enabled again."""
    cursor.execute(sql(store, _SELECT_ALL))
    return [endpoint_from_row(row) for row in cursor.fetchall()]


def log_operator_event(
    cursor: Cursor, store: Store, at: float, kind: str, endpoint_id: str | None, **detail: Any
) -> None:
    """Add to the operator log, in the caller's transaction (with the change it records)."""
    cursor.execute(sql(store, _LOG), (at, kind, endpoint_id, json.dumps(detail, ensure_ascii=False)))


def _checked_url(url: str) -> str:
    problem = url_problem(url)
    if problem is not None:  # its words never quote the URL, which may hold a password
        raise InvalidEndpoint(problem)
    return url


def _is_broker(url: str) -> bool:
    return urlsplit(url).scheme.lower() in BROKER_SCHEMES


def _checked_secret(secret: str) -> str:
    try:
        parse_secret(secret)
    except ValueError as exc:  # its message never quotes the secret
        raise InvalidEndpoint(str(exc)) from None
    return secret


class Endpoints:
    """The registry on one `Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def add(self, url: str, secret: str | None = None, events: Sequence[str] | None = None) -> Endpoint:
        """Register an endpoint; a webhook's secret is generated when none is given (a broker's needs none)."""
        _checked_url(url)
        if secret is None and _is_broker(url):
            return self.upsert("ep_" + _random.token_hex(12), url, [], events)
        secret = generate_secret() if secret is None else _checked_secret(secret)
        return self.upsert("ep_" + _random.token_hex(12), url, [secret], events)

    def upsert(
        self, endpoint_id: str, url: str, secrets: Sequence[str], events: Sequence[str] | None = None
    ) -> Endpoint:
        """Create or update an endpoint by id (configured endpoints); leaves it enabled or disabled as it was."""
        _checked_url(url)
        if not secrets and not _is_broker(url):
            raise InvalidEndpoint("a webhook endpoint needs at least one secret")
        for secret in secrets:
            _checked_secret(secret)
        stored_types = encode_event_types(events)
        with self._db.transaction() as cur:
            before = self._find(cur, endpoint_id)
            # Configured endpoints are synced at every start: only a change is recorded.
            if before is not None and (before.url, before.secrets, before.event_types) == (
                url,
                tuple(secrets),
                decode_event_types(stored_types),
            ):
                return before
            now = time.time()
            cur.execute(sql(self._db, _UPSERT), (endpoint_id, url, json.dumps(list(secrets)), stored_types, now))
            log_operator_event(cur, self._db, now, "endpoint_configured", endpoint_id, url=masked(url))
            return self._fetch(cur, endpoint_id)

    def all(self) -> list[Endpoint]:
        with self._db.transaction() as cur:
            return load_endpoints(cur, self._db)

    def get(self, endpoint_id: str) -> Endpoint:
        with self._db.transaction() as cur:
            return self._fetch(cur, endpoint_id)

    def secrets(self, endpoint_id: str) -> list[str]:
        return list(self.get(endpoint_id).secrets)

    def add_secret(self, endpoint_id: str, secret: str | None = None) -> str:
        """Rotation, first step: sign with a new secret as well as the old ones; returns it."""
        secret = generate_secret() if secret is None else _checked_secret(secret)
        with self._db.transaction() as cur:
            self._set_secrets(cur, endpoint_id, [secret, *self._fetch(cur, endpoint_id).secrets])
        return secret

    def drop_old_secrets(self, endpoint_id: str) -> None:
        """Rotation, last step: keep only the newest secret."""
        with self._db.transaction() as cur:
            self._set_secrets(cur, endpoint_id, list(self._fetch(cur, endpoint_id).secrets[:1]))

    def disable(self, endpoint_id: str, reason: str, *, at: float | None = None) -> bool:
        """Stop delivering to an endpoint (its messages wait); False if it was already disabled."""
        at = time.time() if at is None else at
        with self._switched(endpoint_id, _DISABLE, (reason, endpoint_id)) as (cur, changed):
            if changed:
                log_operator_event(cur, self._db, at, "endpoint_disabled", endpoint_id, reason=reason)
        return changed

    def enable(self, endpoint_id: str, *, at: float | None = None) -> bool:
        """Deliver again, starting with the waiting messages now; False if it was enabled."""
        at = time.time() if at is None else at
        with self._switched(endpoint_id, _ENABLE, (endpoint_id,)) as (cur, changed):
            if changed:
                cur.execute(sql(self._db, _WAITING_DUE_NOW), (at, endpoint_id, at))
                log_operator_event(cur, self._db, at, "endpoint_enabled", endpoint_id)
        return changed

    def note_failure(self, endpoint_id: str, at: float) -> float:
        """Mark the endpoint failing unless it already is; returns since when it has been failing."""
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, _FAILING), (at, endpoint_id))
            cur.execute(sql(self._db, _FAILING_SINCE), (endpoint_id,))
            row = cur.fetchone()
        return at if row is None or row[0] is None else float(row[0])

    def operator_events(self, limit: int = 100) -> list[OperatorEvent]:
        """The newest `limit` entries of the operator log, oldest first."""
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, _RECENT_EVENTS), (limit,))
            rows = cur.fetchall()
        return [operator_event_from_row(row) for row in reversed(rows)]

    @contextmanager
    def _switched(self, endpoint_id: str, statement: str, params: tuple[Any, ...]) -> Iterator[tuple[Cursor, bool]]:
        """Run an enable or disable `statement` in a transaction; yields whether it changed anything."""
        with self._db.transaction() as cur:
            self._fetch(cur, endpoint_id)
            cur.execute(sql(self._db, statement), params)
            yield cur, cur.rowcount > 0

    def _set_secrets(self, cur: Cursor, endpoint_id: str, secrets: list[str]) -> None:
        cur.execute(sql(self._db, _SET_SECRETS), (json.dumps(secrets), endpoint_id))
        log_operator_event(cur, self._db, time.time(), "secrets_rotated", endpoint_id, count=len(secrets))

    def _find(self, cur: Cursor, endpoint_id: str) -> Endpoint | None:
        cur.execute(sql(self._db, _SELECT_ONE), (endpoint_id,))
        row = cur.fetchone()
        return None if row is None else endpoint_from_row(row)

    def _fetch(self, cur: Cursor, endpoint_id: str) -> Endpoint:
        found = self._find(cur, endpoint_id)
        if found is None:
            raise EndpointNotFound(endpoint_id)
        return found
