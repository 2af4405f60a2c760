"""The deployable topology as real processes: two API replicas, one projector, two dispatchers,
PostgreSQL. A paid order reaches the merchant's business system exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.store.sql import Database
from ledger.wechatpay.sandbox.signer import NotificationFactory
from projections.webhooks.outbox import Outbox
from projections.webhooks.schema import outbox_url
from tests.support.servers import free_port, running

pytestmark = pytest.mark.postgres
CLI = [sys.executable, "-m", "cli.main"]


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "a server exited during start-up"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


@pytest.mark.slow
def test_paid_order_reaches_the_receiver_exactly_once(
    postgres_url: str, merchant_env: dict[str, str], factory: NotificationFactory, tmp_path: Path
) -> None:
    received: list[tuple[str, dict[str, object]]] = []

    async def hook(request: Request) -> Response:
        received.append((request.headers["webhook-id"], json.loads(await request.body())))
        return Response(status_code=204)

    receiver = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "WECHATPAY_"))}
    env |= {**merchant_env, "LEDGER_DATABASE_URL": postgres_url, "LEDGER_WEBHOOK_RETRY_SCHEDULE": "1,1,1"}
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    with running(receiver) as receiver_url:
        outbox = Outbox(Database(outbox_url(postgres_url)))
        outbox.endpoints.add(f"{receiver_url}/hook", events=["PaymentSucceeded"])
        outbox.database.close()
        ports = [free_port(), free_port()]

        def start(*args: str) -> subprocess.Popen[bytes]:
            log = (tmp_path / f"{args[0]}-{len(processes)}.log").open("wb")
            logs.append(log)
            process = subprocess.Popen([*CLI, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            return process

        try:
            apis = [start("serve", "--port", str(port)) for port in ports]
            for port, api in zip(ports, apis, strict=True):
                wait_healthy(f"http://127.0.0.1:{port}", api)
            start("project")
            start("dispatch", "--interval", "0.2")
            start("dispatch", "--interval", "0.2")
            one, two = (f"http://127.0.0.1:{port}" for port in ports)
            assert (
                httpx.post(f"{one}/orders", json={"out_trade_no": "ORDER-9301", "amount_total": 100}).status_code == 201
            )
            body = factory.envelope(factory.transaction("ORDER-9301", 100))
            first = factory.deliver(body)
            retry = factory.deliver(body)  # WeChat's retry, re-signed, lands on the other replica
            assert httpx.post(f"{one}/wechatpay/notify", content=first.body, headers=first.headers).status_code == 204
            assert httpx.post(f"{two}/wechatpay/notify", content=retry.body, headers=retry.headers).status_code == 204
            assert httpx.post(f"{two}/wechatpay/notify", content=first.body, headers=first.headers).status_code == 204
            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)  # time for any duplicate to show up
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(30) for process in processes]
            for log in logs:
                log.close()
    ids = Counter(webhook_id for webhook_id, _ in received)
    assert len(received) == 1, received
    [(webhook_id, payload)] = received
    assert ids[webhook_id] == 1
    assert payload["type"] == "PaymentSucceeded"
    data = payload["data"]
    assert isinstance(data, dict) and data["out_trade_no"] == "ORDER-9301" and data["trade_state"] == "SUCCESS"
    assert codes == [0] * len(processes), [(p.args, c) for p, c in zip(processes, codes, strict=True)]
