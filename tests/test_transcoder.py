"""The fast transcoder writes exactly the library's format: stored events read the same."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from ledger.application import Ledger, build_ledger, evidence_from
from ledger.domain import PaymentOrder
from ledger.store.transcoder import FastJSONTranscoder
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.builders import query_answer
from tests.support.constants import APPID, MCHID
from tests.support.tamper import all_states


def transcoders() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            transcoder.register(transcoding)
    return library, fast


def event_states(factory: NotificationFactory) -> list[tuple[str, dict[str, Any]]]:
    """Every kind of event an order goes through: deliveries, decisions, anomalies, queries."""
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())

    def delivered(d: Any) -> Any:
        return evidence_from(verifier.verify(d.headers, d.body))

    order = PaymentOrder.open(MCHID, "ORDER-TC-1")
    order.register(1000, "CNY", '茶叶 \u2028 \x1f "quoted" \\ back/slash')
    order.receive(delivered(factory.paid("ORDER-TC-1", 999)), expected_appid=APPID)  # amount anomaly
    order.receive(delivered(factory.paid("ORDER-TC-1", 1000)), expected_appid=APPID)
    order.receive(delivered(factory.refunded("ORDER-TC-1", "R-1", 300, 1000)))
    order.receive(delivered(factory.refunded("ORDER-TC-1", "R-2", 200, 1000, status="ABNORMAL")))
    order.record_query(
        query_answer({"trade_state": "REFUND", "amount": {"total": 1000}}),
        expected_appid=APPID,
    )
    states = []
    for event in order.collect_events():
        state = dict(event.__dict__)
        state.pop("originator_id"), state.pop("originator_version")
        states.append((type(event).__name__, state))
    return states


def test_every_event_is_written_byte_for_byte_as_the_library_writes_it(factory: NotificationFactory) -> None:
    library, fast = transcoders()
    states = event_states(factory)
    assert {name for name, _ in states} >= {
        "Opened",
        "Registered",
        "NotificationReceived",
        "AnomalyDetected",
        "PaymentSucceeded",
        "RefundSucceeded",
        "RefundAbnormal",
        "StatusQueried",
    }
    for _, state in states:
        written = fast.encode(state)
        assert written == library.encode(state)
        assert library.decode(written) == state


def test_what_orjson_would_write_differently_is_left_to_the_library() -> None:
    library, fast = transcoders()
    odd: list[dict[str, Any]] = [
        {"id": uuid.uuid4(), "at": dt.datetime.now(dt.UTC)},  # orjson would not tag the UUID
        {"amount": Decimal("12.30"), "nested": {"when": dt.datetime(2026, 11, 27, tzinfo=dt.UTC)}},
        {"big": 2**70},  # beyond 64 bits
        {1: "non-string key"},
    ]
    for state in odd:
        written = fast.encode(state)
        assert written == library.encode(state)
        assert library.decode(written) == library.decode(library.encode(state))
    for transcoder in (library, fast):  # an unregistered type is refused the same way
        with pytest.raises(TranscodingNotRegisteredError):
            transcoder.encode({"when": dt.date(2026, 11, 27)})


def test_the_ledger_uses_it(sqlite_url: str, factory: NotificationFactory) -> None:
    """What a ledger stores, through the fast transcoder, the library reads back and would write
    to the same bytes."""
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    ledger: Ledger = build_ledger(sqlite_url)
    try:
        assert isinstance(ledger.mapper.transcoder, FastJSONTranscoder)
        ledger.register_order(MCHID, "ORDER-TC-2", 1000, "CNY", '茶叶 \u2028 "quoted"')
        for delivery in (factory.paid("ORDER-TC-2", 1000), factory.refunded("ORDER-TC-2", "R-1", 300, 1000)):
            ledger.record_notification(MCHID, verifier.verify(delivery.headers, delivery.body), expected_appid=APPID)
        query = query_answer({"trade_state": "REFUND", "amount": {"total": 1000}})
        ledger.record_query(MCHID, "ORDER-TC-2", query, expected_appid=APPID)
        stored = [(e["type"], e["version"]) for e in ledger.order_history(MCHID, "ORDER-TC-2")]
    finally:
        ledger.close()
    library, _ = transcoders()
    states = all_states(sqlite_url)
    assert len(states) >= len(stored) >= 7
    for state in states:
        assert library.encode(library.decode(state)) == state


def test_what_it_reads_is_what_the_library_reads(factory: NotificationFactory) -> None:
    """msgspec parses, the tags are decoded as the library's `object_hook` decodes them; what msgspec
    refuses (NaN, infinities, lone surrogates) and unknown tags are left to the library, errors alike."""
    library, fast = transcoders()
    for _, state in event_states(factory):
        written = library.encode(state)
        assert fast.decode(written) == library.decode(written) == state
    tagged = library.encode({"at": [{"when": dt.datetime(2026, 11, 27, tzinfo=dt.UTC)}], "id": uuid.uuid4()})
    odd = [
        tagged,
        b'{"big": 123456789012345678901234567890, "neg": -98765432109876543210987654321}',  # orjson: floats
        b'{"x": 1E400, "y": -1e999}',
        b'{"x": NaN}',
        b'{"x": "\\ud800"}',
        b'{"x": {"_type_": "decimal_str", "_data_": "1.20", "other": 1}}',  # three keys: not a tag
        b'{"x": {"_type_": "decimal_str", "_data_": "1.20"}, "a": 1, "a": 2}',
    ]
    for data in odd:
        assert repr(fast.decode(data)) == repr(library.decode(data)), data
    for bad in (b'{"x": {"_type_": "unknown", "_data_": 1}}', b'{"x": {"_type_": [1], "_data_": 1}}', b"{", b"\xff"):
        with pytest.raises(Exception) as by_library:
            library.decode(bad)
        with pytest.raises(by_library.type):
            fast.decode(bad)
