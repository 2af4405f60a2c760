"""The read path: an order is served from the view only while the view's copy has every event of the
order's stream, and a list's keyset cursor pages through ties exactly once, on both stores."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx

from api.app import create_app
from ledger.application import build_ledger
from ledger.identity import order_id
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.runner import open_orders_view
from projections.read_model.view import ORDER_FIELDS, cursor_decode, cursor_encode
from tests.support.constants import MCHID
from tests.support.projectors import project_until_caught_up
from tests.support.servers import post, running


def _mark_view_copy(database_url: str, out_trade_no: str, description: str) -> None:
    """Change the view's copy of the order behind the projector's back, its version kept."""
    with contextlib.closing(open_orders_view(database_url)) as view:
        document = view.document(MCHID, out_trade_no)
        assert document is not None
        marked = json.dumps({**document[1], "description": description})
        with view.transaction() as cur:
            statement = "UPDATE {orders} SET document = %s WHERE mchid = %s AND out_trade_no = %s"
            cur.execute(view.sql(statement, orders=view.qualify(view.orders_table)), [marked, MCHID, out_trade_no])


def test_the_view_answers_only_while_its_copy_of_the_order_is_current(
    merchant_env: dict[str, str], factory: NotificationFactory, database_url: str
) -> None:
    settings = Settings.load({**merchant_env, "LEDGER_DATABASE_URL": database_url})
    ledger = build_ledger(database_url)
    try:
        with running(create_app(settings, background=False)) as base, httpx.Client(base_url=base) as client:
            assert ledger.event_log.stream_version(order_id(MCHID, "ORDER-9901")) is None
            assert client.post("/orders", json={"out_trade_no": "ORDER-9901", "amount_total": 100}).status_code == 201
            version = ledger.event_log.stream_version(order_id(MCHID, "ORDER-9901"))
            assert version is not None and version >= 2
            project_until_caught_up(database_url, ledger)
            assert client.get("/orders/ORDER-9901").json()["version"] == version
            _mark_view_copy(database_url, "ORDER-9901", "from the view")
            assert client.get("/orders/ORDER-9901").json()["description"] == "from the view"
            # Another order moves the log past the view; this order's copy is still current.
            assert client.post("/orders", json={"out_trade_no": "ORDER-9902", "amount_total": 100}).status_code == 201
            assert client.get("/orders/ORDER-9901").json()["description"] == "from the view"
            assert client.get("/orders/ORDER-9902").json()["trade_state"] == "NOTPAY"  # from its stream
            # Its payment is acknowledged before the view has it: the stream answers, paid.
            assert post(client, factory.paid("ORDER-9901", 100)) == 204
            paid = client.get("/orders/ORDER-9901").json()
            assert (paid["trade_state"], paid["description"]) == ("SUCCESS", "")
            assert paid["version"] == ledger.event_log.stream_version(order_id(MCHID, "ORDER-9901")) > version
            project_until_caught_up(database_url, ledger)
            assert client.get("/orders/ORDER-9901").json() == paid
            assert client.get("/orders/ORDER-9999").status_code == 404
    finally:
        ledger.close()


def _row(mchid: str, sub_mchid: str, out_trade_no: str, updated_at: float) -> dict[str, Any]:
    document = {"out_trade_no": out_trade_no, "mchid": mchid, "sub_mchid": sub_mchid or None}
    values: dict[str, Any] = {name: None for name in ORDER_FIELDS}
    values.update(
        mchid=mchid,
        sub_mchid=sub_mchid,
        out_trade_no=out_trade_no,
        stream_id=out_trade_no,
        registered=True,
        trade_state="SUCCESS",
        refunded_total=0,
        anomalies=0,
        open_anomalies=0,
        version=1,
        created_at=updated_at,
        updated_at=updated_at,
        document=json.dumps(document),
    )
    return values


def test_the_cursor_pages_through_ties_once_in_key_order(database_url: str) -> None:
    # Orders changed at the same instants, under two merchants and two sub-merchants of one.
    rows = [
        _row(mchid, sub, f"ORDER-{n}{i}", at)
        for i, at in enumerate((1_790_000_000.0, 1_790_000_001.5))
        for mchid, sub in (("1900000109", ""), ("1900000200", "1600000001"), ("1900000200", "1600000002"))
        for n in ("7002", "7001", "7003")
    ]
    with contextlib.closing(open_orders_view(database_url)) as view:
        with view.transaction() as cur:
            view.upsert_many(cur, rows, [])
        expected = sorted((r["updated_at"], r["mchid"], r["sub_mchid"], r["out_trade_no"]) for r in rows)
        for limit in (1, 2, 4, 7):
            seen, after = [], None
            while page := view.list_orders(after=after, limit=limit):
                seen += [
                    (r["updated_at"].timestamp(), r["mchid"], r["sub_mchid"] or "", r["out_trade_no"]) for r in page
                ]
                after = cursor_decode(cursor_encode(page[-1]))
            assert seen == expected
        only = view.list_orders(mchid="1900000200", sub_mchid="1600000002", limit=2)
        after = cursor_decode(cursor_encode(only[-1]))
        rest = view.list_orders(mchid="1900000200", sub_mchid="1600000002", after=after, limit=10)
        numbers = ["ORDER-70010", "ORDER-70020", "ORDER-70030", "ORDER-70011", "ORDER-70021", "ORDER-70031"]
        assert [r["out_trade_no"] for r in only + rest] == numbers
