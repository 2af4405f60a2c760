"""`payledger demo`: the ledger and the sandbox on loopback, a scripted day of payments.

It registers orders, pays them, lets WeChat send duplicates and a probe, refunds part of one
order and closes an unpaid one through the ledger, drops one callback and lets reconciliation
recover it by query, then prints each order's state and audit trail. Last, the day's bill: one
payment the ledger never heard of is planted (paid at WeChat, never registered, its callback
lost), and the bill reconciliation finds it and resolves it by query. Then a combined payment
(合单: one notification settles two sub-orders, each in its own history) and a refund made in the
merchant console (an APIv2 XML notification, decided once a refund query confirms it). Both
services keep running until interrupted.
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

from api.app import create_app
from api.bootstrap import Services, bootstrap
from cli.bills import render_report
from ledger.settings import Settings
from ledger.wechatpay.sandbox.server import Sandbox, SubOrder
from projections.bills.service import beijing_today
from projections.timeline import facts

__all__ = ["run_demo", "serving"]

ORDERS = [
    ("DEMO-0001", 2500, "茶叶 tea"),
    ("DEMO-0002", 999, "book"),
    ("DEMO-0003", 4200, "lamp"),
    ("DEMO-0004", 150, "gum"),
]


@contextmanager
def serving(app: Any, host: str, port: int) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread (its lifespan run); yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
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
    """Each event of the order on one line, with the key facts the CLI's history shows."""
    events = client.get(f"/orders/{out_trade_no}/events").json()["events"]
    return [f"    v{e['version']:<3} {e['type']:<22} {facts(e['type'], e['data'])}" for e in events]


PLANTED = ("DEMO-0005", 3300, "umbrella")
"""Paid at WeChat, never registered with the ledger, its callback lost: only the daily bill can find it."""
_MEANING = {
    "missing_in_ledger": "the bill lists the payment, the ledger had no decision; queried at once, it is decided",
    "missing_in_bill": "the ledger decided a payment the bill does not list",
    "amount_mismatch": "the bill and the ledger have different amounts",
}


def _daily_bill(sandbox: Sandbox, services: Services, api: httpx.Client, out: Callable[[str], None]) -> None:
    """Plant one difference, reconcile today's bill, say what was found (the CLI's report)."""
    no, amount, description = PLANTED
    sandbox.create_order(no, amount, description)
    sandbox.pay(no, drop=True)
    day = beijing_today()
    out(
        f"\ndaily bill of {day} (Beijing; the sandbox makes a day's bill at once, WeChat the next morning).\n"
        f"planted: {no} paid at WeChat ({amount} fen) but never registered with the ledger and its callback "
        f"lost, so neither a callback nor the reconciler can learn of it"
    )
    report = services.bills.reconcile(sandbox.mchid, day)
    out(render_report(report))
    out(f"found: {len(report.discrepancies)} difference(s)")
    for found in report.discrepancies:
        outcome = "resolved" if found.resolved else "unresolved"
        out(f"    {found.kind} {found.out_trade_no}: {_MEANING.get(str(found.kind), '')} ({outcome})")
    out(f"{no}'s history (`payledger history {no}`):")
    for line in _history_lines(api, no):
        out(line)


COMBINED = "DEMO-COMBINE-01"
SUB_ORDERS = [("DEMO-0006", 1200, "teapot"), ("DEMO-0007", 800, "cups")]
"""A combined payment (合单): one notification settles both sub-orders, each in its own history."""
CONSOLE_REFUND = ("DEMO-0002", "DEMO-R-0002", 300)
"""Refunded in the merchant console: WeChat tells it in APIv2 XML, even to an APIv3 merchant."""


def _refund_and_close(api: httpx.Client, out: Callable[[str], None]) -> None:
    """A refund and a close asked through the ledger: decided against the order, recorded before they are sent."""
    asked = api.post(
        "/orders/DEMO-0001/refunds", json={"out_refund_no": "DEMO-R-0001", "amount": 700, "reason": "破损"}
    )
    beyond = api.post("/orders/DEMO-0001/refunds", json={"out_refund_no": "DEMO-R-0009", "amount": 1801})
    deadline = time.monotonic() + 10  # WeChat takes a moment to pay it back, then says so
    while api.get("/orders/DEMO-0001").json()["refunded_total"] != 700 and time.monotonic() < deadline:
        time.sleep(0.05)
    out(
        f"asked the ledger to refund 700 of DEMO-0001's 2500 fen: answered {asked.status_code} "
        f"({asked.json()['refund']['outcome']}; recorded before it was sent), WeChat's REFUND.SUCCESS decided it; "
        f"1801 more answered {beyond.status_code} ({beyond.json()['message']}), nothing sent"
    )
    closed = api.post("/orders/DEMO-0004/close")
    out(f"closed unpaid DEMO-0004 through the ledger: answered {closed.status_code}, {closed.json()['trade_state']}")


