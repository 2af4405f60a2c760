"""A realistic order to audit, built through the real service on loopback.

AUDIT-0001 is registered at 100 fen but WeChat (the sandbox) charges 120: the paid
notification comes three times (WeChat retrying after 15 s and again after 15 s), once more
byte for byte (a duplicate, not stored), the amount mismatch is flagged, a status query is
recorded, 30 fen are refunded, and the decisions go out to a webhook endpoint that fails the
first attempt and accepts the retry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from api.app import create_app
from ledger.application import build_ledger
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.server import Sandbox
from projections.webhooks.dispatcher import Dispatcher
from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import outbox_url
from tests.support.fakes import FakeClock, Receiver, failing_then
from tests.support.projectors import project_until_caught_up, run_outbox
from tests.support.servers import running

__all__ = ["NO", "REFUND_NO", "AuditWorld", "audit_world"]

NO = "AUDIT-0001"
REFUND_NO = "R-AUDIT-0001"


@dataclass
class AuditWorld:
    base_url: str
    env: dict[str, str]
    client: httpx.Client
    sandbox: Sandbox
    receiver: Receiver
    transaction_id: str
    clock: FakeClock

    def deliver(self, body: bytes, *, after: float = 0.0) -> dict[str, str]:
        """WeChat delivering `body` (re-signed, as every retry is) `after` seconds from now."""
        self.clock.advance(after)
        headers = self.sandbox.factory.sign_headers(body, timestamp=int(self.clock()))
        response = self.client.post("/wechatpay/notify", content=body, headers=headers)
        assert response.status_code == 204, response.text
        return headers


def _populate(w: AuditWorld, database_url: str) -> None:
    w.sandbox.create_order(NO, 120)
    assert w.client.post("/orders", json={"out_trade_no": NO, "amount_total": 100}).status_code == 201
    w.transaction_id = w.sandbox.pay(NO, drop=True)
    paid = w.sandbox.notifications[-1].body
    first = w.deliver(paid)
    w.deliver(paid, after=15)
    w.deliver(paid, after=15)
    assert w.client.post("/wechatpay/notify", content=paid, headers=first).status_code == 204  # duplicate
    assert w.client.post(f"/orders/{NO}/query").status_code == 200
    w.sandbox.refund(NO, REFUND_NO, 30, drop=True)
    w.deliver(w.sandbox.notifications[-1].body, after=60)

    outbox = Outbox(Database(outbox_url(database_url)))
    ledger = build_ledger(database_url)
    later = FakeClock(time.time())
    dispatcher = Dispatcher(outbox, schedule=(5.0,), clock=later, workers=1, jitter=0.0)
    try:
        outbox.endpoints.add(f"{w.receiver.url}/hook")
        w.receiver.answer = failing_then(1)
        run_outbox(database_url, ledger)
        project_until_caught_up(database_url, ledger)
        for _ in range(5):  # one endpoint's messages go in order: a failure holds back the rest
            dispatcher.run_once()
            later.advance(60)
        assert {m.state for m in outbox.messages.newest()} == {"delivered"}
    finally:
        dispatcher.close()
        ledger.close()
        outbox.database.close()


@contextlib.contextmanager
def audit_world(tmp_path: Path, database_url: str, **extra_env: str) -> Iterator[AuditWorld]:
    sandbox = Sandbox(seed=5, time_scale=1000)
    receiver = Receiver()
    clock = FakeClock(time.time())
    with running(sandbox.app) as sandbox_url, running(receiver.app) as receiver_url:
        receiver.url = receiver_url
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        env.update({"LEDGER_DATABASE_URL": database_url, **extra_env})
        app = create_app(Settings.load(env), clock=clock, background=False)
        token = extra_env.get("LEDGER_ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with running(app) as base_url, httpx.Client(base_url=base_url, timeout=30, headers=headers) as client:
            sandbox.notify_url = f"{base_url}/wechatpay/notify"
            world = AuditWorld(base_url, env, client, sandbox, receiver, "", clock)
            _populate(world, database_url)
            yield world
