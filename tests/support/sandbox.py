"""Talking to the sandbox as WeChat Pay's clients and merchants do: signed requests, verified answers, and a
merchant's notify endpoint that answers from a script.

- `call`, `query`, `authorization`: requests signed as the merchant signs them ([protocol: Signing a request]).
- `verified`: the serial whose key verified an answer ([protocol: Verifying an answer]).
- `trade_bill`: a day's trade bill applied for, downloaded, its SHA-1 checked, read by the ledger's parser.
- `NotifyReceiver`: a notify endpoint recording every delivery, answering scripted statuses (and bodies, for
  APIv2's XML answer), optionally after a delay, optionally verifying APIv3 signatures first.
- `NotifyEndpoint`: one served endpoint a test plugs its receiver into (fixtures `notify_endpoint`, `receiving`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.errors import VerificationFailed
from ledger.wechatpay import signature as wechat_signature
from ledger.wechatpay.bills import TradeBillRow, read_trade_bill
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.constants import MCHID
from tests.support.servers import running

__all__ = [
    "MERCHANT_SERIAL",
    "Answer",
    "NotifyEndpoint",
    "NotifyReceiver",
    "Receiving",
    "authorization",
    "call",
    "query",
    "serve",
    "trade_bill",
    "verified",
]

MERCHANT_SERIAL = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115"
"""The merchant API certificate serial the sandbox fixtures expect."""


@contextlib.contextmanager
def serve(app: Any) -> Iterator[httpx.Client]:
    """`app` on loopback and a client for it, ignoring proxy settings of the environment."""
    with running(app) as url, httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        yield client


def authorization(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    key: rsa.RSAPrivateKey,
    serial: str = MERCHANT_SERIAL,
    mchid: str = MCHID,
    timestamp: int | None = None,
) -> str:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = wechat_signature.new_nonce()
    signature = wechat_signature.sign(key, wechat_signature.request_message(method, target, ts, nonce, body))
    return wechat_signature.authorization_header(
        mchid=mchid, serial_no=serial, timestamp=ts, nonce=nonce, signature=signature
    )


def call(
    client: httpx.Client,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    key: rsa.RSAPrivateKey,
    headers: dict[str, str] | None = None,
    **signing: Any,
) -> httpx.Response:
    """A request signed as the merchant signs it ([protocol: Signing a request]), over real HTTP."""
    sent = {
        "Accept": "application/json",
        "Authorization": authorization(method, target, body, key=key, **signing),
    }
    if body:
        sent["Content-Type"] = "application/json"
    return client.request(method, target, content=body or None, headers={**sent, **(headers or {})})


def verified(response: httpx.Response, keys: KeyStore) -> str:
    """[protocol: Verifying an answer]: the serial whose key verified the answer; raises VerificationFailed
    otherwise."""
    return wechat_signature.verify_signed_message(
        wechat_signature.SignatureHeaders.from_headers(response.headers), response.content, keys, time.time()
    )


def query(client: httpx.Client, out_trade_no: str, key: rsa.RSAPrivateKey, **kwargs: Any) -> httpx.Response:
    return call(client, "GET", f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={MCHID}", key=key, **kwargs)


def trade_bill(
    client: httpx.Client,
    key: rsa.RSAPrivateKey,
    day: dt.date,
    *,
    mchid: str = MCHID,
    sub_mchid: str | None = None,
) -> list[TradeBillRow]:
    """[protocol: Applying for a bill; Downloading a bill]: the day's ALL bill (of one sub-merchant, when
    named), its hash checked, read by the ledger's own parser (which checks the summary too)."""
    target = f"/v3/bill/tradebill?bill_date={day.isoformat()}" + (f"&sub_mchid={sub_mchid}" if sub_mchid else "")
    applied = call(client, "GET", target, key=key, mchid=mchid)
    assert applied.status_code == 200, applied.text
    url = urlsplit(applied.json()["download_url"])
    content = call(client, "GET", f"{url.path}?{url.query}", key=key, mchid=mchid).content
    assert hashlib.sha1(content, usedforsecurity=False).hexdigest() == applied.json()["hash_value"]
    return list(read_trade_bill([content]))


Answer = int | tuple[int, bytes]
"""A scripted answer: a status with no body, or a status and a body."""


class NotifyReceiver:
    """A merchant's notify endpoint that records every delivery and answers from a script (the last
    answer repeats)."""

    def __init__(
        self,
        answers: tuple[Answer, ...] = (204,),
        verifier: NotificationVerifier | None = None,
        delays: tuple[float, ...] = (),
    ) -> None:
        self.answers = answers
        self.verifier = verifier
        self.delays = delays
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        self.paths: list[str] = []

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        n = len(self.received)
        self.received.append((dict(request.headers), body, time.monotonic()))
        self.paths.append(request.url.path)
        if n < len(self.delays):
            await asyncio.sleep(self.delays[n])
        if self.verifier is not None:
            try:
                self.verifier.verify(request.headers, body)
            except VerificationFailed:
                return Response(b'{"code":"FAIL","message":"bad signature"}', 401)
        answer = self.answers[min(n, len(self.answers) - 1)]
        status, content = (answer, b"") if isinstance(answer, int) else answer
        return Response(content, status_code=status)


class NotifyEndpoint:
    """One notify server for many tests (a server start costs time); each test plugs in a receiver of its own.
    It serves `/notify` (APIv3) and `/v2/notify` (APIv2) alike."""

    def __init__(self) -> None:
        self.receiver = NotifyReceiver()
        self.app = Starlette(
            routes=[Route(path, self.endpoint, methods=["POST"]) for path in ("/notify", "/v2/notify")]
        )

    async def endpoint(self, request: Request) -> Response:
        return await self.receiver.endpoint(request)


Receiving = Callable[[Sandbox, NotifyReceiver], contextlib.AbstractContextManager[str]]
"""The `receiving` fixture: `with receiving(sandbox, receiver) as url:` the sandbox notifies `receiver`."""
