"""The sandbox as WeChat Pay and the ledger's app on one store, each knowing the other: the sandbox's
notifications (APIv3 and APIv2) go to the app, the app's queries and bill downloads to the sandbox.

A test module's world subclasses `SandboxLedger` with the steps it repeats, and builds it with
`sandbox_ledger(ItsWorld, sandbox, keys_dir, database_url, **extra_settings)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from ledger.application import Ledger
from ledger.wechatpay.sandbox.server import Sandbox
from tests.support.servers import running, service

__all__ = ["SandboxLedger", "sandbox_ledger"]


@dataclass
class SandboxLedger:
    sandbox: Sandbox
    client: httpx.Client  # to the ledger's app
    ledger: Ledger  # on the app's store
    env: dict[str, str]  # the ledger's settings, as the app runs with them (the store aside)
    database_url: str


_World = TypeVar("_World", bound=SandboxLedger)


@contextlib.contextmanager
def sandbox_ledger(
    world: type[_World], sandbox: Sandbox, keys: Path, database_url: str, **extra: str
) -> Iterator[_World]:
    """`sandbox` served, the ledger's app (no background workers) on `database_url` configured for it
    (its keys written to `keys`) and `extra` settings (an empty one unsets), as a `world`."""
    with running(sandbox.app) as sandbox_url:
        env = {**sandbox.write_ledger_config(keys, sandbox_url), **extra}
        with service(env, database_url) as (client, ledger):
            base = str(client.base_url).rstrip("/")
            sandbox.notify_url, sandbox.v2_notify_url = f"{base}/wechatpay/notify", f"{base}/wechatpay/v2/notify"
            yield world(sandbox, client, ledger, env, database_url)
