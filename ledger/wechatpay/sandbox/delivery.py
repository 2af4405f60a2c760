"""Notification delivery as WeChat Pay does it ([protocol: Answering a notification]): signed POSTs, retried
on its schedule.

Every APIv3 attempt is re-signed with a fresh timestamp and nonce over the same body, and answered
200 or 204 within 5 seconds to count as received. An attempt may first be a signature probe ([protocol:
Signature probes]), and a delivery may be sent twice (a duplicate). An APIv2 notification ([protocol:
Legacy APIv2 XML]) is XML sent as it is every time, received only when answered HTTP 200 with exactly
the success XML ([protocol: Answering in XML]).
The 5-second answer deadline is WeChat's: a time scale shortens the waits between retries, never it.
All of it runs as tasks in the server's event loop; other threads only schedule and wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ledger.wechatpay.sandbox.legacy import SUCCESS_ANSWER
from ledger.wechatpay.sandbox.signer import Delivery

__all__ = [
    "ANSWER_TIMEOUT",
    "COMPLAINT_RETRY_SCHEDULE",
    "RETRY_SCHEDULE",
    "DeliveryAttempt",
    "Notification",
    "Notifier",
]

# [protocol: Retries and lost notifications]: seconds to wait before each retry; 15 retries after the first attempt.
# APIv2 notifications are retried on the same schedule ([protocol: Answering in XML]).
RETRY_SCHEDULE: tuple[int, ...] = (
    15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600,
)  # fmt: skip
# [next: Other notification types]: complaints are retried
# "5s * 1次, 1min * 10次, 之后以5min间隔重试, 重试1000次或最多持续1周" (1000 retries come first).
COMPLAINT_RETRY_SCHEDULE: tuple[int, ...] = (5, *(60,) * 10, *(300,) * 989)
ANSWER_TIMEOUT = 5.0
"""Seconds a receiver has to answer ([protocol: Answering a notification]), whatever the time scale."""


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST (or one decision not to send): what was sent and what the receiver answered."""

    notification_id: str
    event_type: str
    attempt: int
    status: int | None
    was_probe: bool = False
    was_duplicate: bool = False
    dropped: bool = False
    error: str | None = None
    serial: str | None = None
    at: float = 0.0
    accepted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Notification:
    """One notification: a fixed id and body, delivered until received. `api` "v2" is an XML
    notification (its id is the sandbox's own: APIv2 has none); `event_type` then names what it tells
    ("TRANSACTION.SUCCESS", "REFUND.SUCCESS"...) as APIv3 would."""

    id: str
    event_type: str
    body: bytes
    url: str | None
    seed: int
    dropped: bool = False
    out_trade_no: str = ""
    out_refund_no: str | None = None
    state: str = "scheduled"  # scheduled, delivered, failed, dropped, cancelled
    api: str = "v3"
    sub_mchid: str | None = None
    combine_out_trade_no: str | None = None
    schedule: tuple[int, ...] = RETRY_SCHEDULE

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["body"] = self.body.decode()
        del out["schedule"]
        return out


def _accepted(api: str, status: int | None, answer: bytes) -> bool:
    if api == "v2":
        return status == 200 and answer == SUCCESS_ANSWER
    return status in (200, 204)


