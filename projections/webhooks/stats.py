"""Outbound delivery figures read from the outbox tables: attempts by result, messages by state.

Dispatchers usually run in other processes; reading their record in the store at scrape time
makes every API replica report the same numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import sql

__all__ = [
    "ATTEMPT_RESULTS",
    "BACKLOG_STATES",
    "RECENT_ATTEMPTS",
    "AttemptTally",
    "EndpointActivity",
    "backlog",
    "backlog_by_endpoint",
    "endpoint_activity",
]

ATTEMPT_RESULTS = (
    "delivered",
    "http_4xx",
    "http_5xx",
    "redirect",
    "timeout",
    "broker_refused",
    "network_error",
    "other",
)
BACKLOG_STATES = ("pending", "failing", "dead")
# Mirrors how the dispatcher judges an attempt: success is a 2xx without an error, or a broker's
# acknowledgement (no status, no error), nothing else. A broker refuses with a nack, a returned
# (unroutable) message or a subject no stream captures (projections.webhooks.brokers words them).
_RESULT = (
    "CASE WHEN error IS NULL AND (status IS NULL OR (status >= 200 AND status < 300)) THEN 'delivered'"
    " WHEN error = 'timeout' THEN 'timeout'"
    " WHEN status IS NULL AND (error LIKE 'nack:%%' OR error LIKE 'unroutable:%%'"
    " OR error LIKE 'no JetStream stream%%') THEN 'broker_refused'"
    " WHEN status IS NULL THEN 'network_error'"
    " WHEN status >= 500 THEN 'http_5xx'"
    " WHEN status >= 400 THEN 'http_4xx'"
    " WHEN status >= 300 THEN 'redirect'"
    " ELSE 'other' END"
)
_BOUNDARY = "SELECT MIN(CASE WHEN attempted_at >= %s THEN id END), MAX(id) FROM {attempts} WHERE id > %s"
_BY_RESULT = "SELECT " + _RESULT + ", id <= %s, COUNT(*) FROM {attempts} WHERE id > %s GROUP BY 1, 2"
RECENT_ATTEMPTS = 5000
"""The newest attempts `endpoint_activity` reads at most: a page's cost stays the same at any volume."""
# Per endpoint: its attempts since a time among the newest ones (by id: the order they were written in,
# near enough the order of time), delivered or not; and its backlog.
_RECENT_BY_ENDPOINT = (
    "SELECT o.endpoint_id, " + _RESULT + " = 'delivered', COUNT(*)"
    " FROM (SELECT message_id, attempted_at, status, error FROM {attempts} ORDER BY id DESC LIMIT %s) a"
    " JOIN {outbox} o ON o.id = a.message_id WHERE a.attempted_at >= %s GROUP BY 1, 2"
)
_BACKLOG_BY_ENDPOINT = (
    "SELECT endpoint_id, state, COUNT(*) FROM {outbox} WHERE state IN ('pending', 'failing', 'dead') GROUP BY 1, 2"
)
# An attempt row is written when its HTTP call ends, so ids come in roughly, not strictly, in
# order of time across dispatchers. Rows older than this are taken as final and remembered;
# newer ones are counted afresh at every scrape.
SETTLE_AFTER = 600.0


class AttemptTally:
    """Delivery attempts by result over the whole attempt log, read incrementally; thread-safe."""

    def __init__(self, outbox: Outbox, clock: Callable[[], float] = time.time) -> None:
        self._outbox = outbox
        self._clock = clock
        self._lock = threading.Lock()
        self._settled_id = 0
        self._settled: Counter[str] = Counter(dict.fromkeys(ATTEMPT_RESULTS, 0))

    def read(self) -> dict[str, int]:
        database = self._outbox.database
        with self._lock, database.transaction() as cur:
            after = self._settled_id
            cur.execute(sql(database, _BOUNDARY), (self._clock() - SETTLE_AFTER, after))
            first_recent, last = cur.fetchone()
            boundary = int(first_recent) - 1 if first_recent is not None else int(last or after)
            cur.execute(sql(database, _BY_RESULT), (boundary, after))
            recent: Counter[str] = Counter()
            for result, settled, n in cur.fetchall():
                (self._settled if settled else recent)[str(result)] += int(n)
            self._settled_id = boundary
            return {result: self._settled[result] + recent[result] for result in ATTEMPT_RESULTS}


_BACKLOG = "SELECT state, COUNT(*) FROM {outbox} WHERE state IN ('pending', 'failing', 'dead') GROUP BY state"


def backlog(outbox: Outbox) -> dict[str, int]:
    """Messages not delivered yet, by state; `dead` are the dead letters. The delivered ones, nearly
    all of the table, are not counted: the states index is read for the others alone."""
    database = outbox.database
    with database.transaction(write=False) as cur:
        cur.execute(sql(database, _BACKLOG))
        found = {str(state): int(n) for state, n in cur.fetchall()}
    return {state: found.get(state, 0) for state in BACKLOG_STATES}


@dataclass
class EndpointActivity:
    """One endpoint's attempts since a time (delivered, failed) and its messages not delivered yet by state."""

    delivered: int = 0
    failed: int = 0
    backlog: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BACKLOG_STATES, 0))


def backlog_by_endpoint(outbox: Outbox) -> dict[str, dict[str, int]]:
    """Each endpoint's messages not delivered yet, by state (read from the state index: delivered ones are not
    counted); an endpoint with none is absent."""
    database = outbox.database
    found: dict[str, dict[str, int]] = {}
    with database.transaction() as cur:
        cur.execute(sql(database, _BACKLOG_BY_ENDPOINT))
        for endpoint_id, state, n in cur.fetchall():
            found.setdefault(str(endpoint_id), dict.fromkeys(BACKLOG_STATES, 0))[str(state)] = int(n)
    return found


def endpoint_activity(outbox: Outbox, since: float) -> dict[str, EndpointActivity]:
    """Each endpoint's `EndpointActivity`: its attempts from `since` (epoch seconds) among the newest
    `RECENT_ATTEMPTS` of all endpoints, and its backlog; an endpoint with neither is absent."""
    database = outbox.database
    found: dict[str, EndpointActivity] = {}
    with database.transaction() as cur:
        cur.execute(sql(database, _RECENT_BY_ENDPOINT), (RECENT_ATTEMPTS, since))
        for endpoint_id, delivered, n in cur.fetchall():
            activity = found.setdefault(str(endpoint_id), EndpointActivity())
            if delivered:
                activity.delivered += int(n)
            else:
                activity.failed += int(n)
    for endpoint_id, waiting in backlog_by_endpoint(outbox).items():
        found.setdefault(endpoint_id, EndpointActivity()).backlog = waiting
    return found
