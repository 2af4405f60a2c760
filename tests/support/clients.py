"""The merchant's side of the WeChat Pay client, as the client tests and the bill tests build it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.wechatpay.client import WeChatPayClient
from ledger.wechatpay.sandbox.signer import NotificationFactory
from tests.support.constants import MCHID

__all__ = ["MERCHANT_SERIAL", "client_maker"]

# [protocol: Published vectors] the JAVA merchant certificate serial
MERCHANT_SERIAL = "5F1C72E2A8931B72A2E13AF8DEE92471EB397115"


@contextmanager
def client_maker(
    factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey, **defaults: Any
) -> Iterator[Callable[..., WeChatPayClient]]:
    """`make(**options)` builds a client for merchant MCHID trusting `factory`'s keys; every client
    it built is closed when the block ends. `defaults`, then each call's options, override the base."""
    built: list[WeChatPayClient] = []

    def make(**options: Any) -> WeChatPayClient:
        base: dict[str, Any] = {
            "mchid": MCHID,
            "merchant_serial_no": MERCHANT_SERIAL,
            "merchant_private_key": merchant_key,
            "keys": factory.key_store,
        }
        client = WeChatPayClient(**{**base, **defaults, **options})
        built.append(client)
        return client

    try:
        yield make
    finally:
        for client in built:
            client.close()
