"""Delivery: lease due messages, POST them signed (or publish them to a broker: `brokers`), log
every attempt, retry on a schedule.

Success is a 2xx answer (a broker's acknowledgement) and nothing else; redirects are not followed. A failed attempt is
tried again after the next step of the schedule (±20 % jitter, or the receiver's
``Retry-After`` within bounds); when the schedule is exhausted the message is dead until an
operator re-queues it. An endpoint failing without a single success for `disable_after`
seconds is disabled, which an operator event records; its messages wait, they are not
dropped. Several dispatchers may run: a message is leased to one at a time.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from ledger.store.sql import STORE_ERRORS
from projections.webhooks.brokers import Brokers, Published
from projections.webhooks.outbox import Outbox
from projections.webhooks.records import BODY_LIMIT, Attempt, Endpoint, Message
from projections.webhooks.signing import headers

__all__ = ["WEBHOOK_RETRY_SCHEDULE", "Dispatcher"]

log = logging.getLogger("projections.dispatcher")

# Svix's schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the first attempt (~27 h in all).
WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
USER_AGENT = "payledger-webhooks/0.1"
_READ_LIMIT = 4 * BODY_LIMIT  # bytes of a response kept; the rest is not even read


class Dispatcher:
    def __init__(
        self,
        outbox: Outbox,
        *,
        schedule: Sequence[float] = WEBHOOK_RETRY_SCHEDULE,
        timeout: float = 10.0,
        retry_after_max: float = 3600.0,
        disable_after: float = 5 * 24 * 3600.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        batch: int = 10,
        workers: int = 4,
        jitter: float = 0.2,
    ) -> None:
        if not schedule:
            raise ValueError("the retry schedule needs at least one step")
        self._endpoints = outbox.endpoints
        self._leases = outbox.leases
        self._schedule = tuple(schedule)
        self._timeout = timeout
        self._retry_after_max = retry_after_max
        self._disable_after = disable_after
        self._clock = clock
        self._batch = batch
        self._jitter = jitter
        # Long enough for a whole batch to time out one message after another (connect, send, read).
        self._lease = max(60.0, batch * (3 * timeout + 5.0) + 30.0)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client = httpx.Client(
            transport=transport, timeout=timeout, follow_redirects=False, headers={"user-agent": USER_AGENT}
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") if workers > 1 else None
        self._brokers = Brokers(timeout=timeout)
        self._stop = threading.Event()

    def run_once(self, limit: int = 100) -> int:
        """Attempt up to `limit` due messages; returns how many were attempted."""
        attempted = 0
        while attempted < limit and not self._stop.is_set():
            claimed = self._leases.claim_due(
                self.owner, self._clock(), self._lease, min(self._batch, limit - attempted)
            )
            if not claimed:
                break
            endpoints = {e.id: e for e in self._endpoints.all()}
            # One endpoint's messages go one after another, in order of creation; endpoints in parallel.
            groups: dict[str, list[Message]] = {}
            for msg in claimed:
                groups.setdefault(msg.endpoint_id, []).append(msg)
            jobs = [(endpoints.get(ep), msgs) for ep, msgs in groups.items()]
            if self._pool is None or len(jobs) == 1:
                attempted += sum(self._deliver_all(ep, msgs) for ep, msgs in jobs)
            else:
                attempted += sum(self._pool.map(lambda job: self._deliver_all(*job), jobs))
        return attempted

    def run_forever(self, stop: threading.Event, idle: float = 1.0) -> None:
        """Deliver until `stop` is set; requests in flight finish, unsent leases are released."""
        self._stop = stop
        while not stop.is_set():
            try:
                attempted = self.run_once()
            except STORE_ERRORS as exc:  # the store is away: wait, then retry
                log.warning("outbox unavailable: %s", type(exc).__name__)
                attempted = 0
            except Exception:  # keep delivering; leased messages are retried when their lease ends
                log.exception("dispatch pass failed")
                attempted = 0
            if not attempted:
                stop.wait(idle)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self._client.close()
        self._brokers.close()

    def _deliver_all(self, endpoint: Endpoint | None, messages: list[Message]) -> int:
        for done, msg in enumerate(messages):
            if endpoint is None or not endpoint.enabled or self._stop.is_set():
                self._leases.release(self.owner, [m.id for m in messages[done:]])
                return done
            if not self._deliver(endpoint, msg):
                endpoint = self._endpoints.get(endpoint.id)  # it may have been disabled just now
        return len(messages)

    def _deliver(self, endpoint: Endpoint, msg: Message) -> bool:
        """One attempt; True when it succeeded."""
        if endpoint.transport != "webhook":
            return self._publish(endpoint, msg)
        at = self._clock()
        sent = headers(endpoint.secrets, msg.id, int(at), msg.body) | {"content-type": "application/json"}
        status: int | None = None
        text, error, retry_after = "", None, None
        started = time.perf_counter()
        try:
            with self._client.stream("POST", endpoint.url, content=msg.body, headers=sent) as response:
                status = response.status_code
                text = self._read_some(response, started)
                if response.is_redirect:
                    error = f"redirect not followed (location {response.headers.get('location', '')[:200]!r})"
                retry_after = self._retry_after(response.headers.get("retry-after"), at)
        except httpx.TimeoutException:
            error = "timeout"
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        duration_ms = (time.perf_counter() - started) * 1000
        attempt = Attempt(at, status, duration_ms, text[:BODY_LIMIT], error)
        log.info(
            "webhook %s to %s (%s): %s in %.0f ms",
            msg.id,
            endpoint.id,
            msg.event_type,
            status if error is None else f"{status or '-'} {error}",
            duration_ms,
        )
        log.debug("webhook %s response body: %r", msg.id, attempt.response_body)
        if error is None and status is not None and 200 <= status < 300:
            self._leases.mark_delivered(self.owner, msg.id, attempt)
            return True
        self._failed(endpoint, msg, attempt, retry_after)
        return False

    def _publish(self, endpoint: Endpoint, msg: Message) -> bool:
        """One attempt to a broker endpoint; True when the broker took the message."""
        at = self._clock()
        started = time.perf_counter()
        try:
            published = self._brokers.send(endpoint, msg)
        except TimeoutError:
            published = Published("timeout")
        duration_ms = (time.perf_counter() - started) * 1000
        attempt = Attempt(at, None, duration_ms, published.response[:BODY_LIMIT], published.error)
        outcome = published.response if published.error is None else published.error
        log.info(
            "%s %s to %s (%s): %s in %.0f ms",
            endpoint.transport,
            msg.id,
            endpoint.id,
            msg.event_type,
            outcome,
            duration_ms,
        )
        if published.error is None:
            self._leases.mark_delivered(self.owner, msg.id, attempt)
            return True
        self._failed(endpoint, msg, attempt, None)
        return False

    def _read_some(self, response: httpx.Response, started: float) -> str:
        data = b""
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= _READ_LIMIT:
                break
            if time.perf_counter() - started > self._timeout:
                raise httpx.ReadTimeout("response body too slow", request=response.request)
        return data[:_READ_LIMIT].decode("utf-8", errors="replace")

    def _failed(self, endpoint: Endpoint, msg: Message, attempt: Attempt, retry_after: float | None) -> None:
        now = self._clock()
        number = msg.attempts + 1
        if number > len(self._schedule):
            self._leases.mark_dead(self.owner, msg.id, attempt)
            log.warning("%s %s to %s is dead after %d attempts", endpoint.transport, msg.id, endpoint.id, number)
        else:
            step = self._schedule[number - 1]
            delay = (
                retry_after if retry_after is not None else step * random.uniform(1 - self._jitter, 1 + self._jitter)
            )
            self._leases.schedule_retry(self.owner, msg.id, attempt, now + delay)
        failing_since = self._endpoints.note_failure(endpoint.id, attempt.attempted_at)
        if now - failing_since >= self._disable_after:
            since = dt.datetime.fromtimestamp(failing_since, dt.UTC).isoformat()
            reason = f"failing since {since} (more than {self._disable_after:.0f} s)"
            if self._endpoints.disable(endpoint.id, reason, at=now):
                log.warning("endpoint %s disabled: %s", endpoint.id, reason)

    def _retry_after(self, value: str | None, now: float) -> float | None:
        """Seconds the receiver asks us to wait (delta-seconds or an HTTP date), within bounds."""
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError):
                return None
        return min(max(seconds, 1.0), self._retry_after_max)
