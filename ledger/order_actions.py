"""What operators did to an order, in its own history: a mixin of `ledger.domain.PaymentOrder`
(its events are the order's own, ``ledger.domain:PaymentOrder.AnomalyAcknowledged``, ...).

* `AnomalyAcknowledged`: an operator has seen one of the order's anomalies and says so, with a
  note. The anomaly stays recorded (it is a decision the evidence made); it is no longer *open*.
* `OperatorActed`: an operator asked something of or for the order that is not itself a fact about
  the payment: a re-query of WeChat Pay (its answer follows as `StatusQueried`), a resend of one of
  its outbound messages. Refunds and closes name their operator in their own events
  (`ledger.order_requests`).

Both are taken as recorded when decisions are re-derived (`payledger verify`): they follow from a
person's word, not from earlier events, and decide nothing about the money.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import Aggregate

from ledger.errors import InvalidRequest
from ledger.hashchain import ChainedAggregate

__all__ = ["NOTE_LIMIT", "OPERATOR_ACTIONS", "OrderActions"]

NOTE_LIMIT = 500
"""An operator's note, in characters."""
OPERATOR_ACTIONS = frozenset({"requery", "resend"})
"""What `OperatorActed` may record (refunds, closes and acknowledgements have events of their own)."""


class OrderActions(ChainedAggregate):
    """Operators' actions on a `PaymentOrder` (see the module's docstring)."""

    if TYPE_CHECKING:  # the order's state this mixin reads (ledger.domain.PaymentOrder sets it)
        anomalies: list[dict[str, Any]]

    def _init_actions(self) -> None:
        self.acknowledged: dict[str, dict[str, Any]] = {}
        self.operator_actions: list[dict[str, Any]] = []

    class AnomalyAcknowledged(Aggregate.Event):
        key: str  # the AnomalyDetected's key
        note: str
        operator: str
        acknowledged_at: dt.datetime

        def apply(self, order: OrderActions) -> None:
            order.acknowledged[self.key] = {
                "operator": self.operator,
                "note": self.note,
                "at": self.acknowledged_at.isoformat(),
            }

    class OperatorActed(Aggregate.Event):
        action: str  # one of OPERATOR_ACTIONS
        operator: str
        detail: dict[str, Any]  # what it was done on, e.g. {"message_id": ...} for a resend
        acted_at: dt.datetime

        def apply(self, order: OrderActions) -> None:
            order.operator_actions.append(
                {
                    "action": self.action,
                    "operator": self.operator,
                    "detail": self.detail,
                    "at": self.acted_at.isoformat(),
                }
            )

    @property
    def open_anomalies(self) -> int:
        """The order's anomalies no operator has acknowledged yet."""
        return sum(1 for a in self.anomalies if a.get("key") not in self.acknowledged)

    def acknowledge_anomaly(self, key: str, *, note: str, operator: str, at: dt.datetime) -> bool:
        """Mark the anomaly `key` seen; False if it already was. An order without that anomaly refuses."""
        if not any(a.get("key") == key for a in self.anomalies):
            raise InvalidRequest("the order has no anomaly with that key")
        if key in self.acknowledged:
            return False
        self.trigger_event(
            self.AnomalyAcknowledged, key=key, note=_note(note), operator=_operator(operator), acknowledged_at=at
        )
        return True

    def note_operator_action(self, action: str, *, operator: str, detail: dict[str, Any], at: dt.datetime) -> None:
        if action not in OPERATOR_ACTIONS:
            raise ValueError(f"not an operator action: {action}")
        self.trigger_event(self.OperatorActed, action=action, operator=_operator(operator), detail=detail, acted_at=at)


def _note(note: str) -> str:
    note = note.strip()
    if len(note) > NOTE_LIMIT:
        raise InvalidRequest(f"the note is longer than {NOTE_LIMIT} characters")
    return note


def _operator(name: str) -> str:
    if not name or len(name) > 64:
        raise InvalidRequest("an action names its operator (1 to 64 characters)")
    return name
