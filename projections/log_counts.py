"""Counts read from the event log itself, for metrics and readiness.

The log is the one truth every process shares, so what is counted here is the same whichever
API replica is asked and whichever process did the work. Counting is incremental: a tally
remembers how far it has read and only reads what was appended since (notification ids are
committed in order: PostgreSQL appends under a table lock, SQLite has one writer), so a
scrape costs a range read of the newest events, not a scan of the log.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.domain import DECISION_EVENTS, PaymentOrder

__all__ = ["ANOMALY", "DECISION_TYPES", "DecisionTally", "count_by_topic", "unprocessed"]

# The events that are decisions (what the ledger concluded), by the name the metrics use.
DECISION_TYPES = {get_topic(cls): cls.__name__ for cls in DECISION_EVENTS}
ANOMALY = get_topic(PaymentOrder.AnomalyDetected)
_PAGE = 500


def count_by_topic(ledger: Ledger, after: int, upto: int, topics: Sequence[str]) -> dict[str, int]:
    """How many events of each of `topics` have a notification id in ``(after, upto]``."""
    if upto <= after or not topics:
        return {}
    return ledger.event_log.count_by_topic(after, upto, topics)


def unprocessed(ledger: Ledger, position: int, head: int, topics: Sequence[str], cap: int = 100_000) -> int:
    """Events a projection following `topics` has still to process (the rest of the log it skips).

    Counted exactly up to `cap`; a projection further behind is reported as ``head - position``
    (an upper bound), so a stalled projector never makes each scrape or probe scan the log.
    """
    if head <= position:
        return 0
    count = ledger.event_log.count_in_range(position, head, topics, cap)
    return count if count < cap else head - position


class DecisionTally:
    """Decisions by type and anomalies by kind in the whole log, read incrementally; thread-safe."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._lock = threading.Lock()
        self._position = 0
        self._decisions: Counter[str] = Counter(dict.fromkeys(DECISION_TYPES.values(), 0))
        self._anomalies: Counter[str] = Counter()

    def read(self) -> tuple[dict[str, int], dict[str, int]]:
        """(decisions by event type, anomalies by kind), up to the newest event."""
        with self._lock:
            head = self._ledger.recorder.max_notification_id() or 0
            if head > self._position:
                counts = count_by_topic(self._ledger, self._position, head, list(DECISION_TYPES))
                # Counted aside and merged only once everything was read: a failure half-way
                # (a page of anomalies, the store going away) must not count a page twice.
                anomalies = self._count_anomalies(self._position, head) if counts.get(ANOMALY) else Counter()
                self._anomalies.update(anomalies)
                for topic, n in counts.items():
                    self._decisions[DECISION_TYPES[topic]] += n
                self._position = head
            return dict(self._decisions), dict(self._anomalies)

    def _count_anomalies(self, after: int, upto: int) -> Counter[str]:
        # Anomalies are rare, and their kind is inside the event: read just those, through the
        # application's mapper (so it works whatever the stored form of an event is).
        kinds: Counter[str] = Counter()
        while after < upto:
            page = self._ledger.recorder.select_notifications(
                after, _PAGE, stop=upto, topics=[ANOMALY], inclusive_of_start=False
            )
            for notification in page:
                event: Any = self._ledger.mapper.to_domain_event(notification)
                kinds[str(event.kind)] += 1
            if len(page) < _PAGE:
                break
            after = page[-1].id
        return kinds
