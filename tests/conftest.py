"""Fixtures used by more than one test module: generated WeChat Pay keys, SQLite and PostgreSQL
stores, the published test vectors, a webhook receiver on loopback, sandboxes and a notify endpoint
they deliver to. Fixtures only: constants and helpers are in tests/support.

PostgreSQL tests use `LEDGER_TEST_POSTGRES_URL` (default: the local `test` database), each in
a schema of its own. Without PostgreSQL they are skipped, except when `CI` is set: then an
unreachable PostgreSQL fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.sandbox.server import Sandbox
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import APPID, MCHID, POSTGRES_URL, VECTORS_PATH
from tests.support.fakes import Receiver
from tests.support.lifetimes import making
from tests.support.sandbox import MERCHANT_SERIAL, NotifyEndpoint, NotifyReceiver
from tests.support.servers import running


@pytest.fixture(scope="session")
def factory() -> NotificationFactory:
    """WeChat Pay's signing side with generated keys, as public key and platform certificate."""
    return NotificationFactory(mchid=MCHID, appid=APPID).with_certificate()


@pytest.fixture(scope="session")
def other_factory() -> NotificationFactory:
    """A second, unrelated key pair (what an attacker or a stale configuration would have)."""
    return NotificationFactory(mchid=MCHID, appid=APPID)


@pytest.fixture
def merchant_env(factory: NotificationFactory, tmp_path: Path) -> dict[str, str]:
    """`WECHATPAY_*` settings matching `factory` (both verification modes configured)."""
    return factory.write_keys(tmp_path / "keys")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return type(exc).__name__


@pytest.fixture
def postgres_url() -> Iterator[str]:
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but PostgreSQL at {POSTGRES_URL} is unreachable ({problem})")
        pytest.skip(f"PostgreSQL unreachable ({problem}); set CI to make this a failure")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}schema={schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every storage test runs on both stores."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def ledger_factory(database_url: str) -> Iterator[Callable[[], Any]]:
    """Build ledgers on the same store (several = several processes or a restart)."""
    from ledger.application import build_ledger

    built: list[Any] = []

    def make() -> Any:
        ledger = build_ledger(database_url)
        built.append(ledger)
        return ledger

    yield make
    for ledger in built:
        ledger.close()


@pytest.fixture
def keys(factory: NotificationFactory) -> dict[str, KeyStore]:
    """`factory`'s keys by mchid, as `verify` takes them."""
    return {MCHID: factory.key_store()}


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The published WeChat Pay test vectors ([protocol: Test vectors])."""
    if not VECTORS_PATH.is_file():
        pytest.fail(f"test vectors missing: {VECTORS_PATH} (shared/ must sit beside the repository)")
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return data


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint served on loopback; set its `answer` to script it."""
    r = Receiver()
    with running(r.app) as url:
        r.url = url
        yield r


# -- the sandbox -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def merchant_key() -> rsa.RSAPrivateKey:
    """The merchant's API private key the sandboxes verify requests with (serial `MERCHANT_SERIAL`)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def make_sandbox(factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey) -> Callable[..., Sandbox]:
    """`make_sandbox(**options)`: a seeded sandbox with `factory`'s keys, retries 1000 times faster."""

    def make(**kwargs: Any) -> Sandbox:
        options: dict[str, Any] = {
            "factory": factory,
            "merchant_private_key": merchant_key,
            "merchant_serial_no": MERCHANT_SERIAL,
            "seed": 7,
            "time_scale": 1000,
            **kwargs,
        }
        return Sandbox(**options)

    return make


@pytest.fixture(scope="session")
def notify_endpoint() -> Iterator[tuple[NotifyEndpoint, str]]:
    endpoint = NotifyEndpoint()
    with running(endpoint.app) as url:
        yield endpoint, url


@pytest.fixture
def receiving(
    notify_endpoint: tuple[NotifyEndpoint, str],
) -> Callable[[Sandbox, NotifyReceiver], contextlib.AbstractContextManager[str]]:
    """`with receiving(sandbox, receiver) as url:` the sandbox notifies `receiver` at `url` (APIv3) and at
    `{base}/v2/notify` (APIv2)."""
    endpoint, base = notify_endpoint

    @contextlib.contextmanager
    def plug(sandbox: Sandbox, receiver: NotifyReceiver) -> Iterator[str]:
        endpoint.receiver = receiver
        sandbox.notify_url = f"{base}/notify"
        sandbox.v2_notify_url = f"{base}/v2/notify"
        try:
            yield sandbox.notify_url
        finally:
            endpoint.receiver = NotifyReceiver()

    return plug


@pytest.fixture
def outbox(database_url: str) -> Iterator[Any]:
    """The outbox on `database_url`'s store, as the dispatcher and the admin API see it."""
    from ledger.store.sql import Database
    from projections.webhooks.outbox import Outbox
    from projections.webhooks.schema import outbox_url

    database = Database(outbox_url(database_url))
    yield Outbox(database)
    database.close()


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., Any]]:
    """Build dispatchers (`outbox`, options) closed after the test."""
    from projections.webhooks.dispatcher import Dispatcher

    yield from making(Dispatcher, Dispatcher.close)
