"""Who may see the operator pages, and as whom: a named operator after login (`ledger.operators`),
the admin token (a bearer header for scripts, or a login with it), or nobody in open mode.

Session cookies hold no secret and nothing is stored server-side, so every replica accepts them:

* an operator's: ``o.<issued_at>.<nonce>.<name, hex>.<generation>.<mac>``, the MAC by the console's
  session key (made once, kept in the database: `Operators.session_key`). Each request checks the
  operator still exists, is enabled and has the same `generation`: a new password, a role change or
  a disable ends their sessions at once;
* the admin token's: ``<issued_at>.<nonce>.<mac>``, the MAC by the token; changing the token ends them.

Both end after `SESSION_SECONDS`. POST forms carry a CSRF token derived from the session the same
way, and their Origin (when the browser sends one) must be this host; the cookie is SameSite=Strict.

The pages are open (no login) only when there is neither an admin token nor any operator.
Failed logins are limited per client address here (`AddressLimiter`) and per account in the
database (`Operators.authenticate`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from ledger.operators import ADMIN_TOKEN_OPERATOR, Operator, Operators, Role

__all__ = ["COOKIE", "SESSION_SECONDS", "Access", "AddressLimiter", "UISessions"]

COOKIE = "payledger_session"
SESSION_SECONDS = 8 * 3600
_CLOCK_SKEW = 60  # replicas' clocks differ a little; a session "from the future" beyond this is forged
_OPERATOR = "o"  # the first field of an operator's session cookie


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


class AddressLimiter:
    """At most `failures` failed logins per client address in `window` seconds (in this process)."""

    def __init__(self, failures: int = 10, window: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures, self._window, self._clock = failures, window, clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._seen.setdefault(address, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def wait(self, address: str) -> float:
        """Seconds before `address` may try again (0: it may now)."""
        with self._lock:
            now = self._clock()
            times = self._recent(address, now)
            return times[0] + self._window - now if len(times) >= self._failures else 0.0

    def failed(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(address, now).append(now)
            if len(self._seen) > 10_000:  # forget quiet addresses: memory stays bounded under a spray
                for quiet in [a for a, t in self._seen.items() if not t or t[-1] <= now - self._window]:
                    del self._seen[quiet]


class UISessions:
    def __init__(
        self,
        token: str | None,
        clock: Callable[[], float] = time.time,
        operators: Callable[[Request], Operators | None] = lambda request: None,
    ) -> None:
        self._token = token.encode() if token is not None else None
        # Open pages' forms still get a CSRF token: from a key of this process (a restart makes
        # open pages' forms stale, which is harmless).
        self._open_key = secrets.token_bytes(32)
        self._clock = clock
        self._operators = operators
        self._operator_key: bytes | None = None  # Operators.session_key, fetched once
        self._some_operator = False  # once an operator exists, the pages are never open again
        self.limiter = AddressLimiter()

    # -- open or not -----------------------------------------------------------------------------

    def required(self, request: Request) -> bool:
        """Whether a login is needed: an admin token is set, or an operator exists."""
        if self._token is not None or self._some_operator:
            return True
        operators = self._operators(request)
        self._some_operator = operators is not None and operators.any()
        return self._some_operator

    def _key(self, request: Request | None = None) -> bytes:
        """The operators' session key (from the database, once)."""
        if self._operator_key is None:
            operators = self._operators(request) if request is not None else None
            if operators is None:
                raise RuntimeError("no operators' store to take the session key from")
            self._operator_key = operators.session_key()
        return self._operator_key

    # -- the admin token -------------------------------------------------------------------------

    def _mac(self, message: str, key: bytes | None = None) -> str:
        key = key or (self._token if self._token is not None else self._open_key)
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def issue(self) -> str:
        """A session of the admin token. The nonce makes every login a session of its own (and so its CSRF token)."""
        issued = f"{int(self._clock())}.{secrets.token_hex(8)}"
        return f"{issued}.{self._mac('ui-session:' + issued)}"

    def issue_for(self, request: Request, operator: Operator) -> str:
        """A session of `operator` (see the module's docstring)."""
        issued = f"{_OPERATOR}.{int(self._clock())}.{secrets.token_hex(8)}.{operator.name.encode().hex()}"
        issued += f".{operator.generation}"
        return f"{issued}.{self._mac('ui-session:' + issued, self._key(request))}"

    def _fresh(self, stamp: str) -> bool:
        if not stamp.isdigit() or len(stamp) > 12:
            return False
        return -_CLOCK_SKEW <= self._clock() - int(stamp) <= SESSION_SECONDS

    def session_valid(self, value: str) -> bool:
        """An admin token's session, signed by this token and not expired."""
        issued, _, mac = value.rpartition(".")
        if self._token is None or value.startswith(_OPERATOR + ".") or not self._fresh(issued.partition(".")[0]):
            return False
        return hmac.compare_digest(mac.encode(), self._mac("ui-session:" + issued).encode())

    def _operator_session(self, request: Request, value: str) -> Access | None:
        parts = value.split(".")
        if len(parts) != 6 or not self._fresh(parts[1]) or not parts[4].isdigit():
            return None
        operators = self._operators(request)
        if operators is None:
            return None
        issued, mac = ".".join(parts[:5]), parts[5]
        if not hmac.compare_digest(mac.encode(), self._mac("ui-session:" + issued, self._key(request)).encode()):
            return None
        try:
            name = bytes.fromhex(parts[3]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        found = operators.find(name)
        if found is None or found.disabled or found.generation != int(parts[4]):
            return None
        return Access("session", value, operator=found.name, role=found.role)

    def access(self, request: Request) -> Access | None:
        """How this request is allowed in, or None (then it sees the login form, nothing else)."""
        if not self.required(request):
            return Access("open")
        if self._token is not None:
            given = request.headers.get("authorization", "").encode()
            if hmac.compare_digest(given, b"Bearer " + self._token):
                return Access("bearer")
        session = request.cookies.get(COOKIE, "")
        if session.startswith(_OPERATOR + "."):
            return self._operator_session(request, session)
        if session and self.session_valid(session):
            return Access("session", session)
        return None

    # -- forms -----------------------------------------------------------------------------------

    def csrf_token(self, access: Access) -> str:
        key = self._key() if access.session.startswith(_OPERATOR + ".") else None
        return self._mac("csrf:" + (access.session or access.via), key)

    def csrf_ok(self, request: Request, access: Access, given: str) -> bool:
        """A POST is the operator's own: by bearer header, or same-origin with the form's token."""
        if access.via == "bearer":
            return True  # a browser never adds this header on its own
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host", ""):
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(access).encode())
