"""What every command shares: settings (with `--dev`), logging, signals. (Printing: `cli.output`.)"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from api.bootstrap import Services, bootstrap
from api.params import order_sub_mchid, sub_mchid_value
from cli.dev import dev_environment
from ledger.logs import configure_logging
from ledger.settings import Settings

__all__ = [
    "SubParsers",
    "configure_logging",
    "each_shard",
    "load_all_settings",
    "load_settings",
    "load_shards",
    "order_of",
    "services_for",
    "stop_on_signals",
]

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


def load_all_settings(args: argparse.Namespace, *, require_merchant: bool = True) -> Settings:
    """Settings from the environment, every shard; with ``--dev`` and no merchant configured, the local dev merchant."""
    env = dict(os.environ)
    if getattr(args, "dev", False) and not env.get("WECHATPAY_MCHID") and not env.get("LEDGER_CONFIG"):
        env.update(dev_environment())
    return Settings.load(env, require_merchant=require_merchant)


def load_settings(args: argparse.Namespace, *, require_merchant: bool = True) -> Settings:
    """The settings of the one store a command works on: the shard of its ``--mchid``, else of
    `LEDGER_SHARD`, else the first merchant's (on a ledger of one store: all of it)."""
    settings = load_all_settings(args, require_merchant=require_merchant)
    return settings.shard_of(getattr(args, "mchid", None) or settings.shard)


def load_shards(args: argparse.Namespace, *, require_merchant: bool = True) -> tuple[Settings, ...]:
    """Every shard a worker command runs for: `LEDGER_SHARD`'s alone when it is set."""
    settings = load_all_settings(args, require_merchant=require_merchant)
    return (settings.shard_of(settings.shard),) if settings.shard else settings.shards()


def each_shard(
    shards: Sequence[Settings], run: Callable[[Services, threading.Event], int], *, follow: bool = False
) -> int:
    """`run(services, stop)` for each shard: inline for one, a thread per shard for several (every
    shard's workers in one process); the highest exit code. With `follow`, SIGTERM and SIGINT set `stop`."""
    stop = stop_on_signals() if follow else threading.Event()
    if len(shards) == 1:
        with services_for(shards[0]) as services:
            return run(services, stop)
    codes: list[int] = []

    def one(shard: Settings) -> None:
        try:
            with services_for(shard) as services:
                codes.append(run(services, stop))
        except BaseException:
            codes.append(1)
            stop.set()  # one shard failed: stop the others, so a supervisor restarts them all
            raise

    threads = [threading.Thread(target=one, args=(s,), name=f"shard-{s.merchants[0].mchid}") for s in shards]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    return max(codes, default=1)


@contextmanager
def services_for(settings: Settings) -> Iterator[Services]:
    """`bootstrap(settings)`, closed when the command is done with it."""
    services = bootstrap(settings)
    try:
        yield services
    finally:
        services.close()


def order_of(settings: Settings, mchid: str, sub_mchid: str | None) -> str | None:
    """The sub-merchant `--sub-mchid` names for an order of `mchid`, checked as the HTTP API checks
    `?sub_mchid=`: required of a service provider, refused for a direct merchant (`InvalidRequest`).
    A merchant no longer configured is taken at its word."""
    merchant = settings.merchant(mchid)
    return sub_mchid_value(sub_mchid) if merchant is None else order_sub_mchid(merchant, sub_mchid)


def stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT set the returned event: workers finish what they hold and exit."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
