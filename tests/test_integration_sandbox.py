"""The ledger against the sandbox (the fake WeChat Pay): real HTTP both ways on loopback.

Covers issue 2/4: queries as events, query/callback in either order, untrusted answers,
reconciliation of a dropped callback, certificate rotation and refresh on unknown serials.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.bootstrap import Services, bootstrap
from ledger.settings import Settings
from ledger.store.sql import Database
from ledger.wechatpay.sandbox.server import Sandbox
from projections.reconcile.reconciler import Reconciler
from projections.reconcile.worklist import Worklist
from tests.support.servers import running


@dataclass
class World:
    sandbox: Sandbox
    ledger_url: str
    client: httpx.Client
    env: dict[str, str]

    def register(self, out_trade_no: str, total: int = 100) -> None:
        self.sandbox.create_order(out_trade_no, total)
        assert (
            self.client.post("/orders", json={"out_trade_no": out_trade_no, "amount_total": total}).status_code == 201
        )

    def order(self, out_trade_no: str) -> dict[str, Any]:
        response = self.client.get(f"/orders/{out_trade_no}")
        assert response.status_code == 200
        return response.json()  # type: ignore[no-any-return]

    def types(self, out_trade_no: str) -> Counter[str]:
        return Counter(e["type"] for e in self.client.get(f"/orders/{out_trade_no}/events").json()["events"])


@contextlib.contextmanager
def world(tmp_path: Path, signing: str = "public_key", **sandbox_kwargs: Any) -> Iterator[World]:
    sandbox = Sandbox(seed=7, time_scale=1000, signing=signing, **sandbox_kwargs)  # type: ignore[arg-type]
    with running(sandbox.app) as sandbox_url:
        env = sandbox.write_ledger_config(tmp_path / "keys", sandbox_url)
        if signing == "certificate":
            env.pop("WECHATPAY_PUBLIC_KEY_ID")
            env.pop("WECHATPAY_PUBLIC_KEY_FILE")
        env["LEDGER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        settings = Settings.load(env)
        with running(create_app(settings, background=False)) as ledger_url:
            sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
            with httpx.Client(base_url=ledger_url, timeout=30) as client:
                yield World(sandbox, ledger_url, client, env)


def test_query_before_callback_decides_once(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.register("ORDER-6001")
        w.sandbox.pay("ORDER-6001", drop=True)  # the callback is late
        queried = w.client.post("/orders/ORDER-6001/query")
        assert queried.status_code == 200
        assert queried.json()["trade_state"] == "SUCCESS"
        late = w.sandbox.notifications[-1]
        headers = w.sandbox.factory.sign_headers(late.body)
        assert w.client.post("/wechatpay/notify", content=late.body, headers=headers).status_code == 204
        types = w.types("ORDER-6001")
        assert (types["StatusQueried"], types["NotificationReceived"], types["PaymentSucceeded"]) == (1, 1, 1)


def test_callback_before_query_decides_once(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.register("ORDER-6002")
        w.sandbox.pay("ORDER-6002")
        w.sandbox.wait_idle(10)
        assert w.order("ORDER-6002")["trade_state"] == "SUCCESS"
        assert w.client.post("/orders/ORDER-6002/query").json()["trade_state"] == "SUCCESS"
        types = w.types("ORDER-6002")
        assert (types["StatusQueried"], types["PaymentSucceeded"]) == (1, 1)


def test_notpay_and_closed_are_reflected(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.register("ORDER-6003")
        assert w.client.post("/orders/ORDER-6003/query").json()["trade_state"] == "NOTPAY"
        w.sandbox.close("ORDER-6003")
        assert w.client.post("/orders/ORDER-6003/query").json()["trade_state"] == "CLOSED"
        assert w.types("ORDER-6003")["TradeStateChanged"] == 1


@pytest.mark.parametrize("fault", ["probe", "tamper", "down", "unknown"])
def test_untrusted_or_failed_answers_are_502_and_not_events(tmp_path: Path, fault: str) -> None:
    with world(tmp_path) as w:
        w.register("ORDER-6004")
        w.sandbox.pay("ORDER-6004", drop=True)
        if fault == "probe":
            w.sandbox.probe_next_response()
        elif fault == "tamper":
            w.sandbox.tamper_next_response()
        elif fault == "down":
            w.sandbox.fail_next(10, status=503)
        target = "/orders/ORDER-6004/query" if fault != "unknown" else "/orders/ORDER-6999/query"
        response = w.client.post(target)
        assert response.status_code == 502
        assert response.json()["code"] == "FAIL"
        if fault == "unknown":
            assert "ORDER_NOT_EXIST" in response.json()["message"]
        assert w.types("ORDER-6004")["StatusQueried"] == 0
        assert w.order("ORDER-6004")["trade_state"] == "NOTPAY"


def test_reconciliation_recovers_a_dropped_callback(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        w.register("ORDER-6005")
        w.register("ORDER-6006")
        w.sandbox.pay("ORDER-6005", drop=True)  # WeChat never calls back
        services = bootstrap(Settings.load(w.env))
        database = Database(w.env["LEDGER_DATABASE_URL"])
        worklist = Worklist(database)
        now = [time.time() + 6]
        reconciler = Reconciler(services.ledger, worklist, services.query, clock=lambda: now[0])
        try:
            changes = {c.out_trade_no: c for c in reconciler.run_pass()}
        finally:
            database.close()
            services.close()
        assert (changes["ORDER-6005"].before, changes["ORDER-6005"].after) == ("NOTPAY", "SUCCESS")
        assert changes["ORDER-6006"].after == "NOTPAY"
        assert w.order("ORDER-6005")["trade_state"] == "SUCCESS"
        assert w.types("ORDER-6005")["PaymentSucceeded"] == 1


def _cert_services(w: World) -> Services:
    return bootstrap(Settings.load(w.env))


def test_certificate_rotation_with_two_valid_certificates(tmp_path: Path) -> None:
    with world(tmp_path, signing="certificate") as w:
        services = _cert_services(w)
        manager = services.merchants[w.sandbox.mchid].certificates
        assert manager is not None
        old = [c.serial for c in manager.certificates()]
        new = w.sandbox.rotate_certificate()
        try:
            assert manager.refresh() == [new]
        finally:
            services.close()
        stored = sorted(p.stem for p in Path(w.env["WECHATPAY_PLATFORM_CERT_DIR"]).glob("*.pem"))
        assert stored == sorted([*old, new])
        # The running ledger loaded its folder at start; restart it to load both.
        settings = Settings.load(w.env)
        with running(create_app(settings, background=False)) as url:
            for serial in [*old, new]:
                w.register(f"ORDER-61{serial[-4:]}")
                body = w.sandbox.factory.envelope(w.sandbox.factory.transaction(f"ORDER-61{serial[-4:]}", 100))
                key = w.sandbox.signing_key(serial)
                headers = key.factory.sign_headers(body, serial=key.serial)
                assert httpx.post(f"{url}/wechatpay/notify", content=body, headers=headers).status_code == 204


def test_unknown_serial_triggers_one_refresh_not_one_per_request(tmp_path: Path) -> None:
    with world(tmp_path, signing="certificate") as w:
        new = w.sandbox.rotate_certificate()
        key = w.sandbox.signing_key(new)
        assert key.serial == new
        before = w.sandbox.request_count("/v3/certificates")
        for i in range(5):
            body = w.sandbox.factory.envelope(w.sandbox.factory.transaction(f"ORDER-620{i}", 100))
            headers = key.factory.sign_headers(body, serial=new)
            assert w.client.post("/wechatpay/notify", content=body, headers=headers).status_code == 401
        deadline = time.monotonic() + 10
        while w.sandbox.request_count("/v3/certificates") == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert w.sandbox.request_count("/v3/certificates") - before == 1
        # WeChat's retry now verifies with the refreshed certificate.
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline:
            body = w.sandbox.factory.envelope(w.sandbox.factory.transaction("ORDER-6209", 100))
            status = w.client.post(
                "/wechatpay/notify", content=body, headers=key.factory.sign_headers(body, serial=new)
            ).status_code
            if status == 204:
                break
            time.sleep(0.1)
        assert status == 204
