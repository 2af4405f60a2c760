"""The people who run the ledger: named operators with a role (see `Role`).

Kept in a table of their own (`payledger_operators`): credentials change and must be forgettable,
so they are not events. What an operator *does* is recorded as events (`ledger.domain`).
"""

from __future__ import annotations

import functools
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ledger.errors import InvalidRequest, RequestConflict
from ledger.store.sql import Database

__all__ = ["ADMIN_TOKEN_OPERATOR", "LoginResult", "Operator", "Operators", "Role", "checked_name", "checked_password"]

ADMIN_TOKEN_OPERATOR = "admin-token"  # noqa: S105 (a name in the history, not a secret)
"""Who acted, in an event, when the request came in with the admin token rather than as an operator."""


class Role(StrEnum):
    """What an operator may do: a viewer reads, an operator acts on orders and deliveries (re-query,
    refund, close, acknowledge an anomaly, resend, recover), an admin also enables and disables endpoints."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """This role may do what `needed` may (viewer < operator < admin)."""
        order = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
        return order.index(self) >= order.index(needed)

    @property
    def can_act(self) -> bool:
        """May act on orders and deliveries."""
        return self is not Role.VIEWER

    @property
    def can_administer(self) -> bool:
        """May also change endpoints."""
        return self is Role.ADMIN


# -- the operators' table ---------------------------------------------------------------------------

TABLE = "payledger_operators"
SECRET_TABLE = "payledger_console_secret"  # noqa: S105 (a table name)
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
"""An operator's name: lowercase letters, digits, '.', '_', '-'; at most 32; what events record."""
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # argon2 hashes anything, but a login form is open to anyone: bounded work
# Failed logins: after this many in a row an account waits LOCK_SECONDS (doubling with every further
# failure, at most MAX_LOCK_SECONDS) before a password is even checked; a success resets it.
FAILURES_BEFORE_LOCK = 5
LOCK_SECONDS = 30.0
MAX_LOCK_SECONDS = 3600.0
_HASHER = PasswordHasher()  # RFC 9106's second recommended parameters: argon2id, 64 MiB, t=3, p=4


@functools.cache
def _dummy_hash() -> str:
    """Checked when a name is unknown, so that its answer takes as long as a wrong password's."""
    return _HASHER.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class Operator:
    name: str
    role: Role
    disabled: bool
    created_at: float
    generation: int  # bumped by passwd, disable and role changes: ends every session issued before


@dataclass(frozen=True)
class LoginResult:
    """`operator` when the name and password are right; else why not (`locked_for` seconds to wait)."""

    operator: Operator | None
    locked_for: float = 0.0


def checked_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidRequest("an operator's name is 1-32 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")
    if name == ADMIN_TOKEN_OPERATOR:
        raise InvalidRequest(f"{ADMIN_TOKEN_OPERATOR} names the admin token in the history: choose another name")
    return name


def checked_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


