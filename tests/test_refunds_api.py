"""Refunds and closes asked through the ledger, end to end against the sandbox on SQLite and PostgreSQL
(issue 4/8; [protocol: Creating a refund], [protocol: Closing an order]): the real app, real HTTP both
ways, the sandbox counting every refund request it receives, so "WeChat saw exactly one request" is
what WeChat's side says, not what the ledger believes."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.bootstrap import bootstrap
from ledger.errors import ConfigurationError
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.server import Sandbox, SubOrder
from projections.reconcile.reconciler import Reconciler
from projections.reconcile.worklist import Worklist
from tests.support.cli import clean_env, payledger
from tests.support.sandbox_ledger import SandboxLedger, sandbox_ledger


@dataclass
class World(SandboxLedger):
    @property
    def settings(self) -> Settings:
        return Settings.load({**self.env, "LEDGER_DATABASE_URL": self.database_url})

    def paid(self, out_trade_no: str, total: int = 100) -> None:
        self.sandbox.create_order(out_trade_no, total)
        assert (
            self.client.post("/orders", json={"out_trade_no": out_trade_no, "amount_total": total}).status_code == 201
        )
        self.sandbox.pay(out_trade_no)
        self.wait(lambda: self.order(out_trade_no)["trade_state"] == "SUCCESS")

    def refund(self, out_trade_no: str, out_refund_no: str, amount: int, **more: Any) -> httpx.Response:
        body = {"out_refund_no": out_refund_no, "amount": amount, **more}
        return self.client.post(f"/orders/{out_trade_no}/refunds", json=body)

    def order(self, out_trade_no: str) -> dict[str, Any]:
        response = self.client.get(f"/orders/{out_trade_no}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def types(self, out_trade_no: str) -> Counter[str]:
        return Counter(e["type"] for e in self.client.get(f"/orders/{out_trade_no}/events").json()["events"])

    def seen(self, out_refund_no: str) -> int:
        """How many refund requests for `out_refund_no` the sandbox (WeChat) received."""
        return len(self.sandbox.refund_requests(out_refund_no))

    @staticmethod
    def wait(condition: Any, seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)


@contextlib.contextmanager
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    with sandbox_ledger(World, Sandbox(seed=7, time_scale=1000), tmp_path / "keys", database_url) as made:
        made.env = {**clean_env(), **made.env, "LEDGER_DATABASE_URL": database_url}
        yield made


def test_partial_refunds_up_to_the_paid_amount_and_409_beyond_with_nothing_sent(
    tmp_path: Path, database_url: str
) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0001", 100)
        first = w.refund("RFD-0001", "RFD-0001-R1", 60, reason="破损")
        assert first.status_code == 201, first.text
        record = first.json()["refund"]
        assert (record["outcome"], record["refund"], record["requested_by"], record["status"]) == (
            "accepted",
            60,
            "api",
            "PROCESSING",
        )
        assert record["refund_id"]
        beyond = w.refund("RFD-0001", "RFD-0001-R2", 41)
        assert beyond.status_code == 409
        assert beyond.json() == {
            "code": "REFUSED",
            "message": "amount 41 is more than the 40 fen still refundable",
        }
        assert w.seen("RFD-0001-R2") == 0  # refused before any call
        assert w.refund("RFD-0001", "RFD-0001-R3", 40).status_code == 201
        # WeChat's REFUND.SUCCESS notifications decide both, once each.
        w.wait(lambda: w.order("RFD-0001")["refunded_total"] == 100)
        order = w.order("RFD-0001")
        assert (order["trade_state"], order["refundable"]) == ("REFUND", 0)
        assert [r["outcome"] for r in order["refund_requests"]] == [
            "accepted",
            "accepted",
        ]
        types = w.types("RFD-0001")
        assert (types["RefundRequested"], types["RefundAnswered"], types["RefundSucceeded"]) == (2, 2, 2)
        assert (w.seen("RFD-0001-R1"), w.seen("RFD-0001-R3")) == (1, 1)
        assert w.refund("RFD-0001", "RFD-0001-R4", 1).status_code == 409  # nothing left
        assert (
            w.client.post("/orders/NOT-PAID-01/refunds", json={"out_refund_no": "X1", "amount": 1}).status_code == 404
        )


def test_an_idempotent_retry_sends_nothing_and_another_body_is_a_conflict(tmp_path: Path, database_url: str) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0002", 100)
        first = w.refund("RFD-0002", "RFD-0002-R1", 30, reason="a")
        again = w.refund("RFD-0002", "RFD-0002-R1", 30, reason="a")
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json()["refund"]["refund_id"] == first.json()["refund"]["refund_id"]
        assert w.seen("RFD-0002-R1") == 1
        other = w.refund("RFD-0002", "RFD-0002-R1", 31, reason="a")
        assert other.status_code == 409 and other.json()["code"] == "CONFLICT"
        assert w.seen("RFD-0002-R1") == 1
        assert w.types("RFD-0002")["RefundRequested"] == 1


def test_two_concurrent_requests_that_together_exceed_the_paid_amount_send_exactly_one(
    tmp_path: Path, database_url: str
) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0003", 100)
        answers: dict[str, int] = {}
        start = threading.Barrier(2)

        def ask(no: str) -> None:
            with httpx.Client(base_url=str(w.client.base_url), timeout=30) as client:
                start.wait()
                answers[no] = client.post(
                    "/orders/RFD-0003/refunds", json={"out_refund_no": no, "amount": 70}
                ).status_code

        threads = [threading.Thread(target=ask, args=(no,)) for no in ("RFD-0003-A", "RFD-0003-B")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers.values()) == [201, 409]
        assert w.seen("RFD-0003-A") + w.seen("RFD-0003-B") == 1
        assert w.types("RFD-0003")["RefundRequested"] == 1


@pytest.mark.slow
def test_a_timeout_after_wechat_accepted_is_202_then_reconciliation_decides_it_once(
    tmp_path: Path, database_url: str
) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0004", 100)
        w.sandbox.refund_delay = None  # no notification: only the reconciler's query can decide it
        w.sandbox.fail_next_refund("timeout_after_accept")
        unknown = w.refund("RFD-0004", "RFD-0004-R1", 50)
        assert unknown.status_code == 202, unknown.text
        assert unknown.json()["refund"]["outcome"] == "unknown"
        assert w.order("RFD-0004")["refundable"] == 50  # the amount stays reserved
        assert w.refund("RFD-0004", "RFD-0004-R2", 51).status_code == 409
        services = bootstrap(w.settings)
        database = Database(w.database_url)
        try:
            ahead = [60.0]

            def reconcile() -> list[Any]:
                reconciler = Reconciler(
                    services.ledger,
                    Worklist(database),
                    services.query,
                    confirm_refund=services.query.refund,
                    schedule=(0.0, 0.0),
                    clock=lambda: time.time() + ahead[0],
                )
                return [(c.before, c.after) for c in reconciler.run_pass() if c.out_refund_no == "RFD-0004-R1"]

            # WeChat accepted it and is still paying it back: the refund query finds it PROCESSING.
            assert reconcile() == [("UNCONFIRMED", "UNCONFIRMED")]
            # WeChat is done (its notification is lost): the next pass's query decides it, once.
            w.sandbox.complete_refund("RFD-0004-R1", notify=False)
            ahead[0] = 3600.0
            assert reconcile() == [("UNCONFIRMED", "SUCCESS")]
            ahead[0] = 7200.0
            assert reconcile() == []  # settled: no more queries
        finally:
            database.close()
            services.close()
        types = w.types("RFD-0004")
        assert (types["RefundRequested"], types["StatusQueried"], types["RefundSucceeded"]) == (1, 2, 1)
        order = w.order("RFD-0004")
        assert (order["refunded_total"], order["refundable"], order["trade_state"]) == (50, 50, "REFUND")
        assert w.seen("RFD-0004-R1") == 1  # WeChat saw exactly one request for it


def test_not_enough_is_recorded_as_rejected_and_answered_502_with_the_code(tmp_path: Path, database_url: str) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0005", 100)
        w.sandbox.fail_next_refund("not_enough")
        refused = w.refund("RFD-0005", "RFD-0005-R1", 10)
        assert refused.status_code == 502
        body = refused.json()
        assert (body["code"], body["wechat_code"], body["refund"]["outcome"]) == ("FAIL", "NOT_ENOUGH", "rejected")
        assert "NOT_ENOUGH" in body["message"]
        assert w.order("RFD-0005")["refundable"] == 100  # the amount is free again
        assert w.types("RFD-0005")["RefundRejected"] == 1
        again = w.refund("RFD-0005", "RFD-0005-R1", 10)  # the same request: answered as recorded
        assert again.status_code == 502 and w.seen("RFD-0005-R1") == 1


def test_close_then_a_late_payment_is_paid_and_flagged_and_a_paid_order_is_not_closed(
    tmp_path: Path, database_url: str
) -> None:
    with world(tmp_path, database_url) as w:
        w.sandbox.create_order("RFD-0006", 100)
        assert w.client.post("/orders", json={"out_trade_no": "RFD-0006", "amount_total": 100}).status_code == 201
        closed = w.client.post("/orders/RFD-0006/close")
        assert closed.status_code == 200, closed.text
        assert (closed.json()["trade_state"], closed.json()["closed_at"] is not None) == ("CLOSED", True)
        assert w.client.post("/orders/RFD-0006/close").status_code == 200  # again: nothing sent
        assert w.types("RFD-0006")["OrderClosed"] == 1
        w.sandbox.pay("RFD-0006", after_close=True)  # the payer paid in the instant before the close
        w.wait(lambda: w.order("RFD-0006")["trade_state"] == "SUCCESS")
        order = w.order("RFD-0006")
        assert [a["kind"] for a in order["anomalies"]] == ["paid_after_close"]
        paid_closed = w.client.post("/orders/RFD-0006/close")
        assert paid_closed.status_code == 409 and paid_closed.json()["code"] == "REFUSED"


def test_the_cli_refunds_and_closes_with_the_exit_codes_it_documents(tmp_path: Path, database_url: str) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0007", 100)
        asked = payledger(
            "refund", "RFD-0007", "--amount", "30", "--out-refund-no", "RFD-0007-R1", "--requested-by", "carol",
            env=w.env,
        )  # fmt: skip
        assert asked.returncode == 0, asked.stderr
        assert '"outcome": "accepted"' in asked.stdout and '"requested_by": "carol"' in asked.stdout
        beyond = payledger("refund", "RFD-0007", "--amount", "71", "--out-refund-no", "RFD-0007-R2", env=w.env)
        assert beyond.returncode == 1
        assert beyond.stderr.strip() == "payledger: amount 71 is more than the 70 fen still refundable"
        w.sandbox.fail_next_refund("not_enough")
        refused = payledger("refund", "RFD-0007", "--amount", "5", "--out-refund-no", "RFD-0007-R3", env=w.env)
        assert (refused.returncode, refused.stderr.splitlines()[-1]) == (
            1,
            "payledger: WeChat Pay refused the refund (NOT_ENOUGH)",
        )
        w.sandbox.create_order("RFD-0008", 100)
        assert w.client.post("/orders", json={"out_trade_no": "RFD-0008", "amount_total": 100}).status_code == 201
        closed = payledger("close", "RFD-0008", env=w.env)
        assert closed.returncode == 0, closed.stderr
        assert '"trade_state": "CLOSED"' in closed.stdout
        paid_close = payledger("close", "RFD-0007", env=w.env)
        assert (paid_close.returncode, paid_close.stderr.strip()) == (
            1,
            "payledger: order RFD-0007 is paid: refund it instead of closing it",
        )
        assert w.seen("RFD-0007-R1") == 1 and w.seen("RFD-0007-R2") == 0


def test_the_order_page_refunds_and_closes_after_a_confirmation(tmp_path: Path, database_url: str) -> None:
    with world(tmp_path, database_url) as w:
        w.paid("RFD-0009", 100)
        page = w.client.get("/ui/orders/RFD-0009")
        match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
        assert match is not None and 'id="refund-form"' in page.text and "100 fen still refundable" in page.text
        form = {"csrf": match.group(1), "out_refund_no": "RFD-0009-R1", "amount": "40", "reason": "破损"}
        confirm = w.client.post("/ui/orders/RFD-0009/refund", data=form)
        assert confirm.status_code == 200 and 'id="confirm"' in confirm.text
        assert "<strong>40 fen</strong>" in confirm.text and "RFD-0009-R1" in confirm.text
        assert w.seen("RFD-0009-R1") == 0  # a confirmation first: nothing asked yet
        forged = w.client.post("/ui/orders/RFD-0009/refund", data={**form, "confirm": "yes", "csrf": "0" * 64})
        assert forged.status_code == 403 and w.seen("RFD-0009-R1") == 0
        done = w.client.post("/ui/orders/RFD-0009/refund", data={**form, "confirm": "yes"}, follow_redirects=False)
        assert done.status_code == 303, done.text
        assert w.seen("RFD-0009-R1") == 1
        shown = w.client.get(done.headers["location"])
        assert 'id="asked"' in shown.text and "refund RFD-0009-R1: accepted" in shown.text
        assert 'id="refund-requests"' in shown.text and "<td>admin-token</td>" in shown.text
        beyond = {**form, "out_refund_no": "RFD-0009-R2", "amount": "61", "confirm": "yes"}
        refused = w.client.post("/ui/orders/RFD-0009/refund", data=beyond)
        assert refused.status_code == 409 and "more than the 60 fen still refundable" in refused.text
        assert w.seen("RFD-0009-R2") == 0

        w.sandbox.create_order("RFD-0010", 100)
        assert w.client.post("/orders", json={"out_trade_no": "RFD-0010", "amount_total": 100}).status_code == 201
        unpaid = w.client.get("/ui/orders/RFD-0010")
        assert 'id="close-form"' in unpaid.text and 'id="refund-form"' not in unpaid.text
        closing = {"csrf": match.group(1)}
        assert 'id="confirm"' in w.client.post("/ui/orders/RFD-0010/close", data=closing).text
        assert w.order("RFD-0010")["trade_state"] == "NOTPAY"
        closed = w.client.post("/ui/orders/RFD-0010/close", data={**closing, "confirm": "yes"}, follow_redirects=False)
        assert closed.status_code == 303
        assert w.order("RFD-0010")["trade_state"] == "CLOSED"
        assert "closed at WeChat Pay (HTTP 204) asked by admin-token" in w.client.get("/ui/orders/RFD-0010").text


def test_closing_a_combined_payments_sub_order_closes_the_combination_in_every_sub_orders_history(
    tmp_path: Path, database_url: str
) -> None:
    with world(tmp_path, database_url) as w:
        parts = [("RFD-C-A", 300), ("RFD-C-B", 500)]
        w.sandbox.create_combined_order("RFD-COMBINED", [SubOrder(no, fen) for no, fen in parts])
        for no, fen in parts:
            body = {"out_trade_no": no, "amount_total": fen, "combine_out_trade_no": "RFD-COMBINED"}
            assert w.client.post("/orders", json=body).status_code == 201
        closed = w.client.post("/orders/RFD-C-A/close")
        assert closed.status_code == 200, closed.text
        for no, _ in parts:
            assert w.order(no)["trade_state"] == "CLOSED"
            assert w.types(no)["OrderClosed"] == 1
        closes = [r for r in w.sandbox.requests if r.path.endswith("/close")]
        assert [r.path for r in closes] == ["/v3/combine-transactions/out-trade-no/RFD-COMBINED/close"]
        # A sub-order paid meanwhile keeps the others open: refused before any call.
        parts = [("RFD-D-A", 300), ("RFD-D-B", 500)]
        w.sandbox.create_combined_order("RFD-COMBINED-2", [SubOrder(no, fen) for no, fen in parts])
        for no, fen in parts:
            body = {"out_trade_no": no, "amount_total": fen, "combine_out_trade_no": "RFD-COMBINED-2"}
            assert w.client.post("/orders", json=body).status_code == 201
        w.sandbox.pay_combined_order("RFD-COMBINED-2")
        w.wait(lambda: w.order("RFD-D-B")["trade_state"] == "SUCCESS")
        refused = w.client.post("/orders/RFD-D-A/close")
        assert refused.status_code == 409 and refused.json()["code"] == "REFUSED"


def test_a_service_providers_sub_merchant_order_is_refunded_and_closed_by_the_partner_paths(
    tmp_path: Path, database_url: str
) -> None:
    """[protocol: Service providers]: the same out_trade_no under two sub-merchants is two orders; the
    refund names its sub_mchid in the body, the close goes by the partner path."""
    sub_a, sub_b = "1900000201", "1900000202"
    sandbox = Sandbox(seed=7, time_scale=1000, sub_mchids=(sub_a, sub_b))
    with sandbox_ledger(World, sandbox, tmp_path / "keys", database_url) as w:
        for sub_mchid, fen in ((sub_a, 100), (sub_b, 300)):
            w.sandbox.create_order("RFD-P-1", fen, sub_mchid=sub_mchid)
            body = {"out_trade_no": "RFD-P-1", "amount_total": fen, "sub_mchid": sub_mchid}
            assert w.client.post("/orders", json=body).status_code == 201
        w.sandbox.pay("RFD-P-1", sub_mchid=sub_b)
        w.wait(lambda: w.client.get("/orders/RFD-P-1", params={"sub_mchid": sub_b}).json()["trade_state"] == "SUCCESS")
        refund = {"out_refund_no": "RFD-P-1-R1", "amount": 250, "sub_mchid": sub_b}
        asked = w.client.post("/orders/RFD-P-1/refunds", json=refund)
        assert asked.status_code == 201, asked.text
        [sent] = w.sandbox.refund_requests("RFD-P-1-R1", sub_mchid=sub_b)
        assert b'"sub_mchid":"1900000202"' in sent
        # The other sub-merchant's order of that number is unpaid: refused, and closed by the partner path.
        refused = w.client.post("/orders/RFD-P-1/refunds", json={**refund, "out_refund_no": "X-2", "sub_mchid": sub_a})
        assert refused.status_code == 409
        assert w.client.post("/orders/RFD-P-1/close", params={"sub_mchid": sub_a}).status_code == 200
        assert w.client.get("/orders/RFD-P-1", params={"sub_mchid": sub_a}).json()["trade_state"] == "CLOSED"
        other = w.client.get("/orders/RFD-P-1", params={"sub_mchid": sub_b}).json()
        # Paid, and refunded once WeChat's REFUND.SUCCESS for R1 has come (it may have by now): never closed.
        assert (other["paid_total"], other["closed_at"]) == (300, None) and other["trade_state"] in (
            "SUCCESS",
            "REFUND",
        )
        [close] = [r for r in w.sandbox.requests if r.path.endswith("/close")]
        assert close.path == "/v3/pay/partner/transactions/out-trade-no/RFD-P-1/close"


def test_close_after_closes_an_old_unpaid_order_after_a_last_query_and_nothing_else(
    tmp_path: Path, database_url: str
) -> None:
    """LEDGER_CLOSE_AFTER: the reconciler closes an order still NOTPAY that long after its registration,
    after the query it makes anyway; a paid one, and a young one, are left as they are."""
    with world(tmp_path, database_url) as w:
        for no in ("RFD-0011", "RFD-0012"):
            w.sandbox.create_order(no, 100)
            assert w.client.post("/orders", json={"out_trade_no": no, "amount_total": 100}).status_code == 201
        w.paid("RFD-0013", 100)
        settings = Settings.load({**w.env, "LEDGER_CLOSE_AFTER": "600"})
        assert settings.close_after == 600
        services = bootstrap(settings)
        database = Database(w.database_url)
        try:

            def reconciler(ahead: float) -> Reconciler:
                return Reconciler(
                    services.ledger,
                    Worklist(database),
                    services.query,
                    schedule=(0.0,),
                    clock=lambda: time.time() + ahead,
                    close_after=settings.close_after,
                    close=lambda key: services.requester.close(key, requested_by="reconciler")[0],
                )

            reconciler(60).run_pass()
            assert w.order("RFD-0011")["trade_state"] == "NOTPAY"  # queried, too young to close
            changes = {c.out_trade_no: (c.before, c.after) for c in reconciler(700).run_pass()}
        finally:
            database.close()
            services.close()
        assert changes["RFD-0011"] == ("NOTPAY", "CLOSED") and changes["RFD-0012"] == ("NOTPAY", "CLOSED")
        assert "RFD-0013" not in changes  # paid: not in the worklist any more
        history = w.client.get("/orders/RFD-0011/events").json()["events"]
        assert [e["type"] for e in history][-2:] == ["StatusQueried", "OrderClosed"]
        assert history[-1]["data"]["requested_by"] == "reconciler"
        assert w.sandbox.orders.order("RFD-0011").trade_state == "CLOSED"
    with pytest.raises(ConfigurationError, match="LEDGER_CLOSE_AFTER"):
        Settings.load({**w.env, "LEDGER_CLOSE_AFTER": "5"})
