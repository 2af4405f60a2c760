"""What an operator does, each recorded as an event naming them (`Services.actions`).

The console, the JSON API and the command line act through these, never on the outbox or the
ledger directly, so that every action has one record: who, what, on what, when, with which note.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger.domain import PaymentOrder
from ledger.identity import OrderKey

if TYPE_CHECKING:
    from api.bootstrap import Services

__all__ = ["OperatorActions"]


@dataclass
class OperatorActions:
    services: Services

    def requery(self, key: OrderKey, *, operator: str) -> PaymentOrder:
        """Ask WeChat Pay about the order now (recorded as its StatusQueried) on `operator`'s word."""
        return self.services.query_order(key.mchid, key.out_trade_no, key.sub_mchid)

    def acknowledge(self, key: OrderKey, anomaly_key: str, *, note: str, operator: str) -> bool:
        """Mark one of the order's anomalies seen, with the operator's note; False if it already was."""
        raise NotImplementedError  # lands with the operator events

    def resend(self, message_id: str, *, operator: str) -> None:
        """Queue one outbound message again, whatever its state."""
        self.services.outbox.messages.resend(message_id)

    def recover(self, since: dt.datetime, until: dt.datetime, *, endpoint_id: str | None = None, operator: str) -> int:
        """Queue again the dead and failing messages created in [since, until); how many."""
        return self.services.outbox.messages.recover(since, until, endpoint_id=endpoint_id)

    def set_endpoint(self, endpoint_id: str, *, enabled: bool, operator: str, reason: str = "") -> bool:
        """Enable or disable an endpoint; False if it already was."""
        endpoints = self.services.outbox.endpoints
        if enabled:
            return endpoints.enable(endpoint_id)
        return endpoints.disable(endpoint_id, reason or f"disabled by {operator}")
