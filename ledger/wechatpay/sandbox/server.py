"""The sandbox's state, its Python API, its app and the ledger configuration it writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from ledger.wechatpay.sandbox import resources
from ledger.wechatpay.sandbox.api import ApiRequest, WeChatApi
from ledger.wechatpay.sandbox.bills import BILL_FAULTS, BillBook
from ledger.wechatpay.sandbox.control import control_routes
from ledger.wechatpay.sandbox.delivery import (
    ANSWER_TIMEOUT,
    RETRY_SCHEDULE,
    DeliveryAttempt,
    Notification,
    Notifier,
)
from ledger.wechatpay.sandbox.keys import Signing, SigningKey, WeChatKeys
from ledger.wechatpay.sandbox.legacy import random_v2_key
from ledger.wechatpay.sandbox.notices import APIS, Notices
from ledger.wechatpay.sandbox.orders import Merchant, Order, OrderBook, SandboxError, SubOrder, rfc3339
from ledger.wechatpay.sandbox.refunds import REFUND_FAULTS
from ledger.wechatpay.sandbox.resources import Promotion
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory, serial_hex
from ledger.wechatpay.v2 import MD5, SIGN_TYPES, check_v2_key

__all__ = [
    "BILL_FAULTS",
    "REFUND_FAULTS",
    "RETRY_SCHEDULE",
    "ApiRequest",
    "DeliveryAttempt",
    "Notification",
    "Order",
    "Sandbox",
    "SandboxError",
    "Signing",
    "SigningKey",
    "SubOrder",
    "run_sandbox",
]

COUPON_TYPES = ("CASH", "NOCASH")
REFUND_DELAY = 60.0
"""Seconds of WeChat's time an API refund stays PROCESSING ([protocol: Querying a refund]: "about a minute")."""
REFUND_HOLD = 30.0
"""Seconds the `timeout_after_accept` fault holds an answer back, at most: longer than any client waits."""
REFUND_SOURCES = ("API", "VENDOR_PLATFORM")


def _check_notification(api: str, sign_type: str = MD5, source: str = "API") -> None:
    """Before anything changes: a notification that cannot be sent is refused with the request."""
    if api not in APIS:
        raise SandboxError(400, "PARAM_ERROR", f"api must be one of {', '.join(APIS)}")
    if sign_type not in SIGN_TYPES:
        raise SandboxError(400, "PARAM_ERROR", f"sign_type must be one of {', '.join(SIGN_TYPES)}")
    if source not in REFUND_SOURCES:
        raise SandboxError(400, "PARAM_ERROR", f"source must be one of {', '.join(REFUND_SOURCES)}")


