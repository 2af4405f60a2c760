"""Notifications that name no order ([next: Other notification types]): acknowledged, recorded raw,
and visible in the unrouted list (`GET /notifications?routed=false`, `/ui/notifications`), through
the real app on both stores; a payment never is."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from api.bootstrap import bootstrap
from ledger.settings import Settings
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.live import live_view
from projections.read_model.notifications import (
    NOTIFICATIONS_VIEW,
    open_notifications_view,
    run_notifications_projector,
)
from tests.support.constants import MCHID
from tests.support.projectors import run_notifications
from tests.support.sandbox_ledger import SandboxLedger, sandbox_ledger
from tests.support.servers import post, service

TOKEN = "unrouted-t0ken-for-the-tests-only-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class World(SandboxLedger):
    def unrouted(self, **params: str) -> dict[str, Any]:
        response = self.client.get("/notifications", params={"routed": "false", **params}, headers=BEARER)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture
def w(make_sandbox: Callable[..., Sandbox], tmp_path: Path, database_url: str) -> Iterator[World]:
    """The sandbox as WeChat Pay, notifying the ledger's app on `database_url` (behind the admin token)."""
    with sandbox_ledger(World, make_sandbox(), tmp_path / "keys", database_url, LEDGER_ADMIN_TOKEN=TOKEN) as world:
        yield world


def test_a_complaint_is_acknowledged_listed_and_linked_to_its_raw_history_and_a_payment_is_not(w: World) -> None:
    registered = w.client.post("/orders", json={"out_trade_no": "ORDER-8801", "amount_total": 100}, headers=BEARER)
    assert registered.status_code == 201
    w.sandbox.create_order("ORDER-8801", 100)
    w.sandbox.pay("ORDER-8801")
    complaint_id = w.sandbox.complain()
    w.sandbox.wait_idle(10)
    assert sorted((d.event_type, d.status, d.accepted) for d in w.sandbox.deliveries) == [
        ("COMPLAINT.CREATE", 204, True),
        ("TRANSACTION.SUCCESS", 204, True),
    ]
    (complaint,) = [n for n in w.sandbox.notifications if n.event_type == "COMPLAINT.CREATE"]
    assert w.unrouted()["notifications"] == []  # nothing is listed before the projector has run

    run_notifications(w.database_url, w.ledger)
    page = w.unrouted()
    assert page == w.unrouted(routed="")  # routed=false is the default
    (item,) = page["notifications"]  # the payment is in its order's history, not here
    received_at = item.pop("received_at")
    assert item == {
        "mchid": MCHID,
        "notification_id": complaint.id,
        "event_type": "COMPLAINT.CREATE",
        "resource_type": "encrypt-resource",
        "original_type": "complaint",
        "summary": "投诉单创建通知",
        "last_received_at": received_at,
        "deliveries": 1,
        "routed": False,
        "events_url": f"/notifications/{complaint.id}/events?mchid={MCHID}",
    }
    assert abs(dt.datetime.fromisoformat(received_at).timestamp() - time.time()) < 60
    assert page["next_cursor"] is None
    assert page["view"]["behind"] == 0 and page["view"]["position"] == page["view"]["log_position"] > 0

    history = w.client.get(item["events_url"], headers=BEARER).json()
    assert (history["mchid"], history["notification_id"], history["routed"]) == (MCHID, complaint.id, False)
    opened, delivery = history["events"]
    assert (opened["type"], opened["data"]) == ("Opened", {"mchid": MCHID, "notification_id": complaint.id})
    assert delivery["type"] == "NotificationReceived"
    assert delivery["data"]["raw_body"] == complaint.body.decode()  # kept exactly as WeChat sent it
    assert set(delivery["data"]["signature_headers"]) >= {"Wechatpay-Signature", "Wechatpay-Serial"}
    assert delivery["data"]["resource"] == {"complaint_id": complaint_id, "action_type": "CREATE_COMPLAINT"}
    assert [e["type"] for e in w.client.get("/orders/ORDER-8801/events", headers=BEARER).json()["events"]] == [
        "Opened",
        "Registered",
        "NotificationReceived",
        "PaymentSucceeded",
    ]

    listed = w.client.get("/ui/notifications", headers=BEARER)
    assert listed.status_code == 200
    assert 'href="/ui/notifications"' in listed.text  # in the pages' navigation
    assert "COMPLAINT.CREATE" in listed.text and "投诉单创建通知" in listed.text
    link = f'href="/ui/notifications/{complaint.id}?mchid={MCHID}"'
    assert link in listed.text and "ORDER-8801" not in listed.text and "TRANSACTION.SUCCESS" not in listed.text
    shown = w.client.get(f"/ui/notifications/{complaint.id}", params={"mchid": MCHID}, headers=BEARER)
    assert shown.status_code == 200
    assert 'data-type="NotificationReceived"' in shown.text
    assert str(escape(complaint.body.decode())) in shown.text  # the raw body, escaped as the pages escape
    assert complaint_id in shown.text
    assert w.client.get(f"/ui/notifications/{complaint.id}").status_code == 401  # the login form, no data
    assert complaint.id not in w.client.get("/ui/notifications").text


