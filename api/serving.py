"""Serving the app with uvicorn: one process, or a pre-fork of several on one listening socket.

`payledger serve --workers N` runs N copies of the app, each a process of its own with its own
event loop, group committer and store connections, all accepting from one socket the supervisor
bound. Nothing is shared between them but the store: a notification's decision rests on the
per-order stream's optimistic concurrency (two processes appending to one stream: one commit
wins, the other's batch fails on the unique version key and each of its deliveries is reloaded
and decided again, so it sees the winner's events), never on anything held in memory.

Before forking, the supervisor builds the app once and runs its start-up and shut-down
(`prepare`): every table, index and function is created by one process, so N processes starting
at once never race on `CREATE ... IF NOT EXISTS` (not safe under concurrency on PostgreSQL), and a
store that cannot be opened stops the command before any worker starts. A worker that dies is
started again; SIGTERM or SIGINT stops them all, each finishing what it has in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.types import ASGIApp

__all__ = ["SERVER_OPTIONS", "prepare", "run_workers"]

log = logging.getLogger("api.serving")

# The options of every `payledger serve` process (and of the benchmark's baseline). h11 whatever is
# installed: it refuses a request head past 16 KiB, httptools has no such bound (a header flood
# would reach the app; tests/test_http_limits.py). The event loop is uvloop when installed.
SERVER_OPTIONS: dict[str, Any] = {"log_level": "warning", "timeout_keep_alive": 30, "http": "h11"}
# A worker that dies this soon after it started is not restarted again and again: the command stops.
_CRASH_WINDOW = 5.0


def prepare(app: ASGIApp) -> None:
    """Run `app`'s start-up and shut-down once (the ASGI lifespan): what it creates in the stores
    exists afterwards. Raises when it does not start."""

    async def cycle() -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()

        async def send(message: MutableMapping[str, Any]) -> None:
            await outbox.put(message)

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

        async def receive() -> MutableMapping[str, Any]:
            return await inbox.get()

        running: asyncio.Future[None] = asyncio.ensure_future(app(scope, receive, send))
        for step in ("startup", "shutdown"):
            await inbox.put({"type": f"lifespan.{step}"})
            answer = asyncio.create_task(outbox.get())
            pending: set[asyncio.Future[Any]] = {answer, running}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                running.result()  # the app's own exception, if it raised one
                raise RuntimeError(f"the app ended during its {step}")
            if answer.result()["type"] != f"lifespan.{step}.complete":
                raise RuntimeError(f"the app's {step} failed")
        await running

    asyncio.run(cycle())


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(make_app: Callable[[], ASGIApp], sock: socket.socket) -> int:
    """In a forked child: build the app and serve the shared socket until told to stop."""
    import uvicorn

    # uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found: this one, so the worker exits 0 instead of being killed by its own signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    uvicorn.Server(uvicorn.Config(make_app(), **SERVER_OPTIONS)).run(sockets=[sock])
    return 0


def run_workers(make_app: Callable[[], ASGIApp], host: str, port: int, workers: int) -> int:
    """Serve `make_app()` from `workers` forked processes; returns the command's exit code."""
    if threading.active_count() > 1:
        # A thread would not survive the fork, and a lock it held would stay held in every child.
        raise RuntimeError("run_workers must start before any thread")
    sock = bind(host, port)
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _worker(make_app, sock)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    code = 0
    while children:
        pid, status = os.wait()
        started = children.pop(pid, None)
        if started is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        if time.monotonic() - started < _CRASH_WINDOW:
            log.error("worker %d exited with %d right after it started; stopping", pid, code)
            stop()
            code = code or 1
        else:
            log.error("worker %d exited with %d; starting another", pid, code)
            spawn()
    sock.close()
    return code
