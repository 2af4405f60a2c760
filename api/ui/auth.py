"""Who may see the operator pages: the admin token as a bearer header, or a login session.

The session cookie never holds the token. It holds ``<issued_at>.<nonce>.<mac>`` where the MAC
is HMAC-SHA256(token, "ui-session:<issued_at>.<nonce>"): nothing is stored server-side, every replica
accepts it, it ends after `SESSION_SECONDS`, and changing the token ends every session at once.
POST forms carry a CSRF token derived from the session the same way, and their Origin (when
the browser sends one) must be this host; the cookie is also SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from ledger.operators import ADMIN_TOKEN_OPERATOR, Role

__all__ = ["COOKIE", "SESSION_SECONDS", "Access", "UISessions"]

COOKIE = "payledger_session"
SESSION_SECONDS = 8 * 3600
_CLOCK_SKEW = 60  # replicas' clocks differ a little; a session "from the future" beyond this is forged


@dataclass(frozen=True)
class Access:
    """How a request got in: "bearer" (scripts), "session" (a browser after login) or "open"; as whom
    (`operator`, named in the events of what they do) and with which `role` (what they may do)."""

    via: str
    session: str = ""
    operator: str = ADMIN_TOKEN_OPERATOR
    role: Role = Role.ADMIN

    @property
    def can_act(self) -> bool:
        """May press the action buttons (re-query, refund, close, acknowledge, resend, recover)."""
        return self.role.can_act

    @property
    def can_administer(self) -> bool:
        """May enable and disable endpoints."""
        return self.role.can_administer


class UISessions:
    def __init__(self, token: str | None, clock: Callable[[], float] = time.time) -> None:
        self._token = token.encode() if token is not None else None
        # Without a token there are no sessions, but forms still get a CSRF token: from a
        # key of this process (a restart makes open pages' forms stale, which is harmless).
        self._open_key = secrets.token_bytes(32)
        self._clock = clock

    @property
    def required(self) -> bool:
        return self._token is not None

    def _mac(self, message: str) -> str:
        key = self._token if self._token is not None else self._open_key
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def issue(self) -> str:
        # The nonce makes every login a session of its own (and so its CSRF token).
        issued = f"{int(self._clock())}.{secrets.token_hex(8)}"
        return f"{issued}.{self._mac('ui-session:' + issued)}"

    def session_valid(self, value: str) -> bool:
        issued, _, mac = value.rpartition(".")
        stamp = issued.partition(".")[0]
        if self._token is None or not stamp.isdigit() or len(stamp) > 12:
            return False
        age = self._clock() - int(stamp)
        if not -_CLOCK_SKEW <= age <= SESSION_SECONDS:
            return False
        return hmac.compare_digest(mac.encode(), self._mac("ui-session:" + issued).encode())

    def access(self, request: Request) -> Access | None:
        """How this request is allowed in, or None (then it sees the login form, nothing else)."""
        if self._token is None:
            return Access("open")
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, b"Bearer " + self._token):
            return Access("bearer")
        session = request.cookies.get(COOKIE, "")
        if session and self.session_valid(session):
            return Access("session", session)
        return None

    def csrf_token(self, access: Access) -> str:
        return self._mac("csrf:" + (access.session or access.via))

    def csrf_ok(self, request: Request, access: Access, given: str) -> bool:
        """A POST is the operator's own: by bearer header, or same-origin with the form's token."""
        if access.via == "bearer":
            return True  # a browser never adds this header on its own
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(access).encode())
