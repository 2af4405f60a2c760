"""Which key the sandbox signs with: WeChat's public key or its platform certificates ([protocol: Which key signed it]).

Certificates come into use in the order they were added; after a rotation the newest signs
while the older ones stay listed until they expire, so verifiers must select by serial.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from ledger.wechatpay.keys import normalise_serial
from ledger.wechatpay.sandbox.signer import NotificationFactory

__all__ = ["Signing", "SigningKey", "WeChatKeys"]

Signing = Literal["public_key", "certificate"]


@dataclass(frozen=True)
class SigningKey:
    """A key WeChat signs with (held by a factory), and the serial its signatures carry."""

    serial: str
    factory: NotificationFactory


class WeChatKeys:
    def __init__(self, factory: NotificationFactory, clock: Callable[[], float] = time.time) -> None:
        self._factory = factory
        self._clock = clock
        self._lock = threading.Lock()
        # Each holder has a key of its own; the base factory's certificate shares its public key.
        self._holders = [factory] if factory.certificate is not None else []

    def rotate(self, days_valid: int = 365, start: dt.datetime | None = None) -> str:
        start = start or dt.datetime.fromtimestamp(self._clock(), dt.UTC) - dt.timedelta(hours=1)
        holder = NotificationFactory(
            mchid=self._factory.mchid,
            appid=self._factory.appid,
            apiv3_key=self._factory.apiv3_key,
            public_key_id=self._factory.public_key_id,
        ).with_certificate(days=days_valid, start=start)
        with self._lock:
            self._holders.append(holder)
        return holder.certificate_serial

    def listed(self) -> list[x509.Certificate]:
        """Every certificate not yet expired, oldest first (what `/v3/certificates` lists)."""
        now = self._clock()
        return [c for c in self._certificates() if c.not_valid_after_utc.timestamp() >= now]

    def signing_key(self, requested_serial: str | None, default: Signing) -> SigningKey:
        """A request's ``Wechatpay-Serial`` picks the public key or that certificate; else `default`."""
        public = SigningKey(self._factory.public_key_id, self._factory)
        current = self._current()
        if requested_serial:
            wanted = normalise_serial(requested_serial)
            if wanted == public.serial:
                return public
            # [protocol: Which key signed it]: API answers follow the Wechatpay-Serial the merchant sends, so a client
            # can ask to be answered with a certificate it already trusts.
            named = self._holder(wanted)
            if named is not None:
                return named
        if default == "certificate" and current is not None:
            return current
        return public

    def _certificates(self) -> list[x509.Certificate]:
        with self._lock:
            return [h.certificate for h in self._holders if h.certificate is not None]

    def _holder(self, serial: str) -> SigningKey | None:
        """The certificate a normalised serial names ([protocol: Comparing serials]: leading zeros aside)."""
        now = self._clock()
        with self._lock:
            holders = list(self._holders)
        for holder in holders:
            cert = holder.certificate
            if cert is None or cert.not_valid_after_utc.timestamp() < now:
                continue
            if normalise_serial(holder.certificate_serial) == serial:
                return SigningKey(holder.certificate_serial, holder)
        return None

    def _current(self) -> SigningKey | None:
        """The newest certificate in effect now."""
        now = self._clock()
        with self._lock:
            holders = list(self._holders)
        for holder in reversed(holders):
            cert = holder.certificate
            if cert is None:
                continue
            if cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
                return SigningKey(holder.certificate_serial, holder)
        return None
