"""The sandbox's state, its Python API, its app and the ledger configuration it writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from ledger.wechatpay.sandbox.api import ApiRequest, WeChatApi
from ledger.wechatpay.sandbox.bills import BILL_FAULTS, BillBook
from ledger.wechatpay.sandbox.control import control_routes
from ledger.wechatpay.sandbox.delivery import RETRY_SCHEDULE, DeliveryAttempt, Notification, Notifier
from ledger.wechatpay.sandbox.keys import Signing, SigningKey, WeChatKeys
from ledger.wechatpay.sandbox.orders import Order, OrderBook, SandboxError
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory, compact_json

__all__ = [
    "BILL_FAULTS",
    "RETRY_SCHEDULE",
    "ApiRequest",
    "DeliveryAttempt",
    "Notification",
    "Order",
    "Sandbox",
    "SandboxError",
    "Signing",
    "SigningKey",
    "run_sandbox",
]

_SUMMARIES = {"REFUND.CLOSED": "退款关闭", "REFUND.ABNORMAL": "退款异常"}


class Sandbox:
    """A fake WeChat Pay for one merchant; serve `app` (uvicorn) to use it over HTTP."""

    def __init__(
        self,
        *,
        mchid: str = "1900000109",
        appid: str = "wxd678efh567hg6787",
        factory: NotificationFactory | None = None,
        merchant_private_key: rsa.RSAPrivateKey | None = None,
        merchant_serial_no: str | None = None,
        notify_url: str | None = None,
        time_scale: float = 1.0,
        duplicate_rate: float = 0.0,
        probe_rate: float = 0.0,
        drop_rate: float = 0.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        signing: Signing = "public_key",
    ) -> None:
        for name, rate in (
            ("duplicate_rate", duplicate_rate),
            ("probe_rate", probe_rate),
            ("drop_rate", drop_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1")
        self.mchid = mchid
        self.appid = appid
        self.factory = factory or NotificationFactory(mchid=mchid, appid=appid).with_certificate()
        self.merchant_private_key = merchant_private_key or rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self.merchant_serial_no = (merchant_serial_no or secrets.token_hex(20)).upper()
        self.notify_url = notify_url
        self.drop_rate = drop_rate
        self.clock = clock
        self.signing: Signing = signing
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._keys = WeChatKeys(self.factory, clock)
        self.orders = OrderBook(self.factory, mchid=mchid, appid=appid, rng=self._rng, clock=clock, lock=self._lock)
        self.bills = BillBook(self.orders, mchid=mchid, appid=appid, clock=clock)
        self._notifier = Notifier(
            sign=self._sign_notification,
            probe=self.factory.probe,
            clock=clock,
            time_scale=time_scale,
            duplicate_rate=duplicate_rate,
            probe_rate=probe_rate,
        )
        self._api = WeChatApi(self)
        self.app = Starlette(routes=[*self._api.routes(), *control_routes(self)], lifespan=self._lifespan)

    def __repr__(self) -> str:
        return f"Sandbox(mchid={self.mchid!r}, notify_url={self.notify_url!r})"

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self._notifier.running():
            yield

    # -- orders --------------------------------------------------------------------------------

    def create_order(
        self, out_trade_no: str, total: int, description: str = "", *, notify_url: str | None = None
    ) -> Order:
        """A NOTPAY order; `notify_url` overrides the sandbox's for its notifications."""
        return self.orders.create(out_trade_no, total, description, notify_url)

    def pay(self, out_trade_no: str, *, notify: bool = True, drop: bool = False, payer_total: int | None = None) -> str:
        """The user pays: SUCCESS, a new transaction_id, and a TRANSACTION.SUCCESS notification."""
        order = self.orders.pay(out_trade_no, payer_total)
        if notify:
            self._notify(order, self.orders.transaction(order), "TRANSACTION.SUCCESS", drop)
        assert order.transaction_id is not None
        return order.transaction_id

    def refund(
        self,
        out_trade_no: str,
        out_refund_no: str,
        amount: int,
        *,
        status: str = "SUCCESS",
        notify: bool = True,
        drop: bool = False,
    ) -> str:
        """A (partial) refund ending in `status`; PROCESSING waits for `complete_refund`."""
        order, refund = self.orders.refund(out_trade_no, out_refund_no, amount, status)
        if notify and status != "PROCESSING":
            resource = self.orders.refund_resource(order, refund)
            self._notify(order, resource, f"REFUND.{status}", drop, refund.out_refund_no)
        return refund.refund_id

    def complete_refund(
        self, out_refund_no: str, status: str = "SUCCESS", *, notify: bool = True, drop: bool = False
    ) -> None:
        order, refund = self.orders.complete_refund(out_refund_no, status)
        if notify:
            resource = self.orders.refund_resource(order, refund)
            self._notify(order, resource, f"REFUND.{status}", drop, refund.out_refund_no)

    def close(self, out_trade_no: str) -> None:
        self.orders.close(out_trade_no)

    # -- notifications -------------------------------------------------------------------------

    def _notify(
        self,
        order: Order,
        resource: dict[str, Any],
        event_type: str,
        drop: bool,
        out_refund_no: str | None = None,
    ) -> None:
        with self._lock:
            notification_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            seed = self._rng.getrandbits(64)
            dropped = self._rng.random() < self.drop_rate or drop
        body = self.factory.envelope(resource, event_type, notification_id=notification_id)
        if event_type in _SUMMARIES:
            envelope = json.loads(body)
            envelope["summary"] = _SUMMARIES[event_type]
            body = compact_json(envelope)
        self._notifier.schedule(
            Notification(
                id=notification_id,
                event_type=event_type,
                body=body,
                url=order.notify_url or self.notify_url,
                seed=seed,
                dropped=dropped,
                out_trade_no=order.out_trade_no,
                out_refund_no=out_refund_no,
            )
        )

    def _sign_notification(self, body: bytes) -> Delivery:
        key = self.signing_key()
        return key.factory.deliver(body, timestamp=int(self.clock()), serial=key.serial)

    @property
    def deliveries(self) -> list[DeliveryAttempt]:
        """Every delivery attempt so far, dropped notifications included, oldest first."""
        return self._notifier.attempts

    @property
    def notifications(self) -> list[Notification]:
        return self._notifier.notifications

    async def idle(self, timeout: float | None = 10.0) -> None:
        """Wait until every scheduled notification is delivered, given up, or dropped."""
        await self._notifier.idle(timeout)

    def wait_idle(self, timeout: float | None = 10.0) -> None:
        """`idle` for threads other than the server's; `TimeoutError` after `timeout` seconds."""
        self._notifier.wait_idle(timeout)

    # -- fault injection for the client's tests ------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, code: str | None = None, message: str | None = None) -> None:
        """The next `n` API requests fail (unsigned, like WeChat's errors); 500 SYSTEM_ERROR,
        429 FREQUENCY_LIMITED by default."""
        self._api.fail_next(n, status, code, message)

    def probe_next_response(self, n: int = 1) -> None:
        """The next `n` signed answers carry a ``WECHATPAY/SIGNTEST/`` signature ([protocol: Signature probes])."""
        self._api.probe_next_response(n)

    def tamper_next_response(self, n: int = 1) -> None:
        """The next `n` signed answers with a body have one byte changed after signing."""
        self._api.tamper_next_response(n)

    def set_bill_fault(self, bill_date: dt.date, fault: str | None) -> None:
        """The bills of `bill_date` ([protocol: Daily bills]) from now on: "not_ready" (STATEMENT_CREATING),
        "empty" (NO_STATEMENT_EXIST), "missing_row" (the first row left out), "amount_changed" (the first
        row one fen more), "corrupted" (the file served is not the one hashed); None clears it."""
        self.bills.set_fault(bill_date, fault)

    @property
    def bill_faults(self) -> dict[dt.date, str]:
        """The bill faults in force, by Beijing date."""
        return self.bills.faults

    @property
    def requests(self) -> list[ApiRequest]:
        """Every request to a WeChat endpoint so far, in order."""
        return self._api.requests

    def request_count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)

    # -- keys and certificates -----------------------------------------------------------------

    def rotate_certificate(self, days_valid: int = 365, start: dt.datetime | None = None) -> str:
        """A new platform certificate with a new key, signing from now on (once in effect);
        the older ones stay listed until they expire. Returns its serial."""
        return self._keys.rotate(days_valid, start)

    def listed_certificates(self) -> list[x509.Certificate]:
        """The platform certificates `/v3/certificates` lists now: all not yet expired."""
        return self._keys.listed()

    def signing_key(self, requested_serial: str | None = None) -> SigningKey:
        """The key for an answer or a notification: a request's ``Wechatpay-Serial`` picks the
        public key or the newest certificate in effect ([protocol: Which key signed it]); otherwise `signing`
        decides."""
        return self._keys.signing_key(requested_serial, self.signing)

    # -- the ledger's side ---------------------------------------------------------------------

    def write_ledger_config(self, folder: Path, base_url: str) -> dict[str, str]:
        """Write the key files a ledger needs into `folder`, and `folder/env`; return the env."""
        folder.mkdir(parents=True, exist_ok=True)
        folder = folder.resolve()
        env = self.factory.write_keys(folder)
        certificates = self.listed_certificates()
        if certificates:
            cert_dir = folder / "platform_certs"
            cert_dir.mkdir(exist_ok=True)
            for cert in certificates:
                pem = cert.public_bytes(serialization.Encoding.PEM)
                (cert_dir / f"{format(cert.serial_number, 'X')}.pem").write_bytes(pem)
            env["WECHATPAY_PLATFORM_CERT_DIR"] = str(cert_dir)
        key_file = folder / "apiclient_key.pem"
        key_file.write_bytes(
            self.merchant_private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        env.update(
            WECHATPAY_MCHID=self.mchid,
            WECHATPAY_APPID=self.appid,
            WECHATPAY_MERCHANT_SERIAL_NO=self.merchant_serial_no,
            WECHATPAY_MERCHANT_PRIVATE_KEY_FILE=str(key_file),
            WECHATPAY_API_BASE_URL=base_url.rstrip("/"),
        )
        env_file = folder / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        env_file.chmod(0o600)
        return env


def run_sandbox(
    host: str = "127.0.0.1",
    port: int = 8090,
    folder: Path = Path("payledger-sandbox"),
    notify_url: str | None = None,
    time_scale: float = 1.0,
    duplicate_rate: float = 0.0,
    probe_rate: float = 0.0,
    drop_rate: float = 0.0,
    *,
    seed: int | None = None,
) -> None:
    """Serve a new sandbox until interrupted, after writing the ledger's configuration."""
    import uvicorn

    sandbox = Sandbox(
        notify_url=notify_url,
        time_scale=time_scale,
        duplicate_rate=duplicate_rate,
        probe_rate=probe_rate,
        drop_rate=drop_rate,
        seed=seed,
    )
    base_url = f"http://{host}:{port}"
    sandbox.write_ledger_config(Path(folder), base_url)
    env_file = Path(folder).resolve() / "env"
    print(
        f"payledger sandbox: fake WeChat Pay on {base_url} (mchid {sandbox.mchid})\n"
        f"payledger sandbox: ledger configuration in {env_file.parent}\n"
        f"payledger sandbox: environment file {env_file}  (e.g. set -a; . {env_file}; set +a)\n"
        f"payledger sandbox: notifications to {notify_url or '(none: set notify_url per order)'}\n"
        f"payledger sandbox: control  POST {base_url}/sandbox/orders "
        '{"out_trade_no":"ORDER-0001","amount_total":100}',
        file=sys.stderr,
    )
    uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