class Sandbox:
    """A fake WeChat Pay for one merchant, or for a service provider and its sub-merchants (`sub_mchids`:
    `mchid` and `appid` are then the provider's `sp_mchid` and `sp_appid`); serve `app` (uvicorn) to use
    it over HTTP."""

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
        sub_mchids: Sequence[str] = (),
        v2_key: str | None = None,
        v2_notify_url: str | None = None,
        answer_timeout: float = ANSWER_TIMEOUT,
        refund_delay: float | None = REFUND_DELAY,
        refund_hold: float = REFUND_HOLD,
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
        self.merchant = Merchant(mchid, appid, tuple(sub_mchids))
        self.factory = factory or NotificationFactory(mchid=mchid, appid=appid).with_certificate()
        self.merchant_private_key = merchant_private_key or rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self.merchant_serial_no = (merchant_serial_no or secrets.token_hex(20)).upper()
        self.v2_key = check_v2_key(v2_key, "v2_key") if v2_key is not None else random_v2_key()
        self.notify_url = notify_url
        self.v2_notify_url = v2_notify_url
        self.drop_rate = drop_rate
        # [protocol: Creating a refund]: how long a refund asked through the API stays PROCESSING (seconds of
        # WeChat's time, divided by the time scale; None: until `complete_refund`), and how long the
        # `timeout_after_accept` fault holds its answer back (real seconds, or until the client hangs up).
        self.refund_delay = refund_delay
        self.refund_hold = refund_hold
        self.clock = clock
        self.signing: Signing = signing
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self._keys = WeChatKeys(self.factory, clock)
        self.orders = OrderBook(self.merchant, rng=self._rng, clock=clock, lock=self._lock)
        self.bills = BillBook(self.orders, clock=clock)
        self._notifier = Notifier(
            sign=self._sign_notification,
            probe=self.factory.probe,
            clock=clock,
            time_scale=time_scale,
            duplicate_rate=duplicate_rate,
            probe_rate=probe_rate,
            answer_timeout=answer_timeout,
        )
        self._notices = Notices(self, self._notifier, self._rng, self._lock)
        self.notify_other = self._notices.other  # any other APIv3 notification: see `Notices.other`
        self._api = WeChatApi(self)
        self.app = Starlette(routes=[*self._api.routes(), *control_routes(self)], lifespan=self._lifespan)

    def __repr__(self) -> str:
        return f"Sandbox(mchid={self.mchid!r}, sub_mchids={self.sub_mchids!r}, notify_url={self.notify_url!r})"

    @property
    def sub_mchids(self) -> tuple[str, ...]:
        return self.merchant.sub_mchids

    @property
    def time_scale(self) -> float:
        """What WeChat's waits (retries, a refund's processing) are divided by."""
        return self._notifier.time_scale

    @property
    def partner(self) -> bool:
        """A service provider's sandbox ([next: Service-provider mode]): orders, queries, notifications and
        bills name sub-merchants."""
        return self.merchant.partner

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self._notifier.running():
            yield

    # -- orders --------------------------------------------------------------------------------

    def create_order(
        self,
        out_trade_no: str,
        total: int,
        description: str = "",
        *,
        notify_url: str | None = None,
        sub_mchid: str | None = None,
        sub_appid: str | None = None,
        attach: str = "",
    ) -> Order:
        """A NOTPAY order; `notify_url` overrides the sandbox's for its notifications. A provider's order
        names its sub-merchant (and, if given, the sub-merchant's appid)."""
        asked = SubOrder(out_trade_no, total, sub_mchid, sub_appid, description=description, attach=attach)
        return self.orders.create(asked, notify_url)

    def pay(
        self,
        out_trade_no: str,
        *,
        notify: bool = True,
        drop: bool = False,
        payer_total: int | None = None,
        sub_mchid: str | None = None,
        discount: int = 0,
        coupon_type: str = "CASH",
        api: str = "v3",
        sign_type: str = MD5,
        after_close: bool = False,
    ) -> str:
        """The user pays: SUCCESS, a new transaction_id, and a TRANSACTION.SUCCESS notification (APIv3, or
        APIv2 XML to `v2_notify_url` signed with `sign_type`). A `discount` (fen) is a coupon of
        `coupon_type` ([protocol: The payment resource] `promotion_detail`): the payer pays the total less it.
        `after_close`: the order was CLOSED and is paid all the same, the race between a close and a payment
        that WeChat allows ([protocol: Closing an order]); without it a closed order is ORDER_CLOSED."""
        _check_notification(api, sign_type)
        promotions: tuple[Promotion, ...] = ()
        if discount:
            if coupon_type not in COUPON_TYPES:
                raise SandboxError(400, "PARAM_ERROR", f"coupon_type must be one of {', '.join(COUPON_TYPES)}")
            if isinstance(discount, bool) or not isinstance(discount, int) or discount < 0:
                raise SandboxError(400, "PARAM_ERROR", "discount must be a positive integer (fen)")
            with self._lock:
                coupon_id = f"{self._rng.randrange(10**10):010d}"
            promotions = (Promotion(discount, coupon_type, coupon_id=coupon_id),)
        order = self.orders.pay(
            out_trade_no, payer_total, sub_mchid=sub_mchid, promotions=promotions, after_close=after_close
        )
        if notify:
            self._notices.payment(order, drop=drop, api=api, sign_type=sign_type)
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
        sub_mchid: str | None = None,
        api: str = "v3",
        source: str = "API",
    ) -> str:
        """A (partial) refund ending in `status`; PROCESSING waits for `complete_refund`. With api "v2" the
        notification is APIv2 XML (as for a refund made in the merchant console, `source` VENDOR_PLATFORM)."""
        _check_notification(api, source=source)
        order, refund = self.orders.refund(out_trade_no, out_refund_no, amount, status, sub_mchid=sub_mchid)
        if notify and status != "PROCESSING":
            self._notices.refund(order, refund, drop=drop, api=api, source=source)
        return refund.refund_id

    def complete_refund(
        self,
        out_refund_no: str,
        status: str = "SUCCESS",
        *,
        notify: bool = True,
        drop: bool = False,
        sub_mchid: str | None = None,
        api: str = "v3",
    ) -> None:
        _check_notification(api)
        order, refund = self.orders.complete_refund(out_refund_no, status, sub_mchid=sub_mchid)
        if notify:
            self._notices.refund(order, refund, drop=drop, api=api)

    def close(self, out_trade_no: str, *, sub_mchid: str | None = None) -> None:
        self.orders.close(out_trade_no, sub_mchid=sub_mchid)

    # -- combined orders ([next: Combined payments]) ---------------------------------------------

    def create_combined_order(
        self, combine_out_trade_no: str, sub_orders: Sequence[SubOrder], *, notify_url: str | None = None
    ) -> list[Order]:
        """A NOTPAY combined order: each sub-order an order of its own (under its `sub_mchid` for a provider)."""
        return self.orders.create_combined(combine_out_trade_no, sub_orders, notify_url)

    def pay_combined_order(
        self, combine_out_trade_no: str, *, notify: bool = True, drop: bool = False, after_close: bool = False
    ) -> list[str]:
        """Every sub-order paid together, told in ONE notification; their transaction_ids, in order.
        `after_close`: paid although closed, as `pay`'s."""
        orders = self.orders.pay_combined(combine_out_trade_no, after_close=after_close)
        if notify:
            self._notices.combined(orders, drop=drop)
        return [order.transaction_id or "" for order in orders]

    def close_combined_order(self, combine_out_trade_no: str) -> None:
        self.orders.close_combined(combine_out_trade_no)

    # -- notifications -------------------------------------------------------------------------

    def complain(
        self, action_type: str = "CREATE_COMPLAINT", *, complaint_id: str | None = None, drop: bool = False
    ) -> str:
        """A COMPLAINT.CREATE (or, for any other `action_type`, COMPLAINT.STATE_CHANGE) notification, retried on
        the complaints' own schedule. Returns the complaint id."""
        if complaint_id is None:
            with self._lock:
                complaint_id = f"2002{self._rng.randrange(10**23):023d}"
        event_type = "COMPLAINT.CREATE" if action_type == "CREATE_COMPLAINT" else "COMPLAINT.STATE_CHANGE"
        self.notify_other(event_type, resources.complaint(complaint_id, action_type), drop=drop)
        return complaint_id

    def share_profit(
        self,
        out_trade_no: str,
        amount: int,
        *,
        sub_mchid: str | None = None,
        receiver_account: str = "1900000110",
        out_order_no: str | None = None,
        returned: bool = False,
        drop: bool = False,
    ) -> str:
        """A PROFITSHARING.SUCCESS (or .RETURN) notification about a paid order, as a receiver gets it.
        Returns the notification id."""
        order = self.orders.order(out_trade_no, sub_mchid)
        if order.transaction_id is None:
            raise SandboxError(400, "INVALID_REQUEST", "订单未支付，不能分账")
        with self._lock:
            order_id = f"3008{self._rng.randrange(10**24):024d}"
        resource = resources.profit_sharing(
            self.merchant.party(order),
            transaction_id=order.transaction_id,
            order_id=order_id,
            out_order_no=out_order_no or f"P{order_id[-20:]}",
            receiver_account=receiver_account,
            amount=amount,
            success_time=rfc3339(self.clock()),
            description="分账回退" if returned else "分给商户",
        )
        return self.notify_other("PROFITSHARING.RETURN" if returned else "PROFITSHARING.SUCCESS", resource, drop=drop)

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

    def fail_next_refund(self, fault: str, n: int = 1) -> None:
        """The next `n` refund requests ([protocol: Creating a refund]) meet `fault`: "timeout_after_accept"
        (accepted, the answer held back `refund_hold` seconds or until the client hangs up), "error_5xx"
        (500 SYSTEM_ERROR, nothing accepted), "error_5xx_after_accept" (accepted, then 500 SYSTEM_ERROR),
        "not_enough" (403 NOT_ENOUGH, nothing accepted)."""
        self._api.refunds.fail_next(fault, n)

    @property
    def refund_faults(self) -> list[str]:
        """The refund faults still to come, in order."""
        return self._api.refunds.faults

    def refund_requests(self, out_refund_no: str, *, sub_mchid: str | None = None) -> list[bytes]:
        """The body of every refund request that named `out_refund_no` (and `sub_mchid`), as received and in
        order, whatever was answered: what WeChat saw."""
        return self._api.refunds.received(out_refund_no, sub_mchid)

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
        """Write the key files a ledger needs into `folder`, and `folder/env`; return the env. It names
        the APIv2 key (`WECHATPAY_V2_KEY`) and, for a provider, `WECHATPAY_MODE=partner` and its
        `WECHATPAY_SUB_MCHIDS`."""
        folder.mkdir(parents=True, exist_ok=True)
        folder = folder.resolve()
        env = self.factory.write_keys(folder)
        certificates = self.listed_certificates()
        if certificates:
            cert_dir = folder / "platform_certs"
            cert_dir.mkdir(exist_ok=True)
            for cert in certificates:
                pem = cert.public_bytes(serialization.Encoding.PEM)
                (cert_dir / f"{serial_hex(cert.serial_number)}.pem").write_bytes(pem)
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
            WECHATPAY_V2_KEY=self.v2_key,
        )
        if self.partner:
            env.update(WECHATPAY_MODE="partner", WECHATPAY_SUB_MCHIDS=",".join(self.sub_mchids))
        env_file = folder / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        env_file.chmod(0o600)
        return env


