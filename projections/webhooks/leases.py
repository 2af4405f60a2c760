"""The dispatchers' side of the outbox: lease due messages, then settle each with its attempt.

Several dispatchers may run against one store. A dispatcher leases a message for a while
(`Leases.claim_due`); whoever updates the row first owns it, so a message is never sent by
two at once. One order's messages to one endpoint go in stream order: a message due while an
earlier one of its order is still pending or failing is not leased but made due when that one
is (a dead one no longer holds the others back). Each attempt is recorded in the same
transaction as the message's new state: delivered, failing until its next attempt, or dead.
If the lease was lost meanwhile (it ran out and another dispatcher took the message), the
attempt is still recorded but the state is left to the new owner.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.store.sql import Cursor, Database
from projections.webhooks.records import BODY_LIMIT, Attempt, Message, message_from_row
from projections.webhooks.schema import sql

__all__ = ["Leases"]

_DUE = (
    "SELECT o.id, o.endpoint_id, o.mchid, o.out_trade_no, o.stream_version"
    " FROM {outbox} o {waiting_index} JOIN {endpoints} e ON e.id = o.endpoint_id"
    " WHERE o.state IN ('pending', 'failing') AND o.next_attempt_at <= %s"
    " AND (o.lease_until IS NULL OR o.lease_until < %s) AND e.enabled = TRUE"
    " ORDER BY o.created_at, o.stream_version, o.id LIMIT %s {skip_locked}"
)
# Re-checked in the UPDATE itself: whoever updates first owns the lease.
_LEASE = (
    "UPDATE {outbox} SET lease_owner = %s, lease_until = %s WHERE id = %s"
    " AND state IN ('pending', 'failing') AND (lease_until IS NULL OR lease_until < %s)"
    " RETURNING {mcols}"
)
# Per order and endpoint, in stream order: a message waits while an earlier one of its order does.
_EARLIER = (
    "SELECT MAX(next_attempt_at) FROM {outbox} WHERE endpoint_id = %s AND mchid = %s AND out_trade_no = %s"
    " AND stream_version < %s AND state IN ('pending', 'failing')"
)
_DEFER = "UPDATE {outbox} SET next_attempt_at = %s WHERE id = %s AND (lease_until IS NULL OR lease_until < %s)"
_RELEASE = "UPDATE {outbox} SET lease_owner = NULL, lease_until = NULL WHERE id = %s AND lease_owner = %s"
_ATTEMPT = "INSERT INTO {attempts} ({acols}) VALUES (%s, %s, %s, %s, %s, %s)"
# The three ways a leased message is settled; each ends the lease and counts the attempt.
_DELIVERED = (
    "UPDATE {outbox} SET state = 'delivered', delivered_at = %s, attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL WHERE id = %s AND lease_owner = %s"
)
_RETRY = (
    "UPDATE {outbox} SET state = 'failing', next_attempt_at = %s, attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL WHERE id = %s AND lease_owner = %s"
)
_DEAD = (
    "UPDATE {outbox} SET state = 'dead', attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL WHERE id = %s AND lease_owner = %s"
)
_ENDPOINT_HEALTHY = (
    "UPDATE {endpoints} SET failing_since = NULL WHERE failing_since IS NOT NULL"
    " AND id = (SELECT endpoint_id FROM {outbox} WHERE id = %s)"
)


class Leases:
    """The lease protocol on one `Database`."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def claim_due(self, owner: str, now: float, lease: float, limit: int) -> list[Message]:
        """Lease up to `limit` due messages of enabled endpoints, oldest first; never one leased elsewhere."""
        with self._db.transaction() as cur:
            cur.execute(sql(self._db, _DUE), (now, now, limit))
            claimed: list[Message] = []
            for candidate, endpoint_id, mchid, out_trade_no, version in cur.fetchall():
                cur.execute(sql(self._db, _EARLIER), (endpoint_id, mchid, out_trade_no, version))
                earlier = cur.fetchone()
                if earlier is not None and earlier[0] is not None:  # due again when that one is
                    cur.execute(sql(self._db, _DEFER), (float(earlier[0]), candidate, now))
                    continue
                cur.execute(sql(self._db, _LEASE), (owner, now + lease, candidate, now))
                row = cur.fetchone()
                if row is not None:
                    claimed.append(message_from_row(row))
        return claimed

    def release(self, owner: str, message_ids: Sequence[str]) -> None:
        """Give back leased messages unsent (a dispatcher stopping, an endpoint disabled meanwhile)."""
        with self._db.transaction() as cur:
            for msg in message_ids:
                cur.execute(sql(self._db, _RELEASE), (msg, owner))

    def record_attempt(self, message_id: str, attempt: Attempt) -> None:
        """Record an attempt alone, leaving the message as it is."""
        with self._db.transaction() as cur:
            self._record(cur, message_id, attempt)

    def mark_delivered(self, owner: str, message_id: str, attempt: Attempt) -> bool:
        """Record a successful attempt; the endpoint is no longer failing. False if the lease was lost."""
        with self._db.transaction() as cur:
            self._record(cur, message_id, attempt)
            cur.execute(sql(self._db, _DELIVERED), (attempt.attempted_at, message_id, owner))
            settled = cur.rowcount > 0
            cur.execute(sql(self._db, _ENDPOINT_HEALTHY), (message_id,))
        return settled

    def schedule_retry(self, owner: str, message_id: str, attempt: Attempt, next_attempt_at: float) -> bool:
        """Record a failed attempt; the message is due again at `next_attempt_at`. False if the lease was lost."""
        with self._db.transaction() as cur:
            self._record(cur, message_id, attempt)
            cur.execute(sql(self._db, _RETRY), (next_attempt_at, message_id, owner))
            settled = cur.rowcount > 0
        return settled

    def mark_dead(self, owner: str, message_id: str, attempt: Attempt) -> bool:
        """Record the schedule's last failed attempt; the message waits for an operator. False if the lease was lost."""
        with self._db.transaction() as cur:
            self._record(cur, message_id, attempt)
            cur.execute(sql(self._db, _DEAD), (message_id, owner))
            settled = cur.rowcount > 0
        return settled

    def _record(self, cur: Cursor, message_id: str, a: Attempt) -> None:
        params = (message_id, a.attempted_at, a.status, a.duration_ms, a.response_body[:BODY_LIMIT], a.error)
        cur.execute(sql(self._db, _ATTEMPT), params)
