"""Callbacks answered per minute, by outcome: the overview's chart, shared by every replica.

The outcome of a callback (accepted, duplicate, bad_signature, stale, …: `NOTIFICATION_OUTCOMES`) is
known only to the replica that answered it, and only accepted ones leave a trace in the log. Each
replica counts its answers per minute in memory (one dict increment on the answer's path) and adds
them to one table beside the events every `FLUSH_SECONDS` and when it stops; the overview flushes
its own replica's counts before it reads. A replica that dies loses at most its last unflushed
seconds, as its in-process /metrics counters would. Rows older than `KEEP_SECONDS` are dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from ledger.store.sql import Database

__all__ = ["FLUSH_SECONDS", "KEEP_SECONDS", "TABLE", "CallbackMinutes"]

log = logging.getLogger("api.callbacks")

TABLE = "payledger_callback_minutes"
FLUSH_SECONDS = 10.0
KEEP_SECONDS = 7 * 86400
_PRUNE_EVERY = 3600.0


class CallbackMinutes:
    """This replica's unflushed counts and the shared table on `database` (created if missing)."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = database
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: Counter[tuple[int, str]] = Counter()
        self._pruned_at = 0.0
        self._slots = {"minutes": database.qualify(TABLE)}
        with database.ddl() as cur:
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {minutes} (minute BIGINT NOT NULL, outcome TEXT NOT NULL,"
                    " count BIGINT NOT NULL, PRIMARY KEY (minute, outcome))"
                )
            )

    def _sql(self, template: str) -> str:
        return self._db.sql(template, **self._slots)

    def count(self, outcome: str) -> None:
        """One callback answered now with `outcome`."""
        key = (int(self._clock() // 60), outcome)
        with self._lock:
            self._pending[key] += 1

    def flush(self) -> None:
        """Add this replica's counts to the table (kept for the next flush if the store refuses them)."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return
        now = self._clock()
        try:
            with self._db.transaction() as cur:
                cur.executemany(
                    self._sql(
                        "INSERT INTO {minutes} (minute, outcome, count) VALUES (%s, %s, %s)"
                        " ON CONFLICT (minute, outcome) DO UPDATE SET count = {minutes}.count + excluded.count"
                    ),
                    [(minute, outcome, n) for (minute, outcome), n in sorted(pending.items())],
                )
                if now - self._pruned_at > _PRUNE_EVERY:
                    cur.execute(
                        self._sql("DELETE FROM {minutes} WHERE minute < %s"), (int((now - KEEP_SECONDS) // 60),)
                    )
                    self._pruned_at = now
        except BaseException:
            with self._lock:
                self._pending.update(pending)
            raise

    def since(self, first_minute: int) -> dict[tuple[int, str], int]:
        """(minute, outcome) -> callbacks, from `first_minute` (Unix time // 60) on, every replica's."""
        with self._db.transaction(write=False) as cur:
            cur.execute(self._sql("SELECT minute, outcome, count FROM {minutes} WHERE minute >= %s"), (first_minute,))
            return {(int(minute), str(outcome)): int(n) for minute, outcome, n in cur.fetchall()}

    def run(self, stop: threading.Event) -> None:
        """Flush every `FLUSH_SECONDS` until `stop`, then once more."""
        while True:
            stopping = stop.wait(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception as exc:  # the store is away: counts wait in memory for the next try
                log.warning("callback counts not flushed (%s)", type(exc).__name__)
            if stopping:
                return
