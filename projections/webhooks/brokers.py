"""Broker endpoints: publish outbox messages to NATS JetStream and to RabbitMQ.

The dispatcher hands a leased message to `Brokers.send`, which publishes it and waits for the
broker to take it: JetStream's PubAck, or RabbitMQ's publisher confirm. Anything else is a
failed attempt, retried on the dispatcher's schedule and dead-lettered after it: a broker
that is down, a subject no stream captures, a nack, a message returned as unroutable
(published mandatory), no answer in time.

Each message carries CloudEvents 1.0 headers in binary mode (``ce-specversion``, ``ce-id`` = the
message id, ``ce-type``, ``ce-source`` = ``payledger/<mchid>``, ``ce-time``, ``ce-subject`` = the
order's out_trade_no), content type ``application/json``, and the webhook's JSON body. The id
is stable across attempts: JetStream's ``Nats-Msg-Id`` (its duplicate window drops a message
published again after a crash) and AMQP's ``message_id`` (consumers deduplicate on it).

The client libraries are asyncio; the dispatcher is threads. One event loop in a thread of its
own holds a connection per broker URL, reused across messages and opened again after a failure;
dispatcher threads wait on it for each publication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import aio_pika
import nats
import nats.errors
import nats.js.errors
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from ledger.endpoint_urls import amqp_target, nats_target
from projections.webhooks.records import Endpoint, Message

__all__ = ["Brokers", "Published", "cloudevent_headers"]

log = logging.getLogger("projections.brokers")
T = TypeVar("T")


@dataclass(frozen=True)
class Published:
    """What one publication came to: `error` None when the broker took the message."""

    error: str | None
    response: str = ""  # what the broker said (stream and sequence; a duplicate)


def cloudevent_headers(msg: Message) -> dict[str, str]:
    """The CloudEvents 1.0 binary-mode headers of `msg` (the event's time from its body)."""
    try:
        when = str(json.loads(msg.body).get("timestamp", ""))
    except ValueError:
        when = ""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": msg.id,
        "ce-type": msg.event_type,
        "ce-source": f"payledger/{msg.mchid}",
        "ce-subject": msg.out_trade_no,
    }
    if when:
        headers["ce-time"] = when
    return headers


def _error(exc: BaseException, url: str) -> str:
    """An attempt's error: the exception's kind and words, any password in them masked."""
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no JetStream stream captures the subject"
    if isinstance(exc, aio_pika.exceptions.PublishError):
        return "unroutable: the exchange returned the message (no queue bound for its routing key)"
    if isinstance(exc, aio_pika.exceptions.DeliveryError):
        return "nack: the broker refused the message"
    if isinstance(exc, asyncio.TimeoutError | nats.errors.TimeoutError):
        return "timeout"
    text = f"{type(exc).__name__}: {exc}"
    password = urlsplit(url).password
    if password:
        for form in {password, quote(password, safe=""), quote(password)}:
            text = text.replace(form, "***")
    return text[:300]


class _Nats:
    def __init__(self, client: NatsClient, js: JetStreamContext) -> None:
        self.client, self.js = client, js


class _Amqp:
    def __init__(self, connection: AbstractConnection, channel: AbstractChannel, exchange: AbstractExchange) -> None:
        self.connection, self.channel, self.exchange = connection, channel, exchange


async def _quiet(*_: Any) -> None:
    """The NATS client's callbacks: its failures are reported by the attempt that meets them."""


