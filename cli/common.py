"""What every command shares: settings (with `--dev`), logging, signals. (Printing: `cli.output`.)"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Iterator
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
    "load_settings",
    "order_of",
    "services_for",
    "stop_on_signals",
]

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction


def load_settings(args: argparse.Namespace, *, require_merchant: bool = True) -> Settings:
    """Settings from the environment; with ``--dev`` and no merchant configured, the local dev merchant."""
    env = dict(os.environ)
    if getattr(args, "dev", False) and not env.get("WECHATPAY_MCHID") and not env.get("LEDGER_CONFIG"):
        env.update(dev_environment())
    return Settings.load(env, require_merchant=require_merchant)


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
