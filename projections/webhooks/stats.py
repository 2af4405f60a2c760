"""Outbound delivery figures read from the outbox tables: attempts by result, messages by state.

Dispatchers usually run in other processes; reading their record in the store at scrape time
makes every API replica report the same numbers.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import sql

__all__ = ["ATTEMPT_RESULTS", "BACKLOG_STATES", "AttemptTally", "backlog"]

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
