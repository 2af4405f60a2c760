"""The people who run the ledger: named operators with a role (see `Role`).

Kept in a table of their own (`payledger_operators`): credentials change and must be forgettable,
so they are not events. What an operator *does* is recorded as events (`ledger.domain`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ADMIN_TOKEN_OPERATOR", "Role"]

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
