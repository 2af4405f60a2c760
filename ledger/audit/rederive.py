"""Decisions must follow from the evidence: replay the evidence, compare the decisions.

For each order stream, a shadow order is rebuilt from the stream's evidence only (the order's
registration, each verified delivery, each verified query answer) by the domain's own commands,
and every decision the shadow derives must be the next decision stored, field for field. A
decision edited together with its hash chain, added, or removed is caught; the evidence itself
is checked against WeChat's signatures by `ledger.audit.integrity`.

Memory is bounded: shadows of the most recently seen streams are kept; a stream met again after
its shadow was dropped is resumed from the store at its previous version (its earlier events
were compared when they were seen).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from ledger.domain import BILL_DECISION_EVENTS, EVIDENCE_EVENTS, REQUEST_EVENTS, Evidence, PaymentOrder, QueryEvidence
from ledger.errors import OrderConflict

__all__ = ["EVIDENCE", "Rederiver"]

# The events an order's decisions are derived from, by name; every other event of an order is a decision.
EVIDENCE = frozenset(cls.__name__ for cls in EVIDENCE_EVENTS)
# Decisions taken from a kept daily bill, not from the stream's evidence: checked against the bill
# they name by `ledger.audit.integrity`, not re-derived here.
FROM_BILLS = frozenset(cls.__name__ for cls in BILL_DECISION_EVENTS)
# What the ledger asked WeChat and what WeChat answered: taken as recorded (they follow from an
# operator's request, not from earlier events), so that what comes after is derived in their light.
REQUESTS = frozenset(cls.__name__ for cls in REQUEST_EVENTS)

SHADOWS = 20_000
_IGNORED = {"originator_id", "originator_version", "timestamp", "chain"}
_EVIDENCE_FIELDS = [f.name for f in dataclasses.fields(Evidence)]
_QUERY_FIELDS = [f.name for f in dataclasses.fields(QueryEvidence)]


def _content(event: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(event).items() if k not in _IGNORED}


@dataclass
class _Shadow:
    order: PaymentOrder | None = None
    expected: deque[Any] = field(default_factory=deque)


class Rederiver:
    def __init__(
        self,
        appids: Mapping[str, str | None],
        resume: Callable[[UUID, int], PaymentOrder | None],
        size: int | None = None,
        sub_mchids: Mapping[str, frozenset[str] | None] | None = None,
    ) -> None:
        """`appids` and `sub_mchids`: each merchant's configured appid and (service providers) sub-merchants,
        as the decisions were taken with them: a decision that followed from a setting since changed is
        reported as not following from its evidence."""
        self._appids = appids
        self._sub_mchids = sub_mchids or {}
        self._resume = resume
        self._size = size or SHADOWS
        self._shadows: OrderedDict[UUID, _Shadow] = OrderedDict()

    def feed(self, stream_id: UUID, version: int, event: Any) -> list[str]:
        """Problems found at this stored event of an order stream (in stream order)."""
        shadow = self._shadows.pop(stream_id, None)
        if shadow is None:
            shadow = _Shadow(None if version == 1 else self._resume(stream_id, version - 1))
        self._shadows[stream_id] = shadow
        if len(self._shadows) > self._size:
            self._shadows.popitem(last=False)
        name = type(event).__name__
        if name in FROM_BILLS:
            return []
        if name in EVIDENCE:
            problems = [f"decision {e} is missing" for e in (type(x).__name__ for x in shadow.expected)]
            shadow.expected.clear()
            return problems + self._evidence(shadow, name, event)
        if not shadow.expected:
            return [f"{name} does not follow from any evidence"]
        derived = shadow.expected.popleft()
        if type(derived).__name__ != name or _content(derived) != _content(event):
            return [f"{name} is not what its evidence decides ({type(derived).__name__} expected)"]
        return []

    def leftovers(self) -> Iterator[tuple[UUID, str]]:
        """Decisions derived at the end of a stream but never stored."""
        for stream_id, shadow in self._shadows.items():
            for derived in shadow.expected:
                yield stream_id, f"decision {type(derived).__name__} is missing"

    def _evidence(self, shadow: _Shadow, name: str, event: Any) -> list[str]:
        if name == "Opened":
            shadow.order = PaymentOrder.open(event.mchid, event.out_trade_no, event.sub_mchid)
            shadow.order.collect_events()
            return []
        order = shadow.order
        if order is None:
            return [f"{name} before the order was opened"]
        if name in REQUESTS:
            event.mutate(order)
            return []
        appid = self._appids.get(order.mchid)
        try:
            if name == "Registered":
                order.register(event.amount_total, event.currency, event.description, event.combine_out_trade_no)
            elif name == "NotificationReceived":
                delivery = Evidence(**{f: getattr(event, f) for f in _EVIDENCE_FIELDS})
                order.receive(delivery, expected_appid=appid, sub_mchids=self._sub_mchids.get(order.mchid))
            else:
                order.record_query(QueryEvidence(**{f: getattr(event, f) for f in _QUERY_FIELDS}), expected_appid=appid)
        except OrderConflict:
            return [f"{name} is refused by the order as its evidence says it stood"]
        produced = order.collect_events()
        if not produced or type(produced[0]).__name__ != name:
            return [f"{name} would not have been recorded (a replay of one already recorded)"]
        shadow.expected.extend(produced[1:])
        return []
