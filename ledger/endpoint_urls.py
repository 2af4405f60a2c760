"""Endpoint URLs: the scheme chooses the transport, and credentials in them never show.

``http(s)://`` is a signed webhook; ``nats://[user:pass@]host[:port]/<subject-prefix>`` publishes
to NATS JetStream; ``amqp(s)://[user:pass@]host[:port]/<vhost>?exchange=<name>`` to a RabbitMQ
topic exchange. `url_problem` says what is wrong with a URL without ever quoting it (it may
hold a password); `masked` is the URL as logs, listings and pages show it.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = [
    "BROKER_SCHEMES",
    "WEBHOOK_SCHEMES",
    "AmqpTarget",
    "NatsTarget",
    "amqp_target",
    "masked",
    "nats_target",
    "url_problem",
]

WEBHOOK_SCHEMES = frozenset({"http", "https"})
BROKER_SCHEMES = frozenset({"nats", "amqp", "amqps"})
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_EXCHANGE = re.compile(r"[A-Za-z0-9_.:-]{1,255}")
_NATS_FORM = "nats://host:4222/<subject-prefix>"
_AMQP_FORM = "amqp://user:pass@host:5672/<vhost>?exchange=<name>"


class NatsTarget(NamedTuple):
    server: str  # nats://[user:pass@]host:port, for the client
    prefix: str


class AmqpTarget(NamedTuple):
    host: str
    port: int
    login: str
    password: str
    vhost: str
    exchange: str
    tls: bool


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        raise ValueError("the endpoint URL's port must be a number from 1 to 65535") from None


def nats_target(url: str) -> NatsTarget:
    parts = urlsplit(url)
    port = _port(url) or 4222
    if not parts.hostname:
        raise ValueError(f"a NATS endpoint URL needs a host: {_NATS_FORM}")
    if parts.query or parts.fragment:
        raise ValueError(f"a NATS endpoint URL takes no query or fragment: {_NATS_FORM}")
    prefix = parts.path.strip("/")
    if not _SUBJECT_PREFIX.fullmatch(prefix):
        raise ValueError(
            f"a NATS endpoint URL needs a subject prefix (letters, digits, '_', '-', dot-separated): {_NATS_FORM}"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    userinfo = parts.netloc.rpartition("@")[0]
    return NatsTarget(f"nats://{userinfo + '@' if userinfo else ''}{host}:{port}", prefix)


def amqp_target(url: str) -> AmqpTarget:
    parts = urlsplit(url)
    port = _port(url)
    if not parts.hostname:
        raise ValueError(f"a RabbitMQ endpoint URL needs a host: {_AMQP_FORM}")
    if parts.fragment:
        raise ValueError(f"a RabbitMQ endpoint URL takes no fragment: {_AMQP_FORM}")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) != {"exchange"} or len(query["exchange"]) != 1:
        raise ValueError(f"a RabbitMQ endpoint URL needs exactly one parameter, exchange: {_AMQP_FORM}")
    exchange = query["exchange"][0]
    if not _EXCHANGE.fullmatch(exchange) or exchange.startswith("amq."):
        raise ValueError("the exchange must be 1-255 letters, digits, '_', '-', '.', ':' and not start with amq.")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    tls = parts.scheme == "amqps"
    return AmqpTarget(
        host=parts.hostname,
        port=port or (5671 if tls else 5672),
        login=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=vhost,
        exchange=exchange,
        tls=tls,
    )


def url_problem(url: str) -> str | None:
    """What makes `url` unusable as an endpoint, in words that never quote it; None if it is fine."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the endpoint URL cannot be parsed"
    scheme = parts.scheme.lower()
    if any(c.isspace() for c in url):
        return "the endpoint URL must not contain whitespace"
    try:
        if scheme in WEBHOOK_SCHEMES:
            _port(url)
            return None if parts.hostname else "an endpoint URL must be http:// or https:// with a host"
        if scheme == "nats":
            nats_target(url)
            return None
        if scheme in ("amqp", "amqps"):
            amqp_target(url)
            return None
    except ValueError as exc:
        return str(exc)
    return "an endpoint URL must be http(s)://, nats:// or amqp(s):// with a host"


def masked(url: str) -> str:
    """`url` with the password of its user info (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.netloc.rpartition("@")[0].partition(":")[0]
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "(an unparsable URL)"
