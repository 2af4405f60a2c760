"""Blue/green rebuild: identical to the incremental build, live while everything keeps running."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from ledger.application import Ledger
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model import rebuild
from projections.read_model.live import live_view
from projections.read_model.rebuild import rebuild_orders_view
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDERS_VIEW
from tests.support.cli import clean_env, payledger
from tests.support.constants import MCHID
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
        original = rebuild._delivery_timestamp
        monkeypatch.setattr(rebuild, "_delivery_timestamp", lambda state: folded.append(original(state)) or folded[-1])
    else:
        monkeypatch.setattr(rebuild, "_TIMESTAMP_PREFIX", b'{"not-the-layout":')
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
