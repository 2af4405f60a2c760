"""Blue/green rebuild: identical to the incremental build, live while everything keeps running."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.application import Ledger
from ledger.domain import PaymentOrder
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model import bulk
from projections.read_model.live import live_view
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDERS_VIEW, OrdersProjection
from tests.support.builders import WECHAT, evidence, query_answer
from tests.support.cli import clean_env, payledger
from tests.support.constants import APPID, MCHID
from tests.support.orders import as_replayed, fill
from tests.support.projectors import orders_projector_running, project_until_caught_up


def snapshot(database_url: str, name: str) -> list[tuple[object, ...]]:
    view = open_orders_view(database_url, name)
    try:
        rows = view.list_orders(limit=500)
        return [
            (
                r["mchid"],
                r["out_trade_no"],
                r["trade_state"],
                r["version"],
                r["created_at"],
                r["updated_at"],
                r["document"],
                tuple(tuple(sorted(x.items())) for x in view.refunds(r["mchid"], r["out_trade_no"])),
            )
            for r in sorted(rows, key=lambda r: r["out_trade_no"])
        ]
    finally:
        view.close()


def projected(database_url: str, ledger: Ledger, factory: NotificationFactory, orders: int) -> list[tuple[object, ...]]:
    """`orders` paid (some refunded) orders in the log and the live view caught up: its rows."""
    fill(ledger, factory, orders)
    project_until_caught_up(database_url, ledger)
    return snapshot(database_url, ORDERS_VIEW)


def test_rebuild_gives_the_same_tables_as_the_incremental_build(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    incremental = projected(database_url, ledger, factory, 15)
    summary = rebuild_orders_view(database_url)
    assert summary.new == f"{ORDERS_VIEW}_v2" and live_view(database_url, ORDERS_VIEW) == f"{ORDERS_VIEW}_v2"
    assert summary.events == ledger.recorder.max_notification_id()
    assert summary.orders == 15
    assert snapshot(database_url, summary.new) == incremental
    again = rebuild_orders_view(database_url)
    assert again.new == f"{ORDERS_VIEW}_v3" and snapshot(database_url, again.new) == incremental


def _retries_and_an_anomaly(ledger: Ledger, factory: NotificationFactory) -> None:
    """Deliveries the fast path folds without decoding: WeChat's retries, and an order whose
    retry carries a different amount (an anomaly, decoded in full)."""
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    ledger.register_order(MCHID, "ORDER-RETRY-1", 500)
    paid = factory.paid("ORDER-RETRY-1", 500)
    for _ in range(3):
        retry = factory.deliver(paid.body)
        ledger.record_notification(MCHID, verifier.verify(retry.headers, retry.body))
    wrong = factory.paid("ORDER-RETRY-1", 499)
    ledger.record_notification(MCHID, verifier.verify(wrong.headers, wrong.body))


@pytest.mark.parametrize("fast_path", [True, False], ids=["delivery-heads", "whole-events"])
def test_rebuild_folds_deliveries_exactly_like_the_projection(
    database_url: str,
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    monkeypatch: pytest.MonkeyPatch,
    fast_path: bool,
) -> None:
    """Deliveries are folded from their first bytes; if those are not laid out as expected the
    rebuild reads the whole event instead. Both give the incremental build's rows exactly."""
    folded: list[object] = []
    if fast_path:
        original = bulk.delivery_timestamp
        monkeypatch.setattr(bulk, "delivery_timestamp", lambda state: folded.append(original(state)) or folded[-1])
    else:
        monkeypatch.setattr(bulk, "_TIMESTAMP_PREFIX", b'{"not-the-layout":')
    ledger = ledger_factory()
    fill(ledger, factory, 6)
    _retries_and_an_anomaly(ledger, factory)
    project_until_caught_up(database_url, ledger)
    incremental = snapshot(database_url, ORDERS_VIEW)
    retried = next(r[6] for r in incremental if r[1] == "ORDER-RETRY-1")
    assert retried["deliveries"] == 4 and retried["anomalies"], retried
    summary = rebuild_orders_view(database_url)
    assert snapshot(database_url, summary.new) == incremental
    if fast_path:  # every delivery was folded from its head
        deliveries = 4 + sum(1 for i in range(6) if i % 3 != 2) + sum(1 for i in range(6) if i % 3 == 0)
        assert len(folded) == deliveries and all(folded)