class Operators:
    """The operators' table on `database` (created if missing); the caller closes the database."""

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = database
        self._clock = clock
        self._slots = {"table": database.qualify(TABLE), "secret": database.qualify(SECRET_TABLE)}
        with database.ddl() as cur:
            cur.execute(
                self._sql(
                    "CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
                    " password_hash TEXT NOT NULL, disabled BOOLEAN NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
                    " generation INTEGER NOT NULL, failures INTEGER NOT NULL, locked_until DOUBLE PRECISION NOT NULL)"
                )
            )
            cur.execute(self._sql("CREATE TABLE IF NOT EXISTS {secret} (id INTEGER PRIMARY KEY, secret TEXT NOT NULL)"))

    def _sql(self, template: str) -> str:
        return self._db.sql(template, **self._slots)

    def add(self, name: str, role: Role, password: str) -> Operator:
        hashed = _HASHER.hash(checked_password(password))
        with self._db.transaction() as cur:
            cur.execute(self._sql("SELECT 1 FROM {table} WHERE name = %s"), (checked_name(name),))
            if cur.fetchone() is not None:
                raise RequestConflict(f"operator {name} exists")
            cur.execute(
                self._sql(
                    "INSERT INTO {table} (name, role, password_hash, disabled, created_at, generation, failures,"
                    " locked_until) VALUES (%s, %s, %s, %s, %s, 1, 0, 0)"
                ),
                (name, Role(role).value, hashed, False, self._clock()),
            )
        return self.get(name)

    def all(self) -> list[Operator]:
        with self._db.transaction(write=False) as cur:
            cur.execute(self._sql("SELECT name, role, disabled, created_at, generation FROM {table} ORDER BY name"))
            return [_operator(row) for row in cur.fetchall()]

    def any(self) -> bool:
        """Whether any operator exists (then the console asks for a login)."""
        with self._db.transaction(write=False) as cur:
            cur.execute(self._sql("SELECT 1 FROM {table} LIMIT 1"))
            return cur.fetchone() is not None

    def find(self, name: str) -> Operator | None:
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql("SELECT name, role, disabled, created_at, generation FROM {table} WHERE name = %s"), (name,)
            )
            row = cur.fetchone()
        return None if row is None else _operator(row)

    def get(self, name: str) -> Operator:
        found = self.find(name)
        if found is None:
            raise InvalidRequest(f"no operator named {name}")
        return found

    def set_password(self, name: str, password: str) -> None:
        """A new password; every session of the operator ends, and a lock is lifted."""
        hashed = _HASHER.hash(checked_password(password))
        self._update(name, "password_hash = %s, failures = 0, locked_until = 0", (hashed,))

    def disable(self, name: str) -> bool:
        """The operator can no longer log in; their sessions end at once. False if already disabled."""
        if self.get(name).disabled:
            return False
        self._update(name, "disabled = %s", (True,))
        return True

    def enable(self, name: str) -> bool:
        if not self.get(name).disabled:
            return False
        self._update(name, "disabled = %s, failures = 0, locked_until = 0", (False,))
        return True

    def set_role(self, name: str, role: Role) -> None:
        self._update(name, "role = %s", (Role(role).value,))

    def _update(self, name: str, assignments: str, params: tuple[Any, ...]) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                self._sql("UPDATE {table} SET " + assignments + ", generation = generation + 1 WHERE name = %s"),  # noqa: S608 (our constants)
                (*params, name),
            )
            if cur.rowcount == 0:
                raise InvalidRequest(f"no operator named {name}")

    def authenticate(self, name: str, password: str) -> LoginResult:
        """Check a login. Slow on purpose (argon2, about 50 ms, also for an unknown name); a locked
        account is refused before its password is checked, and every failure counts toward a lock."""
        now = self._clock()
        with self._db.transaction(write=False) as cur:
            cur.execute(
                self._sql(
                    "SELECT name, role, disabled, created_at, generation, password_hash, locked_until"
                    " FROM {table} WHERE name = %s"
                ),
                (name,),
            )
            row = cur.fetchone()
        if row is not None and float(row[6]) > now:
            return LoginResult(None, locked_for=float(row[6]) - now)
        ok = _verify(row[5] if row is not None else _dummy_hash(), password[:MAX_PASSWORD])
        if row is None:
            return LoginResult(None)
        if not ok or bool(row[2]):
            return LoginResult(None, locked_for=self._failed(name, now))
        with self._db.transaction() as cur:
            cur.execute(self._sql("UPDATE {table} SET failures = 0, locked_until = 0 WHERE name = %s"), (name,))
            if _HASHER.check_needs_rehash(row[5]):
                cur.execute(
                    self._sql("UPDATE {table} SET password_hash = %s WHERE name = %s"), (_HASHER.hash(password), name)
                )
        return LoginResult(_operator(row[:5]))

    def _failed(self, name: str, now: float) -> float:
        """Count a failed login; how long the account is now locked (0 while under the threshold)."""
        with self._db.transaction() as cur:
            cur.execute(self._sql("UPDATE {table} SET failures = failures + 1 WHERE name = %s"), (name,))
            cur.execute(self._sql("SELECT failures FROM {table} WHERE name = %s"), (name,))
            failures = int(cur.fetchone()[0])
            if failures < FAILURES_BEFORE_LOCK:
                return 0.0
            wait = float(min(LOCK_SECONDS * 2 ** (failures - FAILURES_BEFORE_LOCK), MAX_LOCK_SECONDS))
            cur.execute(self._sql("UPDATE {table} SET locked_until = %s WHERE name = %s"), (now + wait, name))
        return wait

    def session_key(self) -> bytes:
        """The key the console's session cookies are signed with: made once, shared by every process
        and replica through the database (never logged, never shown)."""
        with self._db.transaction() as cur:
            cur.execute(self._sql("SELECT secret FROM {secret} WHERE id = 1"))
            row = cur.fetchone()
            if row is None:
                cur.execute(self._sql("INSERT INTO {secret} (id, secret) VALUES (1, %s)"), (secrets.token_hex(32),))
                cur.execute(self._sql("SELECT secret FROM {secret} WHERE id = 1"))
                row = cur.fetchone()
        return bytes.fromhex(str(row[0]))


def _verify(hashed: str, password: str) -> bool:
    try:
        return _HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _operator(row: Any) -> Operator:
    return Operator(str(row[0]), Role(row[1]), bool(row[2]), float(row[3]), int(row[4]))