class Brokers:
    """Publishers to every broker endpoint, on one event loop; safe to call from many threads."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Lock()
        self._nats: dict[str, _Nats] = {}
        self._amqp: dict[str, _Amqp] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def send(self, endpoint: Endpoint, msg: Message) -> Published:
        """Publish `msg` to `endpoint` and wait for the broker's acknowledgement."""
        publish = self._publish_nats if endpoint.transport == "nats" else self._publish_amqp
        return self._run(self._attempt(endpoint.url, publish, msg), self._timeout * 3 + 5)

    def close(self) -> None:
        """Close every connection and stop the loop."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._run(self._close_all(), self._timeout + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            self._loop.close()
            self._loop = self._thread = None

    def _run(self, coroutine: Coroutine[Any, Any, T], wait: float) -> T:
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(wait)
        except FutureTimeout:
            future.cancel()
            raise

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._started:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="brokers", daemon=True)
                self._thread.start()
            return self._loop

    async def _attempt(self, url: str, publish: Callable[[str, Message], Awaitable[str]], msg: Message) -> Published:
        try:
            async with asyncio.timeout(self._timeout * 3):
                return Published(None, await publish(url, msg))
        except Exception as exc:  # every failure is a failed attempt; the connection is opened anew
            await self._drop(url)
            return Published(_error(exc, url))

    # -- NATS JetStream ------------------------------------------------------------------------------

    async def _publish_nats(self, url: str, msg: Message) -> str:
        target = nats_target(url)
        conn = await self._nats_connection(url)
        headers = cloudevent_headers(msg) | {"content-type": "application/json", "Nats-Msg-Id": msg.id}
        ack = await conn.js.publish(
            f"{target.prefix}.{msg.event_type}", msg.body, timeout=self._timeout, headers=headers
        )
        return f"stream {ack.stream} seq {ack.seq}" + (" (duplicate)" if ack.duplicate else "")

    async def _nats_connection(self, url: str) -> _Nats:
        async with self._lock(url):
            found = self._nats.get(url)
            if found is not None and found.client.is_connected:
                return found
            client = await nats.connect(
                servers=[nats_target(url).server],
                name="payledger",
                connect_timeout=max(1, int(self._timeout)),
                allow_reconnect=False,  # a lost connection fails the attempt; the next one connects again
                max_reconnect_attempts=1,  # and a broker that is down fails it at once (two tries)
                reconnect_time_wait=0.2,
                error_cb=_quiet,
                disconnected_cb=_quiet,
                closed_cb=_quiet,
            )
            self._nats[url] = _Nats(client, client.jetstream(timeout=self._timeout))
            return self._nats[url]

    # -- RabbitMQ ------------------------------------------------------------------------------------

    async def _publish_amqp(self, url: str, msg: Message) -> str:
        conn = await self._amqp_connection(url)
        message = aio_pika.Message(
            msg.body,
            headers=dict(cloudevent_headers(msg)),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg.id,
            type=msg.event_type,
            app_id="payledger",
        )
        await conn.exchange.publish(message, routing_key=msg.event_type, mandatory=True, timeout=self._timeout)
        return "confirmed"

    async def _amqp_connection(self, url: str) -> _Amqp:
        async with self._lock(url):
            found = self._amqp.get(url)
            if found is not None and not found.connection.is_closed and not found.channel.is_closed:
                return found
            target = amqp_target(url)
            connection = await aio_pika.connect(
                host=target.host,
                port=target.port,
                login=target.login,
                password=target.password,
                virtualhost=target.vhost,
                ssl=target.tls,
                timeout=self._timeout,
                client_properties={"connection_name": "payledger"},
            )
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                exchange = await channel.declare_exchange(target.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            except BaseException:
                await connection.close()
                raise
            self._amqp[url] = _Amqp(connection, channel, exchange)
            return self._amqp[url]

    # -- connections ---------------------------------------------------------------------------------

    def _lock(self, url: str) -> asyncio.Lock:
        return self._locks.setdefault(url, asyncio.Lock())

    async def _drop(self, url: str) -> None:
        nats_conn, amqp_conn = self._nats.pop(url, None), self._amqp.pop(url, None)
        try:
            if nats_conn is not None and not nats_conn.client.is_closed:
                await nats_conn.client.close()
            if amqp_conn is not None and not amqp_conn.connection.is_closed:
                await amqp_conn.connection.close()
        except Exception as exc:  # it is going away anyway
            log.debug("closing a broker connection: %s", type(exc).__name__)

    async def _close_all(self) -> None:
        for url in [*self._nats, *self._amqp]:
            await self._drop(url)