def _long_histories(ledger: Ledger) -> None:
    """Orders whose events lie far apart in the log (each round appends one step of every order),
    with every kind of event a row shows: a payment, retries, refunds decided then decided again,
    an anomaly acknowledged, an operator's action, a refund asked and answered, a close and a
    payment after it, a query, a bill's difference, a partner's combined sub-order."""
    at = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
    tid = "4200000000000000000000000001"
    paid = WECHAT.transaction("ORDER-H0", 100, transaction_id=tid)
    orders = [PaymentOrder.open(MCHID, f"ORDER-H{i}") for i in range(4)]
    orders.append(PaymentOrder.open(MCHID, "ORDER-H4", sub_mchid="1900000110"))
    h0, h1, h2, h3, h4 = orders
    steps: list[list[Callable[[], object]]] = [
        [lambda i=i, o=o: o.register(100 + i, "CNY", f"茶 {i}") for i, o in enumerate(orders[:4])]
        + [lambda: h4.register(300, "CNY", "", combine_out_trade_no="COMBINED-H")],
        [
            lambda: h0.receive(evidence(paid, notification_id="n-h0"), expected_appid=APPID),
            lambda: h1.receive(evidence(WECHAT.transaction("ORDER-H1", 999), notification_id="n-h1")),
            lambda: h2.close(requested_by="alice", status_code=204, request_id="req-h2", closed_at=at),
            lambda: h3.record_query(query_answer({"trade_state": "USERPAYING", "mchid": MCHID})),
        ],
        [
            lambda: h0.receive(evidence(paid, notification_id="n-h0", attempt=1), expected_appid=APPID),
            lambda: h0.receive(evidence(WECHAT.refund("ORDER-H0", "R-H0", 30, 100, refund_status="ABNORMAL",
                                                      transaction_id=tid), "REFUND.ABNORMAL", notification_id="n-r0")),
            lambda: h1.acknowledge_anomaly(h1.anomalies[0]["key"], note="seen", operator="alice", at=at),
            lambda: h1.note_operator_action("requery", operator="bob", detail={}, at=at),
            lambda: h2.receive(evidence(WECHAT.transaction("ORDER-H2", 102), notification_id="n-h2")),
        ],
        [
            lambda: h0.receive(evidence(WECHAT.refund("ORDER-H0", "R-H0", 30, 100, transaction_id=tid),
                                        "REFUND.SUCCESS", notification_id="n-r1")),
            lambda: h0.ask_refund(out_refund_no="R-H1", refund=20, reason="破损", requested_by="alice",
                                  notify_url=None, requested_at=at),
            lambda: h1.note_bill_discrepancy(bill_date="2026-11-27", kind="missing_in_bill", evidence="bill:x",
                                             transaction_id="t-h1", out_refund_no=None, refund_id=None,
                                             bill_amount=None, ledger_amount=999),
        ],
        [
            lambda: h0.record_refund_answer("R-H1", outcome="unknown", status_code=0, raw_body="", response_headers={},
                                            request_id="", refund_id="", status="", detail="timeout", answered_at=at),
        ],
    ]  # fmt: skip
    for step in steps:
        for change in step:
            change()
        ledger.save_all(orders)


