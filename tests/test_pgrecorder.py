"""The faster PostgreSQL append keeps what the library's insert guarantees."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from ledger.application import build_ledger
from ledger.store.postgres import LedgerPostgresRecorder

pytestmark = pytest.mark.postgres


def stored(originator_id: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(originator_id, version, "tests:Event", b'{"x":"\\u0000 \\\\ \' \\""}' * 10)


def test_ledger_uses_it_and_returns_ids_in_order(postgres_url: str) -> None:
    ledger = build_ledger(postgres_url)
    try:
        recorder: Any = ledger.recorder
        assert isinstance(recorder, LedgerPostgresRecorder)
        events = [stored(uuid.uuid4(), 1) for _ in range(5)]
        ids = recorder.insert_events(events)
        assert list(ids) == sorted(ids) and len(ids) == 5
        assert [n.originator_id for n in recorder.select_notifications(ids[0], 5)] == [e.originator_id for e in events]
        assert recorder.select_events(events[0].originator_id)[0].state == events[0].state
    finally:
        ledger.close()


@pytest.mark.parametrize(
    "topic",
    ["ledger.domain:PaymentOrder.PaymentSucceeded", 'odd "quoted" \\ {braces}, commas', "NULL", "", " spaced "],
)
def test_topics_and_versions_arrive_exactly_as_given(postgres_url: str, topic: str) -> None:
    """Ids, versions and topics travel as array literals: quoting must keep every topic intact."""
    ledger = build_ledger(postgres_url)
    try:
        recorder: Any = ledger.recorder
        stream = uuid.uuid4()
        events = [StoredEvent(stream, v, topic, b"{}") for v in (1, 2, 3)]
        recorder.insert_events(events)
        back = recorder.select_events(stream)
        assert [(e.originator_id, e.originator_version, e.topic) for e in back] == [
            (stream, v, topic) for v in (1, 2, 3)
        ]
    finally:
        ledger.close()


def test_version_conflict_is_an_integrity_error_and_writes_nothing(postgres_url: str) -> None:
    ledger = build_ledger(postgres_url)
    try:
        recorder: Any = ledger.recorder
        stream = uuid.uuid4()
        recorder.insert_events([stored(stream, 1)])
        before = recorder.max_notification_id()
        with pytest.raises(IntegrityError):
            recorder.insert_events([stored(uuid.uuid4(), 1), stored(stream, 1)])
        assert recorder.max_notification_id() == before
    finally:
        ledger.close()


def test_a_tailing_reader_never_skips_an_event_under_concurrent_writers(postgres_url: str) -> None:
    """Notification-id order must equal commit order (the table lock), or readers miss events."""
    ledger = build_ledger(postgres_url)
    recorder: Any = ledger.recorder
    written: list[int] = []
    lock = threading.Lock()
    done = threading.Event()

    def writer() -> None:
        for _ in range(60):
            ids = recorder.insert_events([stored(uuid.uuid4(), 1) for _ in range(3)])
            with lock:
                written.extend(ids)

    seen: list[int] = []

    def reader() -> None:
        position = 0
        while True:
            finished = done.is_set()
            page = recorder.select_notifications(position, 1000, inclusive_of_start=False)
            seen.extend(n.id for n in page)
            if page:
                position = page[-1].id
            elif finished:
                return

    threads = [threading.Thread(target=writer) for _ in range(4)]
    tail = threading.Thread(target=reader)
    tail.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    tail.join(30)
    ledger.close()
    assert sorted(written) == seen