class Notifier:
    """Delivers notifications from the event loop it is started in (see `running`)."""

    def __init__(
        self,
        *,
        sign: Callable[[bytes], Delivery],
        probe: Callable[[Delivery], Delivery],
        clock: Callable[[], float] = time.time,
        time_scale: float = 1.0,
        duplicate_rate: float = 0.0,
        probe_rate: float = 0.0,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if answer_timeout <= 0:
            raise ValueError("answer_timeout must be positive")
        self.answer_timeout = answer_timeout
        self._sign = sign
        self._probe = probe
        self._clock = clock
        self.time_scale = time_scale
        self.duplicate_rate = duplicate_rate
        self.probe_rate = probe_rate
        self._cond = threading.Condition()
        self._attempts: list[DeliveryAttempt] = []
        self._notifications: list[Notification] = []
        self._pending: list[Notification] = []
        self._outstanding = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def attempts(self) -> list[DeliveryAttempt]:
        with self._cond:
            return list(self._attempts)

    @property
    def notifications(self) -> list[Notification]:
        with self._cond:
            return [dataclasses.replace(n) for n in self._notifications]

    # -- lifecycle -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver from the current event loop until the block ends; then cancel what is left."""
        client = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        with self._cond:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._client = client
            pending, self._pending = self._pending, []
        for notification in pending:
            self._start(notification)
        try:
            yield
        finally:
            with self._cond:
                self._loop = None
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await client.aclose()
            with self._cond:
                self._client = None

    def schedule(self, notification: Notification) -> None:
        """Deliver from now on (or log it as dropped); callable from any thread."""
        with self._cond:
            self._notifications.append(notification)
            if notification.dropped or notification.url is None:
                notification.state = "dropped"
                error = None if notification.dropped else "no notify_url"
                self._log(notification, 0, None, dropped=True, error=error)
                return
            self._outstanding += 1
            loop = self._loop
            if loop is None:
                self._pending.append(notification)
                return
        try:
            loop.call_soon_threadsafe(self._start, notification)
        except RuntimeError:  # the loop closed in between
            self._finish(notification, "cancelled")

    def _start(self, notification: Notification) -> None:
        if self._loop is None:
            self._finish(notification, "cancelled")
            return
        task = asyncio.get_running_loop().create_task(self._deliver(notification))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(self, notification: Notification, state: str) -> None:
        with self._cond:
            notification.state = state
            self._outstanding -= 1
            self._cond.notify_all()

    # -- waiting -------------------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = 10.0) -> None:
        """Block until every scheduled delivery has finished; `TimeoutError` otherwise."""
        if self._loop_thread == threading.get_ident() and self._loop is not None:
            raise RuntimeError("wait_idle() would block the event loop: use `await idle()` there")
        with self._cond:
            if not self._cond.wait_for(lambda: self._outstanding == 0, timeout):
                raise TimeoutError(f"{self._outstanding} notification(s) still being delivered")

    async def idle(self, timeout: float | None = 10.0) -> None:
        """`wait_idle` for coroutines, in the sandbox's own event loop or any other."""
        if self._loop is None or asyncio.get_running_loop() is not self._loop:
            await asyncio.to_thread(self.wait_idle, timeout)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._outstanding == 0:
                    return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("notifications still being delivered")
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=remaining)
            else:  # scheduled from another thread, task not created yet
                await asyncio.sleep(0.001)

    # -- delivering ----------------------------------------------------------------------------

    async def _deliver(self, notification: Notification) -> None:
        rng = random.Random(notification.seed)
        state = "cancelled"
        try:
            for attempt in range(len(notification.schedule) + 1):
                if attempt:
                    await asyncio.sleep(notification.schedule[attempt - 1] / self.time_scale)
                if await self._attempt(notification, attempt, rng):
                    state = "delivered"
                    return
            state = "failed"
        finally:
            self._finish(notification, state)

    async def _attempt(self, notification: Notification, attempt: int, rng: random.Random) -> bool:
        """One slot of the schedule; True when the receiver accepted it."""
        v3 = notification.api == "v3"
        # APIv2 has no signature probes: its sign is over the body, not the delivery.
        if v3 and rng.random() < self.probe_rate:
            probe = self._probe(self._sign(notification.body))
            # WeChat takes a 2xx to a probe as delivered: the log shows the receiver's mistake.
            if await self._post(notification, attempt, probe, was_probe=True):
                return True
        delivery = self._delivery(notification)
        accepted = await self._post(notification, attempt, delivery)
        if rng.random() < self.duplicate_rate:
            again = delivery if rng.random() < 0.5 else self._delivery(notification)
            accepted = await self._post(notification, attempt, again, was_duplicate=True) or accepted
        return accepted

    def _delivery(self, notification: Notification) -> Delivery:
        if notification.api == "v2":
            return Delivery(notification.body, {"Content-Type": "text/xml"}, notification.id)
        return self._sign(notification.body)

    async def _post(
        self,
        notification: Notification,
        attempt: int,
        delivery: Delivery,
        *,
        was_probe: bool = False,
        was_duplicate: bool = False,
    ) -> bool:
        """POST one delivery; True when its answer says it was received."""
        client = self._client
        assert client is not None and notification.url is not None  # set before any task starts
        status: int | None = None
        answer = b""
        error: str | None = None
        headers = {"Content-Type": "application/json", **delivery.headers}
        try:
            response = await client.post(
                notification.url, content=delivery.body, headers=headers, timeout=self.answer_timeout
            )
            status, answer = response.status_code, response.content
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        accepted = _accepted(notification.api, status, answer)
        with self._cond:
            self._log(
                notification,
                attempt,
                status,
                was_probe=was_probe,
                was_duplicate=was_duplicate,
                error=error,
                serial=delivery.headers.get("Wechatpay-Serial"),
                accepted=accepted,
            )
        return accepted

    def _log(self, notification: Notification, attempt: int, status: int | None, **details: Any) -> None:
        self._attempts.append(
            DeliveryAttempt(notification.id, notification.event_type, attempt, status, at=self._clock(), **details)
        )
