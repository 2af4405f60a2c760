"""What every command shares: settings (with `--dev`), logging, signals, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from api.responses import to_jsonable
from cli.dev import dev_environment
from ledger.logs import configure_logging
from ledger.settings import Settings

__all__ = ["SubParsers", "configure_logging", "load_settings", "print_json", "stop_on_signals"]

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


def stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT set the returned event: workers finish what they hold and exit."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), ensure_ascii=False, indent=2))
