"""Merchants on two databases (issue 7/8, "scale past one database"): each merchant's events, views,
outbox and workers on its own store, one service routing each request to its merchant's shard, the
whole pipeline working — notify, decide, project, dispatch, reconcile, verify — on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from api.shards import create_service
from ledger.application import build_ledger
from ledger.errors import ConfigurationError, OrderNotFound
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.read_model.runner import open_orders_view
from tests.support.cli import CLI, clean_env
from tests.support.constants import APPID, POSTGRES_URL
from tests.support.fakes import Receiver
from tests.support.servers import running

A, B = "1900000109", "1900000222"
TOKEN = "shards-t0ken-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@contextlib.contextmanager
def another_store(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second store of the same kind as `database_url`: a SQLite file, or a PostgreSQL schema."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'shard-b.sqlite3'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _merchant_toml(env: dict[str, str], database_url: str | None = None) -> str:
    lines = ["[[merchants]]", *(f'{k.removeprefix("WECHATPAY_").lower()} = "{v}"' for k, v in env.items())]
    if database_url is not None:
        lines.append(f'database_url = "{database_url}"')
    return "\n".join(lines)


@pytest.fixture
def factories() -> dict[str, NotificationFactory]:
    return {mchid: NotificationFactory(mchid=mchid, appid=APPID) for mchid in (A, B)}


def _config(tmp_path: Path, url_a: str, url_b: str, factories: dict[str, NotificationFactory], hook: str) -> Path:
    env_a = factories[A].write_keys(tmp_path / "keys-a")
    env_b = factories[B].write_keys(tmp_path / "keys-b")
    path = tmp_path / "ledger.toml"
    path.write_text(
        "\n\n".join(
            [
                f'database_url = "{url_a}"\nadmin_token = "{TOKEN}"',
                _merchant_toml(env_a),
                _merchant_toml(env_b, url_b),
                f'[[endpoints]]\nid = "erp"\nurl = "{hook}/hook"\nsecret = "{SECRET}"',
            ]
        )
        + "\n"
    )
    return path


def test_two_merchants_on_two_databases_through_the_whole_pipeline(
    database_url: str, tmp_path: Path, factories: dict[str, NotificationFactory], receiver: Receiver
) -> None:
    with another_store(database_url, tmp_path) as url_b:
        config = _config(tmp_path, database_url, url_b, factories, receiver.url)
        env = {**clean_env(), "LEDGER_CONFIG": str(config)}
        settings = Settings.load(env)
        shards = settings.shards()
        assert [(s.database_url.value, [m.mchid for m in s.merchants]) for s in shards] == [
            (database_url, [A]),
            (url_b, [B]),
        ]
        with (
            running(create_service(settings, background=False)) as base,
            httpx.Client(base_url=base, timeout=10) as client,
        ):
            for mchid, no in ((A, "SHARD-A-1"), (B, "SHARD-B-1")):
                # The JSON body names the merchant: the router reads it and sends the request to its shard.
                body = {"mchid": mchid, "out_trade_no": no, "amount_total": 100}
                assert client.post("/orders", json=body, headers=BEARER).status_code == 201
                paid = factories[mchid].paid(no, 100)
                for _ in range(2):  # WeChat's retry of the same notification: one decision
                    answer = client.post(f"/wechatpay/notify/{mchid}", content=paid.body, headers=paid.headers)
                    assert answer.status_code == 204
            # A bare notify goes to the shard whose merchant owns the signing key (Wechatpay-Serial).
            bare = factories[B].paid("SHARD-B-2", 100)
            assert (
                client.post(
                    "/orders", json={"mchid": B, "out_trade_no": "SHARD-B-2", "amount_total": 100}, headers=BEARER
                ).status_code
                == 201
            )
            assert client.post("/wechatpay/notify", content=bare.body, headers=bare.headers).status_code == 204
            # ?mchid= picks the shard: each order is found in its own, and only there.
            assert (
                client.get("/orders/SHARD-B-1", params={"mchid": B}, headers=BEARER).json()["trade_state"] == "SUCCESS"
            )
            assert (
                client.get("/orders/SHARD-B-2", params={"mchid": B}, headers=BEARER).json()["trade_state"] == "SUCCESS"
            )
            assert (
                client.get("/orders/SHARD-A-1", params={"mchid": A}, headers=BEARER).json()["trade_state"] == "SUCCESS"
            )
            assert client.get("/orders/SHARD-A-1", params={"mchid": B}, headers=BEARER).status_code == 404
            assert client.get("/healthz").status_code == 200

        # Each store holds its merchant's events and nothing of the other's.
        for url, mine, theirs in (
            (database_url, (A, "SHARD-A-1"), (B, "SHARD-B-1")),
            (url_b, (B, "SHARD-B-1"), (A, "SHARD-A-1")),
        ):
            ledger = build_ledger(url)
            try:
                order = ledger.get_order(*mine)
                assert order.trade_state == "SUCCESS" and order.deliveries == 1  # the same bytes twice: one delivery
                assert [e["type"] for e in ledger.order_history(*mine)].count("PaymentSucceeded") == 1
                with pytest.raises(OrderNotFound):
                    ledger.get_order(*theirs)
            finally:
                ledger.close()

        # The workers run for every shard: the projections (each store's own read model and outbox),
        # then the dispatcher, which delivers each shard's messages from its own outbox.
        project_log = (tmp_path / "project.log").open("w")
        project = subprocess.Popen([*CLI, "project"], env=env, stdout=subprocess.DEVNULL, stderr=project_log)
        try:
            deadline = time.monotonic() + 30
            views = {A: open_orders_view(database_url), B: open_orders_view(url_b)}
            while time.monotonic() < deadline and not (views[A].get(A, "SHARD-A-1") and views[B].get(B, "SHARD-B-2")):
                time.sleep(0.1)
            assert views[A].get(A, "SHARD-A-1") is not None and views[A].get(B, "SHARD-B-1") is None
            assert views[B].get(B, "SHARD-B-1") is not None and views[B].get(A, "SHARD-A-1") is None
            time.sleep(1)  # the outbox projection, beside the orders view
            dispatched = subprocess.run(
                [*CLI, "dispatch", "--once"], env=env, capture_output=True, text=True, timeout=60
            )
            assert dispatched.returncode == 0, dispatched.stderr
        finally:
            project.terminate()
            assert project.wait(20) == 0, (tmp_path / "project.log").read_text()
            project_log.close()
            for view in views.values():
                view.close()
        delivered = [json.loads(hit.body) for hit in receiver.to("/hook")]
        paid_orders = sorted(
            (d["data"]["mchid"], d["data"]["out_trade_no"]) for d in delivered if d["type"] == "PaymentSucceeded"
        )
        assert paid_orders == [(A, "SHARD-A-1"), (B, "SHARD-B-1"), (B, "SHARD-B-2")]

        # One store at a time: LEDGER_SHARD names it; verify proves each alone.
        for mchid in (A, B):
            verified = subprocess.run(
                [*CLI, "verify", "--all"],
                env={**env, "LEDGER_SHARD": mchid},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_merchants_database_url_is_checked(tmp_path: Path, factories: dict[str, NotificationFactory]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(_merchant_toml(factories[A].write_keys(tmp_path / "k"), "mysql://nope") + "\n")
    with pytest.raises(ConfigurationError) as raised:
        Settings.load({"LEDGER_CONFIG": str(config)})
    assert raised.value.setting == "LEDGER_CONFIG merchants[0].database_url"
    with pytest.raises(ConfigurationError):
        Settings.load(
            {"LEDGER_CONFIG": str(config.with_name("none.toml")), "LEDGER_SHARD": "123456"}, require_merchant=False
        )
