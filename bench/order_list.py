"""The operator's lists at scale: each orders filter timed with its plan, then the pages themselves.

Seeds N orders straight into a fresh orders view (as the projection writes them: one direct merchant,
a service provider with 50 sub-merchants, WeChat-like states, 90 days of orders, 0.5% with an
anomaly) and N outbound messages to three endpoints (1 in 500 not delivered, attempts in the last
hour); times `list_orders` for each filter (p50 and p99 of --repeat runs, first page and the page
after row 2,000 by its keyset) and prints the plan each store chose; then serves the app and times
`GET /ui/orders` (a few filters), `/ui/deliveries`, `/ui/endpoints` and the CSV of every order.

    .venv/bin/python bench/order_list.py                 # both stores, 100,000 orders
    .venv/bin/python bench/order_list.py --store sqlite --orders 20000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.testclient import TestClient

from api.app import create_app
from bench.seeding import drop_scratch_store, scratch_store
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.order_list import OrderFilter, list_key, list_orders
from projections.read_model.runner import open_orders_view
from projections.read_model.view import OrdersView
from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import outbox_url, sql

DIRECT, PROVIDER = "1900000109", "1900000200"
SUBS = [f"19100{n:05d}" for n in range(50)]
STATES = ["SUCCESS"] * 70 + ["CLOSED"] * 15 + ["NOTPAY"] * 10 + ["REFUND"] * 4 + ["PAYERROR"]
DAY = 86400.0
NOW = 1_796_000_000.0


def _rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        direct = rng.random() < 0.3
        state = rng.choice(STATES)
        paid = state in ("SUCCESS", "REFUND")
        created = NOW - rng.random() * 90 * DAY
        amount = int(10 ** rng.uniform(0, 6))
        rows.append(
            {
                "mchid": DIRECT if direct else PROVIDER,
                "sub_mchid": "" if direct else rng.choice(SUBS),
                "out_trade_no": f"T{int(created)}{i:07d}",
                "stream_id": str(uuid.UUID(int=i)),
                "registered": True,
                "trade_state": state,
                "amount_total": amount,
                "currency": "CNY",
                "transaction_id": f"4200{i:024d}" if paid else None,
                "success_time": "2026-11-28T10:00:00+08:00" if paid else None,
                "paid_total": amount if paid else None,
                "refunded_total": amount if state == "REFUND" else 0,
                "anomalies": (anomalous := 1 if rng.random() < 0.005 else 0),
                "open_anomalies": anomalous,
                "version": 3,
                "created_at": created,
                "updated_at": created + 5,
                "combine_out_trade_no": None,
                "document": '{"summary":"' + "x" * 400 + '"}',
            }
        )
    return rows


CASES: dict[str, OrderFilter] = {
    "no filter": OrderFilter(),
    "state CLOSED": OrderFilter(trade_state="CLOSED"),
    "state PAYERROR (1%)": OrderFilter(trade_state="PAYERROR"),
    "direct merchant": OrderFilter(mchid=DIRECT, sub_mchid=""),
    "provider, all subs": OrderFilter(mchid=PROVIDER),
    "one sub-merchant": OrderFilter(mchid=PROVIDER, sub_mchid=SUBS[7]),
    "anomalies (0.5%)": OrderFilter(anomalous=True),
    "one day": OrderFilter(since=NOW - 30 * DAY, until=NOW - 29 * DAY),
    "amount 100-200 yuan": OrderFilter(amount_min=10000, amount_max=20000),
    "amount >= 9,000 yuan (1%)": OrderFilter(amount_min=900000),
    "amount >= 5,000 yuan (5%)": OrderFilter(amount_min=500000),
    "amount 1.00 yuan exactly": OrderFilter(amount_min=100, amount_max=100),
    "sub-merchant alone (1/50)": OrderFilter(sub_mchid=SUBS[9]),
    "anomalies + amount >= 1 yuan": OrderFilter(anomalous=True, amount_min=100),
    "number prefix (13%)": OrderFilter(number="T1795"),
    "number prefix (~10 rows)": OrderFilter(number="T179400"),
    "transaction_id prefix": OrderFilter(number="42000000000000000000000123"),
    "state + sub + 30 days": OrderFilter(
        trade_state="SUCCESS", mchid=PROVIDER, sub_mchid=SUBS[3], since=NOW - 30 * DAY
    ),
}


def _plan(view: OrdersView, where_: OrderFilter) -> str:
    explain = "EXPLAIN QUERY PLAN " if view.dialect == "sqlite" else "EXPLAIN "
    captured: list[tuple[str, list[Any]]] = []

    def capture(names: Any, text: str, params: Any) -> list[dict[str, Any]]:
        captured.append((text, list(params)))
        return select(names, text, params)

    select, view.select = view.select, capture  # type: ignore[method-assign]
    try:
        list_orders(view, where_, limit=51)
    finally:
        del view.select
    text, params = captured[-1]
    with view.transaction(commit=False) as cur:
        cur.execute(view.sql(explain + text, **view._slots), params)
        return " | ".join(str(row[-1]).strip() for row in cur.fetchall())


def _time(run: Any, repeat: int) -> tuple[float, float]:
    took = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        took.append((time.perf_counter() - start) * 1000)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.99))]


def bench(url: str, orders: int, repeat: int) -> None:
    view = open_orders_view(url)
    rng = random.Random(1)
    started = time.perf_counter()
    for start in range(0, orders, 5000):
        with view.transaction() as cur:
            view.upsert_many(cur, _rows(min(5000, orders - start), rng), [])
    if view.dialect == "postgres":
        with view.transaction() as cur:
            cur.execute(view.sql("ANALYZE {orders}", **view._slots))
    print(f"{view.dialect}: {orders:,} orders seeded in {time.perf_counter() - started:.1f}s")
    print(f"{'filter':28} {'first p50':>9} {'p99':>7} {'deep p50':>9} {'p99':>7}  plan")
    for name, where_ in CASES.items():
        first = _time(lambda w=where_: list_orders(view, w, limit=51), repeat)
        walked = list_orders(view, where_, limit=2000)
        after = list_key(walked[-1]) if len(walked) == 2000 else None
        deep = _time(lambda w=where_, a=after: list_orders(view, w, after=a, limit=51), repeat) if after else None
        deep_text = f"{deep[0]:9.2f} {deep[1]:7.2f}" if deep else f"{'-':>9} {'-':>7}"
        print(f"{name:28} {first[0]:9.2f} {first[1]:7.2f} {deep_text}  {_plan(view, where_)}")
    view.close()


def _seed_outbox(url: str, n: int) -> None:
    """`n` messages to three endpoints, 1 in 500 dead, failing or pending, each with an attempt or two."""
    database = Database(outbox_url(url))
    outbox = Outbox(database)
    endpoints = [outbox.endpoints.add(f"http://127.0.0.1:9/hook{i}").id for i in range(3)]
    now, rng = time.time(), random.Random(2)
    messages, attempts = [], []
    for i in range(n):
        state = "delivered" if i % 500 else rng.choice(["dead", "failing", "pending"])
        created = now - (n - i) * 0.03
        message = f"msg_{i:032x}"
        messages.append(
            (
                message,
                f"s{i}",
                endpoints[i % 3],
                "PaymentSucceeded",
                DIRECT,
                f"O{i}",
                1,
                "{}",
                state,
                1,
                created,
                created,
            )
        )
        attempts.append((message, created + 1, 200 if state == "delivered" else 500, 12.0, "", None))
        if i % 7 == 0:
            attempts.append((message, created + 0.5, 503, 30.0, "", None))
    with database.transaction() as cur:
        cur.executemany(
            sql(
                database,
                "INSERT INTO {outbox} (id, source_id, endpoint_id, event_type, mchid, out_trade_no, stream_version,"
                " body, state, attempts, next_attempt_at, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, %s)",
            ),
            messages,
        )
        cur.executemany(
            sql(
                database,
                "INSERT INTO {attempts} (message_id, attempted_at, status, duration_ms, response_body, error)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
            ),
            attempts,
        )
        if database.dialect == "postgres":
            cur.execute(sql(database, "ANALYZE {outbox}"))
            cur.execute(sql(database, "ANALYZE {attempts}"))
    database.close()


PAGES = {
    "/ui/orders": {},
    "/ui/orders?state=PAYERROR": {},
    f"/ui/orders?mchid={PROVIDER}&sub_mchid={SUBS[7]}&from=2026-11-01": {},
    "/ui/orders?min=9000": {},
    "/ui/orders?q=T1795": {},
    "/ui/deliveries": {},
    "/ui/deliveries?state=dead": {},
    "/ui/endpoints": {},
}


def _pages(url: str, scratch: str, repeat: int) -> None:
    keys = NotificationFactory(mchid=DIRECT).write_keys(Path(scratch) / "keys")
    settings = Settings.load({**keys, "LEDGER_DATABASE_URL": url, "LEDGER_ADMIN_TOKEN": "bench-" + "t" * 32})
    bearer = {"Authorization": "Bearer bench-" + "t" * 32}
    with TestClient(create_app(settings, background=False), base_url="https://testserver") as client:
        print(f"{'page':60} {'p50':>7} {'p99':>7}")
        for path in PAGES:
            assert client.get(path, headers=bearer).status_code == 200, path
            p50, p99 = _time(lambda p=path: client.get(p, headers=bearer), repeat)
            print(f"{path:60} {p50:7.2f} {p99:7.2f}")
        started = time.perf_counter()
        exported = client.get("/ui/orders.csv", headers=bearer)
        took = time.perf_counter() - started
        rows = exported.text.count("\n") - 1
        print(f"/ui/orders.csv: {rows:,} rows, {len(exported.content) / 1e6:.1f} MB in {took:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    for store in ("sqlite", "postgres") if args.store == "both" else (args.store,):
        with tempfile.TemporaryDirectory() as scratch:
            url, schema = scratch_store(store, scratch, f"bench_list_{uuid.uuid4().hex[:8]}")
            try:
                bench(url, args.orders, args.repeat)
                _seed_outbox(url, args.orders)
                _pages(url, scratch, args.repeat)
            finally:
                drop_scratch_store(schema)


if __name__ == "__main__":
    main()
