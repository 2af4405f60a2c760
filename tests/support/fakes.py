"""The fakes the tests run against instead of mocks: a clock, WeChat Pay, a webhook receiver.

- `FakeClock`: time that moves only when a test (or a `sleep` it was handed) moves it.
- `FakeWeChatPay`: WeChat Pay's API as an httpx `MockTransport` handler playing scripted answers.
- `FakeWeChat`: the status query a reconciler makes, answered from a dict of trade states.
- `Receiver`: a business endpoint for outbound webhooks, served for real (see `servers.running`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.application import Ledger
from ledger.domain import PaymentOrder, QueryEvidence
from ledger.errors import WeChatPayUnavailable

__all__ = ["T0", "Answer", "FakeClock", "FakeWeChat", "FakeWeChatPay", "Hit", "Receiver", "failing_then"]

T0 = 1_800_000_000.0
"""A fixed wall-clock time (2027-01-15), the fake clock's default start."""


class FakeClock:
    """Wall clock that moves only by `advance`, or by `sleep`, which also records each wait."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


Answer = Callable[[httpx.Request], httpx.Response]
"""One scripted answer of `FakeWeChatPay`."""


class FakeWeChatPay:
    """WeChat Pay's API side: records each request and plays the scripted answers in order
    (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request)


class FakeWeChat:
    """Answers queries from a dict of trade states, recording who asked and when."""

    def __init__(self, ledger: Ledger, states: dict[str, str], delay: float = 0.0) -> None:
        self.ledger, self.states, self.delay = ledger, states, delay
        self.calls: Counter[str] = Counter()
        self.asked: list[tuple[str, str, str | None, str | None]] = []  # (mchid, no, sub_mchid, combine)
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight = 0
        self.fail: set[str] = set()
        self._lock = threading.Lock()

    def __call__(
        self, mchid: str, out_trade_no: str, *, sub_mchid: str | None = None, combine_out_trade_no: str | None = None
    ) -> PaymentOrder:
        with self._lock:
            self.calls[out_trade_no] += 1
            self.asked.append((mchid, out_trade_no, sub_mchid, combine_out_trade_no))
            self.in_flight[out_trade_no] += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight[out_trade_no])
        try:
            time.sleep(self.delay)
            if out_trade_no in self.fail:
                raise WeChatPayUnavailable("503")
            state = self.states.get(out_trade_no, "NOTPAY")
            merchant = {"mchid": mchid} if sub_mchid is None else {"sp_mchid": mchid, "sub_mchid": sub_mchid}
            transaction: dict[str, Any] = {
                **merchant,
                "out_trade_no": out_trade_no,
                "trade_state": state,
                "amount": {"total": 100, "currency": "CNY"},
            }
            if state == "SUCCESS":
                transaction |= {
                    "transaction_id": f"4200{out_trade_no[-6:]:0>24}",
                    "success_time": "2026-11-27T10:00:00+08:00",
                }
            evidence = QueryEvidence(
                "out_trade_no",
                200,
                "{}",
                {},
                "PUB_KEY_ID_1",
                f"req-{out_trade_no}",
                transaction,
                dt.datetime.now(dt.UTC),
            )
            return self.ledger.record_query(mchid, out_trade_no, evidence, sub_mchid=sub_mchid)
        finally:
            with self._lock:
                self.in_flight[out_trade_no] -= 1


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def timestamp(self) -> int:
        return int(self.headers["webhook-timestamp"])


@dataclass
class Receiver:
    """A business endpoint: records each request and answers (status, headers, delay) from `answer`."""

    answer: Callable[[Hit], tuple[int, dict[str, str], float]] = lambda hit: (200, {}, 0.0)
    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self.app = Starlette(
            routes=[Route("/hook", self._receive, methods=["POST"]), Route("/moved", self._receive, methods=["POST"])]
        )

    async def _receive(self, request: Request) -> Response:
        hit = Hit(request.url.path, dict(request.headers), await request.body())
        self.hits.append(hit)
        status, headers, delay = self.answer(hit)
        if delay:
            await asyncio.sleep(delay)
        return Response(f"answer {status} " + "x" * 2000, status_code=status, headers=headers)

    def to(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]


def failing_then(n: int, status: int = 503, headers: dict[str, str] | None = None) -> Any:
    """A `Receiver.answer`: `status` to the first n requests, then 200."""
    seen = Counter[str]()

    def answer(hit: Hit) -> tuple[int, dict[str, str], float]:
        seen["all"] += 1
        return (status, headers or {}, 0.0) if seen["all"] <= n else (200, {}, 0.0)

    return answer
