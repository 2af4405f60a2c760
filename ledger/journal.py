"""What operators did that is not about one order: an endpoint enabled or disabled, a window of
outbound messages recovered. Each action is an `OperatorJournal.Acted` event naming the operator,
in a stream of one operator's one day (Asia/Shanghai), so a stream stays small and two operators
never contend for one. Actions on an order are in the order's own stream (`ledger.order_actions`).

Hash-chained like every stream; the topics (`ledger.journal:OperatorJournal.<Event>`) are stored
with the events: never rename them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from eventsourcing.domain import Aggregate

from ledger.hashchain import ChainedAggregate

__all__ = ["JOURNAL_ACTIONS", "JOURNAL_EVENTS", "JOURNAL_NAMESPACE", "OperatorJournal", "beijing_day", "journal_id"]

# Fixed forever: it derives every stored journal id, never an order's, an inbox's or a bill's.
JOURNAL_NAMESPACE = uuid.UUID("0c6f0f7e-3d7c-4a53-b1a2-5a2f8f9d3e11")
_SEP = "\x00"
BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")  # the day an action is filed under
JOURNAL_ACTIONS = frozenset({"endpoint_enabled", "endpoint_disabled", "messages_recovered", "message_resent"})


def journal_id(operator: str, day: dt.date) -> uuid.UUID:
    return uuid.uuid5(JOURNAL_NAMESPACE, f"journal{_SEP}{operator}{_SEP}{day.isoformat()}")


def beijing_day(at: dt.datetime) -> dt.date:
    return at.astimezone(BEIJING).date()


class OperatorJournal(ChainedAggregate):
    """One operator's actions of one day that are about no single order."""

    class Opened(Aggregate.Created):
        operator: str
        day: str  # YYYY-MM-DD, Asia/Shanghai

    def __init__(self, operator: str, day: str) -> None:
        self.operator = operator
        self.day = day
        self.actions = 0

    @classmethod
    def open(cls, operator: str, day: dt.date) -> OperatorJournal:
        return cls._create(cls.Opened, id=journal_id(operator, day), operator=operator, day=day.isoformat())

    class Acted(Aggregate.Event):
        operator: str  # the journal's own (so that an event read alone says who)
        action: str  # one of JOURNAL_ACTIONS
        target: str  # what it was done to: an endpoint id, "" for every endpoint
        detail: dict[str, Any]
        acted_at: dt.datetime

        def apply(self, journal: OperatorJournal) -> None:
            journal.actions += 1

    def act(self, action: str, *, target: str, detail: dict[str, Any], at: dt.datetime) -> None:
        if action not in JOURNAL_ACTIONS:
            raise ValueError(f"not a journal action: {action}")
        self.trigger_event(self.Acted, operator=self.operator, action=action, target=target, detail=detail, acted_at=at)


# Every event of an OperatorJournal stream, named once (tests/test_event_lists.py keeps it so).
JOURNAL_EVENTS: tuple[type[Aggregate.Event], ...] = (OperatorJournal.Opened, OperatorJournal.Acted)
