"""What an operator does, each recorded as an event naming them (`Services.actions`).

The console, the JSON API and the command line act through these, never on the outbox or the
ledger directly, so that every action has one record: who, what, on what, when.

* On an order (re-query, resend one of its messages, acknowledge an anomaly): an event in the
  order's own stream (`ledger.order_actions`), so its history shows who did it.
* On no single order (recover a window of messages, enable or disable an endpoint): an event in
  the operator's journal of the day (`ledger.journal`).

Refunds and closes name their operator in their own events (`ledger.order_requests`). An action is
recorded once it is done: a re-query WeChat did not answer, or a resend of an unknown message,
leaves no event (and the operator sees why).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.domain import PaymentOrder
from ledger.errors import OrderNotFound
from ledger.identity import OrderKey

if TYPE_CHECKING:
    from api.bootstrap import Services

__all__ = ["OperatorActions"]

log = logging.getLogger("api.actions")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class OperatorActions:
    services: Services

    def requery(self, key: OrderKey, *, operator: str) -> PaymentOrder:
        """Ask WeChat Pay about the order now (its answer recorded as StatusQueried), then record that
        `operator` asked (OperatorActed "requery", naming the answer's version)."""
        queried = self.services.query_order(key.mchid, key.out_trade_no, key.sub_mchid)
        detail = {"trade_state": queried.trade_state, "answer_version": queried.version}
        order, _ = self.services.ledger.change_order(
            key, lambda o: o.note_operator_action("requery", operator=operator, detail=detail, at=_now())
        )
        log.info("%s re-queried %s mchid=%s: %s", operator, key.out_trade_no, key.mchid, queried.trade_state)
        return order

    def acknowledge(self, key: OrderKey, anomaly_key: str, *, note: str, operator: str) -> bool:
        """Mark one of the order's anomalies seen, with the operator's note; False if it already was."""
        _, changed = self.services.ledger.change_order(
            key, lambda o: o.acknowledge_anomaly(anomaly_key, note=note, operator=operator, at=_now())
        )
        log.info("%s acknowledged an anomaly of %s mchid=%s", operator, key.out_trade_no, key.mchid)
        return changed

    def resend(self, message_id: str, *, operator: str) -> None:
        """Queue one outbound message again, whatever its state; recorded in its order's stream (in the
        operator's journal when the order is not in this ledger, as for a message of an old store)."""
        messages = self.services.outbox.messages
        message = messages.get(message_id)  # MessageNotFound before anything is done
        messages.resend(message_id)
        detail = {"message_id": message.id, "endpoint_id": message.endpoint_id, "event_type": message.event_type}
        try:
            order = self.services.ledger.get_order_by_id(uuid.UUID(message.source_id.partition(":")[0]))
        except (OrderNotFound, ValueError):
            self.services.ledger.record_journal(operator, "message_resent", target=message.id, detail=detail)
        else:
            self.services.ledger.change_order(
                order.key, lambda o: o.note_operator_action("resend", operator=operator, detail=detail, at=_now())
            )
        log.info("%s resent %s", operator, message_id)

    def recover(self, since: dt.datetime, until: dt.datetime, *, endpoint_id: str | None = None, operator: str) -> int:
        """Queue again the dead and failing messages created in [since, until); how many. Recorded in
        the operator's journal (it may touch many orders)."""
        count = self.services.outbox.messages.recover(since, until, endpoint_id=endpoint_id)
        detail = {"since": since.isoformat(), "until": until.isoformat(), "count": count}
        self.services.ledger.record_journal(operator, "messages_recovered", target=endpoint_id or "", detail=detail)
        log.info("%s recovered %d messages", operator, count)
        return count

    def set_endpoint(self, endpoint_id: str, *, enabled: bool, operator: str, reason: str = "") -> bool:
        """Enable or disable an endpoint; False (and nothing recorded) if it already was."""
        endpoints = self.services.outbox.endpoints
        if enabled:
            changed = endpoints.enable(endpoint_id)
        else:
            changed = endpoints.disable(endpoint_id, reason or f"disabled by {operator}")
        if changed:
            action = "endpoint_enabled" if enabled else "endpoint_disabled"
            detail = {} if enabled else {"reason": reason}
            self.services.ledger.record_journal(operator, action, target=endpoint_id, detail=detail)
            log.info("%s: %s %s", operator, action, endpoint_id)
        return changed
