"""`payledger serve --workers 2`: two processes on one port keep every guarantee of one.

The same payment notification is sent to both processes at once, again and again (byte-identical
replays and WeChat's freshly signed retries): every answer is 204, and each order is decided
exactly once, its history without gaps, whichever process took which delivery.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ledger.application import build_ledger
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.constants import MCHID
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 12
SENDERS = 8  # concurrent deliveries of one notification, each on a connection of its own


@pytest.fixture
def two_workers(merchant_env: dict[str, str], database_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "WECHATPAY_"))}
    env.update({**merchant_env, "LEDGER_DATABASE_URL": database_url, "LEDGER_LOG_LEVEL": "WARNING"})
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "not ready in 60 s"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
        finally:
            proc.kill()
            log.close()


def _send(url: str, delivery: Delivery) -> tuple[int, str]:
    """One delivery on a fresh connection (so the kernel may hand it to either process)."""
    response = httpx.post(f"{url}/wechatpay/notify", content=delivery.body, headers=delivery.headers, timeout=30)
    return response.status_code, response.headers["x-request-id"]


@pytest.mark.slow
def test_two_processes_decide_each_payment_once(
    two_workers: str, database_url: str, factory: NotificationFactory
) -> None:
    ledger = build_ledger(database_url)
    try:
        orders = [f"WK-{n:04d}" for n in range(ORDERS)]
        for out_trade_no in orders:
            ledger.register_order(MCHID, out_trade_no, 100)
        answers: list[tuple[int, str]] = []
        distinct: Counter[str] = Counter()
        with ThreadPoolExecutor(SENDERS) as pool:
            for out_trade_no in orders:
                first = factory.paid(out_trade_no, 100)
                retry = factory.deliver(first.body)  # WeChat's retry: same body, signed anew
                # Each delivery several times over, all at once: replays and retries racing.
                burst = [first, retry] * (SENDERS // 2)
                answers.extend(pool.map(lambda d: _send(two_workers, d), burst))
                distinct[out_trade_no] = 2
        assert Counter(status for status, _ in answers) == {204: ORDERS * SENDERS}
        # The request id starts with a prefix drawn by each process: both of them answered.
        assert len({request_id[:12] for _, request_id in answers}) == 2
        for out_trade_no in orders:
            history = ledger.order_history(MCHID, out_trade_no)
            types = [event["type"] for event in history]
            assert types.count("PaymentSucceeded") == 1, types
            # Each distinct delivery kept once, whichever process took each copy of it.
            assert types.count("NotificationReceived") == distinct[out_trade_no], types
            assert [event["version"] for event in history] == list(range(1, len(history) + 1))
            assert ledger.get_order(MCHID, out_trade_no).trade_state == "SUCCESS"
    finally:
        ledger.close()
    # The workers serve with h11, which refuses a request head past 16 KiB (tests/test_http_limits.py):
    # a header flood, sent line by line, is answered before it reaches the app.
    port = int(two_workers.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /wechatpay/notify HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(200):
                sock.sendall(f"X-Filler-{i}: {'a' * 200}\r\n".encode())
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"431"), status_line