def test_retries_collapse_into_one_row_and_the_list_pages_and_filters(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory
) -> None:
    with service(merchant_env, database_url, LEDGER_ADMIN_TOKEN=TOKEN) as (client, ledger):
        complaint = factory.envelope({"complaint_id": "200201820200101080076610000"}, "COMPLAINT.CREATE")
        first = factory.deliver(complaint)
        assert post(client, first) == 204
        assert post(client, first) == 204  # a byte-identical replay: no new event
        payout = {"out_bill_no": "plfk2020042013", "transfer_bill_no": "1330000071100999991182020050700019480001"}
        sharing = {
            "mchid": MCHID,
            "transaction_id": "4208450740201411110007820472",
            "order_id": "3008450740201411110007820472",
        }
        for body in (
            factory.envelope(payout, "MCHTRANSFER.BILL.FINISHED"),
            factory.envelope({**sharing, "out_order_no": "P20150806125346"}, "PROFITSHARING.SUCCESS"),
            factory.envelope({"stock_id": "9856000"}, "COUPON.USE", summary="用券"),
        ):
            assert post(client, factory.deliver(body)) == 204
        time.sleep(0.01)
        assert post(client, factory.deliver(complaint)) == 204  # WeChat's retry, re-signed: recorded
        assert post(client, factory.paid("ORDER-8811", 100)) == 204
        lag = 'payledger_projection_lag_events{projection="notifications_view"}'
        assert f"{lag} 5.0" in client.get("/metrics", headers=BEARER).text  # five deliveries, no payment
        run_notifications(database_url, ledger)
        assert f"{lag} 0.0" in client.get("/metrics", headers=BEARER).text

        def listed(**params: str) -> dict[str, Any]:
            response = client.get("/notifications", params=params, headers=BEARER)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        everything = listed()["notifications"]
        assert [n["event_type"] for n in everything] == [
            "COMPLAINT.CREATE",
            "MCHTRANSFER.BILL.FINISHED",
            "PROFITSHARING.SUCCESS",
            "COUPON.USE",
        ]
        complained = everything[0]
        assert complained["deliveries"] == 2 and complained["last_received_at"] > complained["received_at"]
        assert [e["type"] for e in client.get(complained["events_url"], headers=BEARER).json()["events"]] == [
            "Opened",
            "NotificationReceived",
            "NotificationReceived",
        ]
        assert everything[3]["summary"] == "用券" and everything[1]["original_type"] == "mch_payment"

        one = listed(limit="3")
        assert [n["notification_id"] for n in one["notifications"]] == [n["notification_id"] for n in everything[:3]]
        assert one["next_cursor"] is not None
        rest = listed(limit="3", cursor=one["next_cursor"])
        assert (rest["notifications"], rest["next_cursor"]) == (everything[3:], None)
        assert listed(event_type="PROFITSHARING.SUCCESS")["notifications"] == [everything[2]]
        assert listed(mchid="1900000999")["notifications"] == []
        assert listed(mchid=MCHID, event_type="")["notifications"] == everything

        for params, message in (
            ({"routed": "true"}, "routed=true is not listed"),
            ({"routed": "maybe"}, "routed must be false"),
            ({"limit": "0"}, "limit must be"),
            ({"limit": "501"}, "limit must be"),
            ({"cursor": "[1, 2]"}, "bad cursor"),
            ({"event_type": "complaint.create"}, "event_type must be"),
        ):
            refused = client.get("/notifications", params=params, headers=BEARER)
            assert refused.status_code == 400, params
            assert refused.json()["code"] == "INVALID_REQUEST" and message in refused.json()["message"]
        assert client.get("/notifications").status_code == 401
        assert client.get(complained["events_url"]).status_code == 401
        missing = client.get("/notifications/no-such-notification/events", headers=BEARER)
        assert (missing.status_code, missing.json()) == (
            404,
            {"code": "NOT_FOUND", "message": "notification not found"},
        )
        unknown = client.get(f"/notifications/{complained['notification_id']}/events?mchid=1900000999", headers=BEARER)
        assert unknown.status_code == 400
        ui_missing = client.get("/ui/notifications/no-such-notification", headers=BEARER)
        assert ui_missing.status_code == 404 and "No such notification." in ui_missing.text
        filtered = client.get("/ui/notifications", params={"event_type": "COUPON.USE"}, headers=BEARER).text
        assert "COUPON.USE" in filtered and "MCHTRANSFER.BILL.FINISHED" not in filtered
        assert client.get("/ui/notifications", params={"before": "x"}, headers=BEARER).status_code == 400


