"""Slow and oversized requests against the real server (uvicorn) over raw sockets.

A body trickled a byte at a time is cut off after LEDGER_BODY_READ_TIMEOUT; an oversized body,
declared or chunked, is refused with 413 long before it is all sent, and the connection closed.
Slow *headers* never reach the app, and uvicorn has no timeout for them (its keep-alive timer
starts only after a first answer; h11 only caps the head at 16 KiB): nginx's client_header_timeout
bounds them in the deployment, and the last test here holds deploy/nginx.conf to that.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from api.app import create_app
from ledger.application import Ledger, build_ledger
from ledger.errors import ConfigurationError
from ledger.settings import Settings
from tests.support.deploy import nginx_conf, nginx_seconds
from tests.support.servers import running

REQUEST_HEAD = (
    "POST /wechatpay/notify HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Content-Type: application/json\r\n"
    "Wechatpay-Timestamp: 1700000000\r\n"
    "Wechatpay-Nonce: n\r\n"
    "Wechatpay-Signature: s\r\n"
    "Wechatpay-Serial: PUB_KEY_ID_0\r\n"
)


@pytest.fixture
def server(merchant_env: dict[str, str], sqlite_url: str) -> Iterator[tuple[tuple[str, int], Ledger]]:
    env = {**merchant_env, "LEDGER_DATABASE_URL": sqlite_url, "LEDGER_BODY_READ_TIMEOUT": "1"}
    ledger = build_ledger(sqlite_url)
    try:
        with running(create_app(Settings.load(env), ledger=ledger, background=False)) as url:
            parts = urlsplit(url)
            yield (parts.hostname or "127.0.0.1", parts.port or 80), ledger
    finally:
        ledger.close()


@contextlib.contextmanager
def connect(address: tuple[str, int]) -> Iterator[socket.socket]:
    with socket.create_connection(address, timeout=10) as sock:
        yield sock


def answered(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer, then what follows it until the server closes (which must be soon)."""
    data = b""
    closed = False
    # uvicorn's keep-alive timer would close it after 5 s; "Connection: close" must do it at once.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
            break
        data += chunk
    assert closed, "the server kept the connection open after refusing the body"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body[: int(headers.get("content-length", len(body)))]


def test_a_body_trickled_byte_by_byte_is_cut_off_after_the_read_timeout(
    server: tuple[tuple[str, int], Ledger],
) -> None:
    address, ledger = server
    with connect(address) as sock:
        sock.sendall((REQUEST_HEAD + "Content-Length: 1000\r\n\r\n").encode())
        started = time.monotonic()
        sent = 0
        while not answered(sock) and time.monotonic() - started < 5:
            sock.sendall(b"{" if sent == 0 else b" ")
            sent += 1
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        status, headers, body = read_answer(sock)
    assert status == 408
    assert json.loads(body) == {"code": "FAIL", "message": "request body timeout"}
    assert headers["connection"] == "close"
    # Without a read timeout the loop above gives up at 5 s (trickling all 1000 bytes takes 50 s).
    assert 1 <= elapsed < 4, f"cut off after {elapsed:.1f}s with LEDGER_BODY_READ_TIMEOUT=1"
    assert sent < 1000
    assert ledger.recorder.max_notification_id() is None


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: tuple[tuple[str, int], Ledger]) -> None:
    address, _ = server
    with connect(address) as sock:
        sock.sendall((REQUEST_HEAD + f"Content-Length: {10 * 1024 * 1024}\r\n\r\n").encode() + b"{" * 1024)
        status, headers, body = read_answer(sock)
    assert status == 413
    assert json.loads(body) == {"code": "FAIL", "message": "body too large"}
    assert headers["connection"] == "close"


def test_a_chunked_body_without_length_is_refused_once_past_the_limit(
    server: tuple[tuple[str, int], Ledger],
) -> None:
    address, _ = server
    chunk = b"x" * 4096
    sent = 0
    with connect(address) as sock:
        sock.sendall((REQUEST_HEAD + "Transfer-Encoding: chunked\r\n\r\n").encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while not answered(sock) and sent < 4 * 1024 * 1024:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                time.sleep(0.001)
        status, headers, body = read_answer(sock)
    assert status == 413
    assert json.loads(body)["message"] == "body too large"
    assert headers["connection"] == "close"
    # Refused at 64 KiB; what was already in flight in the socket buffers is all that was taken.
    assert sent < 1024 * 1024, f"{sent} bytes sent before the answer"


def test_headers_beyond_uvicorns_limit_never_reach_the_app(server: tuple[tuple[str, int], Ledger]) -> None:
    """h11 stops at 16 KiB of request head: a header flood costs a replica no more than that."""
    address, _ = server
    with connect(address) as sock:
        sock.sendall(REQUEST_HEAD.encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(200):
                sock.sendall(f"X-Filler-{i}: {'a' * 200}\r\n".encode())
        status, _, _ = read_answer(sock)
    assert status in (400, 431)


def test_nginx_bounds_slow_headers_slow_bodies_and_body_size_within_the_apps_own_limits() -> None:
    conf = nginx_conf()
    settings = Settings.load({"LEDGER_DATABASE_URL": "sqlite:///unused.db"}, require_merchant=False)

    def directive(name: str) -> str:
        found = re.findall(rf"^\s*{name}\s+(\S+);", conf, re.M)
        assert len(found) == 1, f"nginx.conf must set {name} once"
        return found[0]

    assert nginx_seconds(directive("client_header_timeout")) <= settings.body_read_timeout
    assert nginx_seconds(directive("client_body_timeout")) <= settings.body_read_timeout
    size = re.fullmatch(r"(\d+)([km]?)", directive("client_max_body_size"))
    assert size, "client_max_body_size must be a size"
    assert int(size[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[size[2]] <= settings.max_body_bytes


@pytest.mark.parametrize("value", ["0", "61", "1.5", "ten"])
def test_body_read_timeout_is_whole_seconds_from_1_to_60(merchant_env: dict[str, str], value: str) -> None:
    assert Settings.load({**merchant_env, "LEDGER_BODY_READ_TIMEOUT": "7"}).body_read_timeout == 7
    assert Settings.load(merchant_env).body_read_timeout == 10
    with pytest.raises(ConfigurationError) as caught:
        Settings.load({**merchant_env, "LEDGER_BODY_READ_TIMEOUT": value})
    assert caught.value.setting == "LEDGER_BODY_READ_TIMEOUT"