def test_rebuild_of_long_histories_through_a_small_cache_equals_the_projection(
    database_url: str, ledger_factory: Callable[[], Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders leave a cache of two between their events: each is reloaded at the version it had and
    its rows written again, the newest winning (an order's row and its refunds' rows alike). The
    tables come out as the incremental build made them: same rows, keys and indexes."""
    ledger = ledger_factory()
    _long_histories(ledger)
    project_until_caught_up(database_url, ledger)
    incremental = snapshot(database_url, ORDERS_VIEW)
    shown = {r[1]: r[6] for r in incremental}
    assert shown["ORDER-H0"]["refunds"][0]["status"] == "SUCCESS" and shown["ORDER-H0"]["deliveries"] == 4
    assert shown["ORDER-H1"]["anomalies"] and shown["ORDER-H1"]["open_anomalies"] == 0  # acknowledged
    assert shown["ORDER-H2"]["anomalies"] and shown["ORDER-H2"]["open_anomalies"] == 1  # paid after its close
    monkeypatch.setattr(bulk, "CACHE", 2)
    monkeypatch.setattr(bulk, "BATCH", 1)
    summary = rebuild_orders_view(database_url)
    assert summary.reloads > 0 and summary.orders == 5
    assert snapshot(database_url, summary.new) == incremental
    assert _layout(database_url, summary.new) == _layout(database_url, ORDERS_VIEW)
    with contextlib.closing(open_orders_view(database_url, summary.new)) as view:
        assert view.get(MCHID, "ORDER-H4", "1900000110") is not None
        assert [r["status"] for r in view.refunds(MCHID, "ORDER-H0")] == ["SUCCESS"]


def test_the_bulk_phase_reads_events_as_the_mapper_does(
    database_url: str, ledger_factory: Callable[[], Ledger]
) -> None:
    """Every stored event of every kind an order has, read the short way, is the mapper's event."""
    ledger = ledger_factory()
    _long_histories(ledger)
    read = bulk.event_reader(ledger)
    stored = [e for page in ledger.event_log.select_pages(10**6, OrdersProjection.topics, page=1000) for e in page]
    assert len({topic for _, _, topic, _ in stored}) >= 12
    for originator_id, version, topic, state in stored:
        event = read(originator_id, version, topic, state)
        expected = ledger.mapper.to_domain_event(StoredEvent(originator_id, version, topic, bytes(state)))
        assert type(event) is type(expected) and vars(event) == vars(expected), topic


def _layout(database_url: str, name: str) -> list[str]:
    """The view's tables, keys and indexes as the database describes them, its name left out."""
    with contextlib.closing(open_orders_view(database_url, name)) as view:
        tables = [view.orders_table, view.refunds_table]
        if view.dialect == "sqlite":
            query, params = "SELECT sql FROM sqlite_master WHERE tbl_name IN (%s, %s) AND sql IS NOT NULL", tables
        else:
            query = (
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename IN (%s, %s)"
                " UNION ALL SELECT concat_ws(' ', table_name, column_name, data_type, is_nullable, ordinal_position)"
                " FROM information_schema.columns WHERE table_schema = %s AND table_name IN (%s, %s)"
            )
            params = [view.schema, *tables, view.schema, *tables]
        with view.transaction(commit=False) as cur:
            cur.execute(view.sql(query), params)
            rows = [str(row[0]).replace(view.table_prefix, "VIEW") for row in cur.fetchall()]
    assert len(rows) >= 9, rows  # two tables, seven indexes (and on PostgreSQL two keys and the columns)
    return sorted(rows)


def test_rebuild_is_live_while_the_projector_runs_and_writes_continue(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    fill(ledger, factory, 6)
    with orders_projector_running(database_url):
        writer_done = threading.Event()

        def keep_writing() -> None:
            fill(ledger, factory, 6, offset=100)
            writer_done.set()

        writer = threading.Thread(target=keep_writing)
        writer.start()
        summary = rebuild_orders_view(database_url)
        writer.join(30)
        assert writer_done.is_set()
        fill(ledger, factory, 2, offset=200)  # after the switch: the projector must follow the new version
        with contextlib.closing(open_orders_view(database_url, summary.new)) as view:
            deadline = time.monotonic() + 20
            while view.position() < (ledger.recorder.max_notification_id() or 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert view.position() == ledger.recorder.max_notification_id()
            as_replayed(view, ledger, ("ORDER-8000", "ORDER-8105", "ORDER-8201"))


def test_the_rebuild_command_switches_to_a_view_equal_to_the_incremental_one(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    """`payledger rebuild` as an operator runs it: through bootstrap, in its own process."""
    ledger = ledger_factory()
    incremental = projected(database_url, ledger, factory, 6)
    done = payledger("rebuild", env={**clean_env(), "LEDGER_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    events = ledger.recorder.max_notification_id()
    assert done.stdout.startswith(f"rebuilt {ORDERS_VIEW}_v2 (was {ORDERS_VIEW}): {events:,} events, 6 orders in ")
    assert done.stdout.rstrip().endswith(f"{ORDERS_VIEW}_v2 is live")
    assert live_view(database_url, ORDERS_VIEW) == f"{ORDERS_VIEW}_v2"
    assert snapshot(database_url, f"{ORDERS_VIEW}_v2") == incremental
    unknown = payledger("rebuild", "refunds_view", env={**clean_env(), "LEDGER_DATABASE_URL": database_url})
    assert (unknown.returncode, unknown.stderr.strip()) == (
        2,
        "payledger: unknown projection 'refunds_view' (known: orders_view, notifications_view, activity_view)",
    )