def test_the_projector_of_payledger_project_lists_a_complaint_as_it_comes(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory
) -> None:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url})
    services = bootstrap(settings)
    stop = threading.Event()
    try:
        assert "notifications-view" in [t.name for t in services.projector_threads(stop)]
    finally:
        services.close()
    with service(merchant_env, database_url, LEDGER_ADMIN_TOKEN=TOKEN) as (client, _):
        worker = threading.Thread(target=run_notifications_projector, args=(database_url, stop, 0.05))
        worker.start()
        try:
            delivery = factory.deliver(factory.envelope({"complaint_id": "2002018202001010800766"}, "COMPLAINT.CREATE"))
            assert post(client, delivery) == 204
            deadline = time.monotonic() + 20
            while not (found := client.get("/notifications", headers=BEARER).json()["notifications"]):
                assert time.monotonic() < deadline, "the projector never listed the complaint"
                time.sleep(0.05)
            assert [n["notification_id"] for n in found] == [delivery.notification_id]
        finally:
            stop.set()
            worker.join(10)
        assert not worker.is_alive()


def test_a_rebuild_makes_a_new_version_from_the_log_and_the_api_follows_it(
    merchant_env: dict[str, str], database_url: str, factory: NotificationFactory
) -> None:
    with service(merchant_env, database_url, LEDGER_ADMIN_TOKEN=TOKEN) as (client, ledger):
        ids = []
        for n in range(3):
            delivery = factory.deliver(
                factory.envelope({"complaint_id": f"20020182020010108007661000{n}"}, "COMPLAINT.CREATE")
            )
            assert post(client, delivery) == 204
            ids.append(delivery.notification_id)
        run_notifications(database_url, ledger)
        before = client.get("/notifications", headers=BEARER).json()["notifications"]
        assert [n["notification_id"] for n in before] == ids
        services = bootstrap(Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url}), ledger=ledger)
        try:
            rebuilt = services.rebuild_notifications_view()
        finally:
            services.close()
        assert (rebuilt.old, rebuilt.new, rebuilt.notifications) == (NOTIFICATIONS_VIEW, f"{NOTIFICATIONS_VIEW}_v2", 3)
        assert str(rebuilt).startswith("rebuilt notifications_view_v2 (was notifications_view): 3 unrouted")
        assert live_view(database_url, NOTIFICATIONS_VIEW) == f"{NOTIFICATIONS_VIEW}_v2"
        view = open_notifications_view(database_url, f"{NOTIFICATIONS_VIEW}_v2")
        with contextlib.closing(view):
            assert [r["notification_id"] for r in view.unrouted()] == ids
        time.sleep(1.1)  # the API re-reads the live pointer at most once a second
        after = client.get("/notifications", headers=BEARER).json()
        assert after["notifications"] == before and after["view"]["behind"] == 0
