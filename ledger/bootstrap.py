"""`bootstrap(settings)`: the one place where the ledger's parts are built and wired.

The HTTP app, the CLI and the reconciler all start from here, so a merchant's keys, its
certificate manager and its WeChat Pay client are the same objects everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from ledger.application import Ledger, build_ledger
from ledger.settings import MerchantSettings, Settings
from ledger.status_query import OrderQuery
from ledger.wechatpay.certificates import CertificateManager
from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.keys import KeyStore
from ledger.wechatpay.notification import NotificationVerifier

__all__ = ["MerchantServices", "Services", "bootstrap"]


@dataclass
class MerchantServices:
    settings: MerchantSettings
    keys: Callable[[], KeyStore]
    verifier: NotificationVerifier
    certificates: CertificateManager | None = None
    client: WeChatPayClient | None = field(default=None, repr=False)

    @property
    def mchid(self) -> str:
        return self.settings.mchid

    @property
    def appid(self) -> str | None:
        return self.settings.appid


@dataclass
class Services:
    settings: Settings
    ledger: Ledger
    merchants: dict[str, MerchantServices]
    query: OrderQuery
    owns_ledger: bool = True

    def start_background(self) -> None:
        """Periodic certificate refresh (never in a request path)."""
        for merchant in self.merchants.values():
            if merchant.certificates is not None and merchant.client is not None:
                merchant.certificates.start(self.settings.cert_refresh_interval)

    def close(self) -> None:
        for merchant in self.merchants.values():
            if merchant.certificates is not None:
                merchant.certificates.stop()
            if merchant.client is not None:
                merchant.client.close()
        if self.owns_ledger:
            self.ledger.close()


def _merchant(
    merchant: MerchantSettings, clock: Callable[[], float], transport: httpx.BaseTransport | None
) -> MerchantServices:
    apiv3 = merchant.apiv3_key.value.encode()

    def client(serial: str | None, keys: Callable[[], KeyStore], **kwargs: object) -> WeChatPayClient:
        assert merchant.merchant_serial_no is not None and merchant.merchant_private_key is not None
        return WeChatPayClient(
            mchid=merchant.mchid,
            merchant_serial_no=merchant.merchant_serial_no,
            merchant_private_key=merchant.merchant_private_key,
            keys=keys,
            base_url=merchant.api_base_url,
            wechatpay_serial=serial,
            transport=transport,
            **kwargs,  # type: ignore[arg-type]
        )

    can_call = merchant.merchant_private_key is not None and merchant.merchant_serial_no is not None
    manager = None
    if merchant.platform_cert_dir is not None:
        manager = CertificateManager(
            folder=merchant.platform_cert_dir,
            apiv3_key=apiv3,
            public_keys=merchant.keys.public_keys,
            client_factory=client if can_call else None,
            clock=clock,
        )
        keys: Callable[[], KeyStore] = manager.keys
    else:
        fixed = merchant.keys
        keys = lambda: fixed  # noqa: E731
    query_client = None
    if can_call:
        # In public-key mode ask WeChat to sign answers with the public key we hold (§2.3).
        query_client = client(
            merchant.public_key_id,
            keys,
            on_unknown_serial=manager.request_refresh if manager is not None else None,
        )
    verifier = NotificationVerifier(keys, apiv3, clock=clock)
    return MerchantServices(merchant, keys, verifier, manager, query_client)


def bootstrap(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    clock: Callable[[], float] = time.time,
    transport: httpx.BaseTransport | None = None,
) -> Services:
    merchants = {m.mchid: _merchant(m, clock, transport) for m in settings.merchants}
    the_ledger = ledger if ledger is not None else build_ledger(settings.database_url.value)
    clients = {mchid: m.client for mchid, m in merchants.items() if m.client is not None}
    query = OrderQuery(the_ledger, clients, {mchid: m.appid for mchid, m in merchants.items()})
    return Services(settings, the_ledger, merchants, query, owns_ledger=ledger is None)
