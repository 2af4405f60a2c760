"""The orders read model: built from the log exactly once, served read-your-writes, one projector."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from eventsourcing.persistence import Tracking

from api.app import create_app
from ledger.application import Ledger, build_ledger
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.locks import ProjectorLock
from projections.read_model.runner import open_orders_view, start_orders_projector
from projections.read_model.view import ORDERS_VIEW, OrdersProjection
from tests.support.constants import MCHID
from tests.support.orders import as_replayed, fill
from tests.support.projectors import project_until_caught_up
from tests.support.servers import running


def test_view_matches_the_aggregates(
    database_url: str, ledger_factory: Callable[[], Ledger], factory: NotificationFactory
) -> None:
    ledger = ledger_factory()
    numbers = fill(ledger, factory, 12)
    project_until_caught_up(database_url, ledger)
    with contextlib.closing(open_orders_view(database_url)) as view:
        assert view.position() == ledger.recorder.max_notification_id()
        as_replayed(view, ledger, numbers)
        assert [r["out_trade_no"] for r in view.list_orders(trade_state="NOTPAY")] == numbers[2::3]
        assert len(view.refunds(MCHID, numbers[0])) == 1


def test_a_crash_mid_way_repeats_nothing_and_skips_nothing(
    database_url: str,
    ledger_factory: Callable[[], Ledger],
    factory: NotificationFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows and tracking commit together: a failure after the rows, before the commit, rolls both back."""
    ledger = ledger_factory()
    numbers = fill(ledger, factory, 6)
    calls = {"n": 0}
    original = OrdersProjection.process_event

    def crashing(self: OrdersProjection, event: Any, tracking: Tracking) -> None:
        calls["n"] += 1
        if calls["n"] == 7:
            view = self.view
            real = view.write_tracking

            def boom(curs: Any, tracking: Tracking) -> None:
                raise RuntimeError("projector killed between the rows and the commit")

            view.write_tracking = boom
            try:
                original(self, event, tracking)
            finally:
                view.write_tracking = real
        original(self, event, tracking)

    monkeypatch.setattr(OrdersProjection, "process_event", crashing)
    runner, view, loader = start_orders_projector(database_url)
    with pytest.raises(RuntimeError, match="killed"), runner:
        runner.run_forever(timeout=20)
    crashed_at = view.position()
    loader.close()
    assert 0 < crashed_at < (ledger.recorder.max_notification_id() or 0)
    monkeypatch.setattr(OrdersProjection, "process_event", original)
    project_until_caught_up(database_url, ledger)
    with contextlib.closing(open_orders_view(database_url)) as view:
        assert view.position() == ledger.recorder.max_notification_id()
        as_replayed(view, ledger, numbers)


def test_two_projectors_never_both_run(database_url: str, ledger_factory: Callable[[], Ledger]) -> None:
    ledger_factory()  # creates the tables
    first, second = ProjectorLock(database_url, ORDERS_VIEW), ProjectorLock(database_url, ORDERS_VIEW)
    stop = threading.Event()
    assert first.acquire(stop)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(second.acquire(stop, poll=0.05)))
    waiter.start()
    time.sleep(0.5)
    assert got == []  # still waiting while the first holds it
    first.release()
    waiter.join(10)
    assert got == [True]
    second.release()


def test_api_reads_its_writes_and_lists_from_the_view(
    merchant_env: dict[str, str], factory: NotificationFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": url})
    with running(create_app(settings, background=False)) as base, httpx.Client(base_url=base) as client:
        client.post("/orders", json={"out_trade_no": "ORDER-8801", "amount_total": 100})
        paid = factory.paid("ORDER-8801", 100)
        assert client.post("/wechatpay/notify", content=paid.body, headers=paid.headers).status_code == 204
        # No projector has run: the view is behind, so the order comes from its stream.
        assert client.get("/orders/ORDER-8801").json()["trade_state"] == "SUCCESS"
        listed = client.get("/orders").json()
        assert (
            listed["orders"] == [] and listed["view"]["behind"] == 4
        )  # Opened, Registered, NotificationReceived, PaymentSucceeded
        ledger = build_ledger(url)
        project_until_caught_up(url, ledger)
        ledger.close()
        listed = client.get("/orders", params={"trade_state": "SUCCESS", "limit": 10}).json()
        assert [o["out_trade_no"] for o in listed["orders"]] == ["ORDER-8801"]
        assert listed["view"]["behind"] == 0
        # The same document; reading one order adds what the daily bills say of it (never billed here).
        assert client.get("/orders/ORDER-8801").json() == {**listed["orders"][0], "fee_fen": None, "net_fen": None}
        assert client.get("/orders", params={"trade_state": "BOGUS"}).status_code == 400
        assert client.get("/orders/ORDER-8899").status_code == 404


def test_cursor_pages_through_every_order_once(sqlite_url: str, factory: NotificationFactory) -> None:
    ledger = build_ledger(sqlite_url)
    numbers = fill(ledger, factory, 9)
    project_until_caught_up(sqlite_url, ledger)
    view = open_orders_view(sqlite_url)
    from projections.read_model.view import cursor_decode, cursor_encode

    seen: list[str] = []
    after = None
    while True:
        page = view.list_orders(after=after, limit=4)
        seen += [r["out_trade_no"] for r in page]
        if len(page) < 4:
            break
        after = cursor_decode(cursor_encode(page[-1]))
    view.datastore.close()  # type: ignore[attr-defined]
    ledger.close()
    assert sorted(seen) == sorted(numbers) and len(seen) == len(set(seen))


def test_projection_lag_is_exported_as_a_metric(
    merchant_env: dict[str, str], factory: NotificationFactory, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": url, "LEDGER_ADMIN_TOKEN": "x" * 20})
    with running(create_app(settings, background=False)) as base, httpx.Client(base_url=base) as client:
        auth = {"Authorization": "Bearer " + "x" * 20}
        client.post("/orders", json={"out_trade_no": "ORDER-8901", "amount_total": 100}, headers=auth)
        assert client.get("/metrics").status_code == 401
        text = client.get("/metrics", headers=auth).text
        assert 'payledger_projection_lag_events{projection="orders_view"} 2.0' in text
        ledger = build_ledger(url)
        project_until_caught_up(url, ledger)
        ledger.close()
        assert (
            'payledger_projection_lag_events{projection="orders_view"} 0.0' in client.get("/metrics", headers=auth).text
        )