def run_sandbox(
    sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8090, folder: Path = Path("payledger-sandbox")
) -> None:
    """Serve `sandbox` until interrupted, after writing the ledger's configuration into `folder`."""
    import uvicorn

    base_url = f"http://{host}:{port}"
    sandbox.write_ledger_config(Path(folder), base_url)
    env_file = Path(folder).resolve() / "env"
    who = f"service provider {sandbox.mchid}, sub-merchants {', '.join(sandbox.sub_mchids)}"
    key = sandbox.signing_key()
    print(
        f"payledger sandbox: fake WeChat Pay on {base_url} ({who if sandbox.partner else f'mchid {sandbox.mchid}'})\n"
        f"payledger sandbox: signs with {key.serial} ({sandbox.signing.replace('_', ' ')})\n"
        f"payledger sandbox: ledger configuration in {env_file.parent}\n"
        f"payledger sandbox: environment file {env_file}  (e.g. set -a; . {env_file}; set +a)\n"
        f"payledger sandbox: notifications to {sandbox.notify_url or '(none: set notify_url per order)'}\n"
        f"payledger sandbox: APIv2 notifications to {sandbox.v2_notify_url or '(none)'}\n"
        f"payledger sandbox: control  POST {base_url}/sandbox/orders "
        '{"out_trade_no":"ORDER-0001","amount_total":100'
        + (f',"sub_mchid":"{sandbox.sub_mchids[0]}"' if sandbox.partner else "")
        + "}",
        file=sys.stderr,
    )
    uvicorn.run(sandbox.app, host=host, port=port, log_level="warning")
