"""`payledger demo`: the ledger and the sandbox on loopback, a scripted day of payments.

It registers orders, pays them, lets WeChat send duplicates and a probe, refunds part of one
order, drops one callback and lets reconciliation recover it by query, then prints each
order's state and audit trail and leaves both services running until interrupted.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ledger.settings import Settings

__all__ = ["run_demo"]

ORDERS = [
    ("DEMO-0001", 2500, "茶叶 tea"),
    ("DEMO-0002", 999, "book"),
    ("DEMO-0003", 4200, "lamp"),
    ("DEMO-0004", 150, "gum"),
]


@contextmanager
def _serve(app: Any, host: str, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"could not start a server on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _history_lines(client: httpx.Client, out_trade_no: str) -> list[str]:
    events = client.get(f"/orders/{out_trade_no}/events").json()["events"]
    lines = []
    for e in events:
        data = e["data"]
        detail = ""
        if e["type"] == "NotificationReceived":
            detail = f"{data['event_type']} id={data['notification_id'][:13]}…"
        elif e["type"] == "StatusQueried":
            detail = f"trade_state={data['transaction'].get('trade_state')}"
        elif e["type"] == "PaymentSucceeded":
            detail = f"transaction_id={data['transaction_id']} amount_total={data['amount_total']}"
        elif e["type"].startswith("Refund"):
            detail = f"out_refund_no={data['out_refund_no']} refund={data['refund']}"
        elif e["type"] == "Registered":
            detail = f"amount_total={data['amount_total']} {data['currency']}"
        elif e["type"] == "TradeStateChanged":
            detail = f"{data['from_state']} -> {data['to_state']}"
        lines.append(f"    v{e['version']:<3} {e['type']:<22} {detail}")
    return lines


def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sandbox_port: int = 8090,
    folder: Path = Path("payledger-demo"),
    wait: bool = True,
    out: Callable[[str], None] = print,
) -> int:
    from api.app import create_app
    from ledger.bootstrap import bootstrap
    from ledger.store.sql import Database
    from ledger.wechatpay.sandbox.server import Sandbox
    from projections.reconcile.reconciler import Reconciler
    from projections.reconcile.worklist import Worklist

    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    logging.basicConfig(
        filename=folder / "ledger.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # WeChat's retry schedule, 200 times faster: the 15 s retry after a failed answer takes 75 ms.
    sandbox = Sandbox(seed=2026, time_scale=200)
    with _serve(sandbox.app, host, sandbox_port) as sandbox_url:
        env = sandbox.write_ledger_config(folder / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = f"sqlite:///{folder / 'ledger.sqlite3'}"
        env["LEDGER_RECONCILE_SCHEDULE"] = "1,5,30,60"
        settings = Settings.load(env)
        with (
            _serve(create_app(settings), host, port) as ledger_url,
            httpx.Client(base_url=ledger_url, timeout=30) as api,
        ):
            sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
            out(f"ledger  {ledger_url}  (SQLite {folder / 'ledger.sqlite3'})")
            out(f"sandbox {sandbox_url}  (fake WeChat Pay; ledger keys in {folder / 'keys'})\n")

            for no, amount, description in ORDERS:
                api.post("/orders", json={"out_trade_no": no, "amount_total": amount, "description": description})
                sandbox.create_order(no, amount, description)
            out("registered DEMO-0001..0004")

            sandbox.pay("DEMO-0001")
            sandbox.pay("DEMO-0002")
            sandbox.pay("DEMO-0003", drop=True)
            sandbox.wait_idle(10)
            out("paid DEMO-0001, DEMO-0002; DEMO-0003 paid but WeChat's callback is lost; DEMO-0004 unpaid")

            paid = sandbox.notifications[0]
            replay = sandbox.factory.sign_headers(paid.body)
            answers = [api.post("/wechatpay/notify", content=paid.body, headers=replay).status_code for _ in range(2)]
            out(
                f"DEMO-0001's notification again, re-signed as WeChat retries it, then byte-identical "
                f"(answers {answers}): the retry is recorded, the replay is not, the payment is decided once"
            )
            probe = dict(replay, **{"Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + "A" * 40})
            probed = api.post("/wechatpay/notify", content=paid.body, headers=probe)
            out(
                f"WeChat sends a signature probe: answered {probed.status_code} "
                f"{probed.json()['message']!r}, nothing stored"
            )

            sandbox.refund("DEMO-0001", "DEMO-R-0001", 700)
            sandbox.wait_idle(10)
            out("refunded 700 of DEMO-0001's 2500 fen")

            services = bootstrap(settings)
            database = Database(env["LEDGER_DATABASE_URL"])
            worklist = Worklist(database)
            try:
                reconciler = Reconciler(services.ledger, worklist, services.query, schedule=settings.reconcile_schedule)
                time.sleep(1.05)  # the first query is due 1 s after registration in the demo
                out("reconciliation pass (queries WeChat for orders whose callback has not come):")
                for change in reconciler.run_pass():
                    out(f"    {change}")
            finally:
                database.close()
                services.close()

            out("")
            for no, _, _ in ORDERS:
                order = api.get(f"/orders/{no}").json()
                out(
                    f"{no}: {order['trade_state']:<7} amount_total={order['amount_total']} "
                    f"refunded_total={order['refunded_total']} deliveries={order['deliveries']} "
                    f"anomalies={len(order['anomalies'])}"
                )
                for line in _history_lines(api, no):
                    out(line)
            out(
                f"\nscripted part finished in {time.monotonic() - started:.1f} s; "
                f"the service log is {folder / 'ledger.log'}"
            )
            out(f"open {ledger_url}/orders/DEMO-0003/events for the recovered order's audit trail")
            out(f"or {ledger_url}/ui/orders/DEMO-0003 for the same history as an operator's page")
            if not wait:
                return 0
            out("the ledger and the sandbox keep running; press Ctrl-C to stop")
            sys.stdout.flush()
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                out("stopped")
    return 0
