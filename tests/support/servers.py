"""Real servers on loopback for the tests: any ASGI app under uvicorn, the ledger's app with a
client for it, and a TCP proxy to cut (the store going away).

`ledger_app` is the ledger's app without a server, for a test that drives it another way
(tests/support/inprocess.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette

from api.app import create_app
from cli.demo import serving
from ledger.application import Ledger, build_ledger
from ledger.settings import Settings
from ledger.wechatpay.sandbox.signer import Delivery

__all__ = [
    "TCPProxy",
    "client_for",
    "free_port",
    "ledger_app",
    "post",
    "running",
    "serve",
    "service",
    "through_proxy",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running(app: Any) -> contextlib.AbstractContextManager[str]:
    """Serve `app` with uvicorn in a thread on a free loopback port (as the demo does); yield its base URL."""
    return serving(app, "127.0.0.1", free_port())


@contextlib.contextmanager
def serve(app: Any, *, timeout: float = 30) -> Iterator[httpx.Client]:
    """`app` under uvicorn on loopback, and a client for it: real HTTP, no test transport."""
    with running(app) as url, httpx.Client(base_url=url, timeout=timeout) as client:
        yield client


@contextlib.contextmanager
def ledger_app(env: dict[str, str], database_url: str, **extra: str) -> Iterator[tuple[Starlette, Ledger]]:
    """The ledger's app on `database_url`, without background workers, and a ledger on the same
    store for the test to read or to drive projections with (closed once the app is done)."""
    settings = Settings.load({**env, "LEDGER_DATABASE_URL": database_url, **extra})
    ledger = build_ledger(database_url)
    try:
        yield create_app(settings, ledger=ledger, background=False), ledger
    finally:
        ledger.close()


@contextlib.contextmanager
def service(env: dict[str, str], database_url: str, **extra: str) -> Iterator[tuple[httpx.Client, Ledger]]:
    """`ledger_app` under uvicorn, and a client for it."""
    with ledger_app(env, database_url, **extra) as (app, ledger), serve(app) as client:
        yield client, ledger


@contextlib.contextmanager
def client_for(env: dict[str, str], database_url: str, **extra: str) -> Iterator[httpx.Client]:
    """The ledger's app as `payledger serve` runs it (its own ledger, background workers on)."""
    settings = Settings.load({**env, "LEDGER_DATABASE_URL": database_url, **extra})
    with serve(create_app(settings)) as client:
        yield client


def post(client: httpx.Client, delivery: Delivery, path: str = "/wechatpay/notify") -> int:
    """WeChat Pay delivering `delivery` to the app; the answer's status."""
    return client.post(path, content=delivery.body, headers=delivery.headers).status_code


class TCPProxy:
    """Forwards a local port to a target; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open = False
        with contextlib.suppress(OSError):
            self.listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def through_proxy(postgres_url: str) -> tuple[TCPProxy, str]:
    """A proxy in front of PostgreSQL (cut it to take the store away) and the URL through it."""
    parts = urlsplit(postgres_url)
    proxy = TCPProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    return proxy, postgres_url.replace(f":{parts.port}/", f":{proxy.port}/", 1) + "&connect_timeout=2"
