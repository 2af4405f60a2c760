"""The consuming side of broker endpoints, written with the brokers' own clients: a JetStream
stream and a RabbitMQ queue of their own per test (unique names), read back and removed.

The brokers are the real ones on this machine (`NATS_URL`, `AMQP_URL`, overridable with
``LEDGER_TEST_NATS_URL`` and ``LEDGER_TEST_AMQP_URL``)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import nats
from nats.js.api import StreamConfig

__all__ = ["AMQP_URL", "NATS_URL", "AmqpQueue", "Got", "NatsStream", "reachable", "unique"]

NATS_URL = os.environ.get("LEDGER_TEST_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("LEDGER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique(kind: str) -> str:
    return f"{kind}{uuid.uuid4().hex[:12]}"


def reachable(url: str) -> str | None:
    """None when something listens at `url`'s host and port; else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=3):
            return None
    except OSError as exc:
        return type(exc).__name__


@dataclass(frozen=True)
class Got:
    """One message as a consumer gets it."""

    subject: str  # NATS subject, or the AMQP routing key
    headers: dict[str, Any]
    body: bytes
    properties: dict[str, Any]


class NatsStream:
    """A JetStream stream capturing ``<prefix>.>``; `messages` reads it, `delete` removes it."""

    def __init__(self, prefix: str | None = None, *, create: bool = True) -> None:
        self.prefix = prefix or unique("payledger_t_")
        self.name = unique("PAYLEDGER_T_")
        self.endpoint_url = f"{NATS_URL}/{self.prefix}"
        if create:
            self.create()

    async def _call(self, action: str) -> Any:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            if action == "create":
                await js.add_stream(StreamConfig(name=self.name, subjects=[f"{self.prefix}.>"]))
                return None
            if action == "delete":
                try:
                    await js.delete_stream(self.name)
                except nats.js.errors.NotFoundError:
                    pass
                return None
            info = await js.stream_info(self.name)
            got = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                raw = await js.get_msg(self.name, seq)
                got.append(Got(str(raw.subject), dict(raw.headers or {}), raw.data or b"", {}))
            return got
        finally:
            await nc.close()

    def create(self) -> None:
        asyncio.run(self._call("create"))

    def messages(self) -> list[Got]:
        result: list[Got] = asyncio.run(self._call("read"))
        return result

    def delete(self) -> None:
        asyncio.run(self._call("delete"))


class AmqpQueue:
    """A durable topic exchange and a queue bound to it (``#``); `messages` drains the queue.

    `reject_publish` makes the queue refuse every message (x-max-length 0, reject-publish): the
    broker nacks them. `bind=False` leaves the exchange without a queue: messages are unroutable.
    """

    def __init__(self, *, bind: bool = True, reject_publish: bool = False) -> None:
        self.exchange = unique("payledger.t.")
        self.queue = unique("payledger.q.")
        self.endpoint_url = f"{AMQP_URL.rstrip('/')}/?exchange={self.exchange}"
        self._bind, self._reject = bind, reject_publish
        asyncio.run(self._call("create"))

    async def _call(self, action: str) -> Any:
        connection = await aio_pika.connect(AMQP_URL)
        try:
            channel = await connection.channel()
            if action == "create":
                exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                if self._bind:
                    arguments: dict[str, Any] = {"x-max-length": 0, "x-overflow": "reject-publish"}
                    queue = await channel.declare_queue(
                        self.queue, durable=True, arguments=arguments if self._reject else None
                    )
                    await queue.bind(exchange, "#")
                return None
            if action == "delete":
                await channel.queue_delete(self.queue)
                await channel.exchange_delete(self.exchange)
                return None
            queue = await channel.get_queue(self.queue)
            got = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                properties = {
                    "message_id": message.message_id,
                    "content_type": message.content_type,
                    "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
                    "type": message.type,
                }
                got.append(Got(message.routing_key or "", dict(message.headers), message.body, properties))
            return got
        finally:
            await connection.close()

    def messages(self) -> list[Got]:
        result: list[Got] = asyncio.run(self._call("read"))
        return result

    def delete(self) -> None:
        asyncio.run(self._call("delete"))
