"""`payledger reencrypt`: rewrite stored states with the newest key, so an old key can retire.

The only in-place change ever made to the log, and it changes no event: each state is
decrypted and encrypted again, and the plaintext (which the hash chain covers) is the same
bytes. A row is rewritten only if it still holds the state that was read, so a concurrent
rewrite is never overwritten. Running processes read both forms while both keys are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier

from ledger.application import Ledger
from ledger.errors import ConfigurationError, EventUndecryptable, StoreUnavailable
from ledger.store.cipher import SETTING, RotatingAESCipher, stored_key_id

__all__ = ["ReencryptSummary", "reencrypt"]

PAGE = 1_000


@dataclass(frozen=True)
class ReencryptSummary:
    key_id: str
    states: int
    rewritten: int
    unreadable: int

    def __str__(self) -> str:
        text = f"re-encrypted {self.rewritten} of {self.states} stored states with key {self.key_id}"
        return text + (
            f"; {self.unreadable} could not be decrypted (see payledger verify --all)" if self.unreadable else ""
        )


def reencrypt(
    ledger: Ledger, *, page: int = PAGE, progress: Callable[[int, int], None] | None = None
) -> ReencryptSummary:
    """After each page, `progress(position, head)`: the log's position done, and its head (or beyond)."""
    cipher = ledger.mapper.cipher
    if not isinstance(cipher, RotatingAESCipher) or not cipher.key_ids:
        raise ConfigurationError(SETTING, "is not set: there is no key to encrypt with")
    current = cipher.key_ids[0]
    states = rewritten = unreadable = 0
    position = 0
    try:
        head = ledger.recorder.max_notification_id() or 0
        while notifications := ledger.recorder.select_notifications(position, page, inclusive_of_start=False):
            position = notifications[-1].id
            changes: list[tuple[Any, int, bytes, bytes]] = []
            for stored in notifications:
                states += 1
                if stored_key_id(stored.state) == current:
                    continue
                try:
                    plaintext = cipher.decrypt(stored.state)
                except EventUndecryptable:
                    unreadable += 1
                    continue
                changes.append(
                    (stored.originator_id, stored.originator_version, stored.state, cipher.encrypt(plaintext))
                )
            rewritten += _update(ledger, changes)
            if progress is not None:
                progress(position, max(head, position))
    except PersistenceError as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    return ReencryptSummary(current, states, rewritten, unreadable)


def _update(ledger: Ledger, changes: list[tuple[Any, int, bytes, bytes]]) -> int:
    if not changes:
        return 0
    recorder: Any = ledger.recorder
    if isinstance(recorder, PostgresApplicationRecorder):
        statement = SQL(
            "UPDATE {schema}.{table} SET state = %s WHERE originator_id = %s AND originator_version = %s AND state = %s"
        ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))
        with recorder.datastore.transaction(commit=True) as curs:
            curs.executemany(statement, [(new, i, v, old) for i, v, old, new in changes])
            # Rows actually rewritten: one changed meanwhile by someone else is left as it is.
            return max(0, int(curs.rowcount))
    with recorder.datastore.transaction(commit=True) as curs:
        curs.executemany(
            f"UPDATE {recorder.events_table_name} SET state = ? "  # noqa: S608 - the library's own table name
            "WHERE originator_id = ? AND originator_version = ? AND state = ?",
            [(new, i.hex if isinstance(i, UUID) else i, v, old) for i, v, old, new in changes],
        )
        return max(0, int(curs.sqlite_cursor.rowcount))  # the library's wrapper does not pass it on
