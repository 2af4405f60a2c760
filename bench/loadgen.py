"""A small open-loop HTTP/1.1 load generator for the benches: keep-alive connections, raw asyncio.

Requests are bytes made before the clock starts; `open_loop` sends request i at t0 + i/rate
whether or not earlier ones were answered, so a slow server shows as latency, not as fewer
requests. A few lines of asyncio rather than httpx: httpx.AsyncClient spends about 2 ms of CPU
per request on this 2-core machine, taken from the server it measures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["HOST", "Pool", "Stream", "get_request", "open_loop", "percentile", "post_request"]

HOST = "127.0.0.1"
REQUEST_TIMEOUT = 30.0


def get_request(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode("ascii")


def post_request(path: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, whether the connection may be reused); no chunked answers expected."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"transfer-encoding" in headers:
            raise ValueError("chunked answer")
        length = int(headers.get(b"content-length", b"0"))
        body = await self.reader.readexactly(length) if length else b""
        return int(status_line.split(b" ", 2)[1]), body, headers.get(b"connection") != b"close"


class Pool:
    """Keep-alive connections to one server, opened on demand and reused."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[_Connection] = []

    async def connect(self, count: int) -> None:
        opened = await asyncio.gather(*(asyncio.open_connection(HOST, self.port) for _ in range(count)))
        self._idle.extend(_Connection(r, w) for r, w in opened)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = _Connection(*await asyncio.open_connection(HOST, self.port))
        try:
            status, body, reusable = await connection.exchange(request)
        except BaseException:
            connection.writer.close()
            raise
        if reusable:
            self._idle.append(connection)
        else:
            connection.writer.close()
        return status, body

    def close(self) -> None:
        for connection in self._idle:
            connection.writer.close()
        self._idle.clear()


@dataclass
class Stream:
    """One kind of request in a phase: its requests, the rate, the status every answer must have."""

    name: str
    requests: Sequence[bytes]
    rate: float
    expect: int = 200
    check: Callable[[bytes], str | None] | None = None  # a problem with an answer's body, or None
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _send(pool: Pool, stream: Stream, request: bytes) -> None:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, body = await pool.send(request)
    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError, TimeoutError) as exc:
        stream.failures.append(f"{type(exc).__name__}: {exc}")
        return
    stream.latencies_ms.append((time.perf_counter() - started) * 1000)
    if status != stream.expect:
        stream.failures.append(f"HTTP {status}: {body[:200].decode(errors='replace')}")
    elif stream.check is not None and (problem := stream.check(body)):
        stream.failures.append(problem)


async def _drive(pool: Pool, stream: Stream) -> None:
    tasks = []
    started = time.perf_counter()
    for i, request in enumerate(stream.requests):
        delay = started + i / stream.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_send(pool, stream, request)))
    await asyncio.gather(*tasks)
    stream.seconds = time.perf_counter() - started


async def open_loop(port: int, streams: Sequence[Stream], connections: int = 32) -> None:
    """Drive every stream at once, each on its own schedule and its own connections."""
    pools = [Pool(port) for _ in streams]
    try:
        for pool in pools:
            await pool.connect(connections)
        await asyncio.gather(*(_drive(pool, stream) for pool, stream in zip(pools, streams, strict=True)))
    finally:
        for pool in pools:
            pool.close()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a latency some request actually had."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
