"""One projector per projection: the lock a projector holds for as long as it runs.

On PostgreSQL a session-level advisory lock enforces it (a second projector waits for the
first to exit or die: the lock ends with the session); on SQLite an `flock` on a file beside
the view does the same for processes on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
from pathlib import Path
from typing import IO

from ledger.store.sql import Database, Session, dialect_of
from ledger.store.views import view_file

__all__ = ["ProjectorLock"]

log = logging.getLogger("projections.runner")  # the projector's own log, named as before


class ProjectorLock:
    """Held for as long as this process projects `name`; `acquire` waits for it, `try_acquire` does not."""

    def __init__(self, database_url: str, name: str) -> None:
        self._url = database_url
        self._name = name
        self._database: Database | None = None
        self._held = contextlib.ExitStack()
        self._session: Session | None = None
        self._file: IO[str] | None = None

    def acquire(self, stop: threading.Event, poll: float = 1.0) -> bool:
        """Block until the lock is ours (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            if self.try_acquire():
                return True
            if not announced:
                log.info("another projector holds %s; waiting", self._name)
                announced = True
            stop.wait(poll)
        return False

    def try_acquire(self) -> bool:
        """Take the lock if it is free (True); False at once when another holds it. Call it only
        while not holding the lock; `release` afterwards either way (it also ends the session
        or file a refused attempt kept open)."""
        if dialect_of(self._url) == "postgres":
            if self._database is None:
                self._database = Database(self._url, pool_size=1)
            if self._session is None:
                self._session = self._held.enter_context(self._database.connection())
            key = int.from_bytes(hashlib.sha256(f"payledger:{self._name}".encode()).digest()[:8], "big", signed=True)
            row = self._session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            return bool(row and row[0])
        if self._file is None:
            self._file = Path(f"{view_file(self._url, self._name)}.lock").open("a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        self._held.close()  # the session ends; PostgreSQL releases its advisory locks
        self._session = None
        if self._database is not None:
            self._database.close()
            self._database = None
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