def _combined_payment(sandbox: Sandbox, api: httpx.Client, out: Callable[[str], None]) -> None:
    """Register two sub-orders of one combined payment, pay them together, show each order's own decision."""
    for no, amount, description in SUB_ORDERS:
        body = {"out_trade_no": no, "amount_total": amount, "description": description}
        api.post("/orders", json={**body, "combine_out_trade_no": COMBINED})
    sandbox.create_combined_order(COMBINED, [SubOrder(no, amount, description=d) for no, amount, d in SUB_ORDERS])
    sandbox.pay_combined_order(COMBINED)
    sandbox.wait_idle(10)
    (told,) = [n for n in sandbox.notifications if n.combine_out_trade_no == COMBINED]
    numbers = " and ".join(no for no, _, _ in SUB_ORDERS)
    out(
        f"\ncombined payment (合单) {COMBINED}: {numbers} registered as its sub-orders, paid together, "
        f"told in ONE notification ({told.id}); each order's history holds that delivery and its own "
        f"PaymentSucceeded with its own amount"
    )
    for no, _, _ in SUB_ORDERS:
        order = api.get(f"/orders/{no}").json()
        out(
            f"{no}: {order['trade_state']:<7} amount_total={order['amount_total']} paid_total={order['paid_total']} "
            f"combine_out_trade_no={order['combine_out_trade_no']}"
        )
        for line in _history_lines(api, no):
            out(line)


def _console_refund(sandbox: Sandbox, api: httpx.Client, out: Callable[[str], None]) -> None:
    """A refund made in the merchant console: an APIv2 XML notification, decided once a refund query confirms it."""
    no, out_refund_no, amount = CONSOLE_REFUND
    sandbox.refund(no, out_refund_no, amount, api="v2", source="VENDOR_PLATFORM")
    sandbox.wait_idle(10)
    answers = [d.status for d in sandbox.deliveries if d.event_type.startswith("REFUND") and d.status != 204]
    # The answer does not wait for WeChat: the refund query that confirms the refund runs just after it.
    deadline = time.monotonic() + 10
    while not _has_event(api, no, "RefundSucceeded") and time.monotonic() < deadline:
        time.sleep(0.05)
    out(
        f"\nrefunded {amount} of {no}'s fen in the merchant console: WeChat told it in APIv2 XML to "
        f"/wechatpay/v2/notify (answered {answers}: 200 is the SUCCESS XML); its req_info carries no signature, so "
        f"the ledger confirmed it by a refund query before deciding"
    )
    order = api.get(f"/orders/{no}").json()
    out(
        f"{no}: {order['trade_state']:<7} amount_total={order['amount_total']} refunded_total={order['refunded_total']}"
    )
    for line in _history_lines(api, no):
        out(line)


def _has_event(api: httpx.Client, out_trade_no: str, event_type: str) -> bool:
    events = api.get(f"/orders/{out_trade_no}/events", params={"type": event_type}).json()["events"]
    return bool(events)


def run_demo(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    sandbox_port: int = 8090,
    folder: Path = Path("payledger-demo"),
    wait: bool = True,
    out: Callable[[str], None] = print,
) -> int:
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
    with serving(sandbox.app, host, sandbox_port) as sandbox_url:
        env = sandbox.write_ledger_config(folder / "keys", sandbox_url)
        env["LEDGER_DATABASE_URL"] = f"sqlite:///{folder / 'ledger.sqlite3'}"
        env["LEDGER_RECONCILE_SCHEDULE"] = "1,5,30,60"
        settings = Settings.load(env)
        with (
            serving(create_app(settings), host, port) as ledger_url,
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

            _refund_and_close(api, out)

            services = bootstrap(settings)
            try:
                time.sleep(1.05)  # the first query is due 1 s after registration in the demo
                out("reconciliation pass (queries WeChat for orders whose callback has not come):")
                for change in services.reconciler.run_pass():
                    out(f"    {change}")

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

                _daily_bill(sandbox, services, api, out)
                _combined_payment(sandbox, api, out)
                sandbox.v2_notify_url = f"{ledger_url}/wechatpay/v2/notify"
                _console_refund(sandbox, api, out)
            finally:
                services.close()
            out(
                f"\nscripted part finished in {time.monotonic() - started:.1f} s; "
                f"the service log is {folder / 'ledger.log'}"
            )
            out(f"open {ledger_url}/orders/DEMO-0003/events for the recovered order's audit trail")
            out(f"or {ledger_url}/ui/orders/DEMO-0003 for the same history as an operator's page")
            out(f"and {ledger_url}/orders/{PLANTED[0]}/events for the payment the daily bill found")
            out(f"and {ledger_url}/ui/orders/{SUB_ORDERS[0][0]} for a sub-order of the combined payment")
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
