"""What the app holds between requests: the ledger, one verifier per merchant, a thread limiter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ledger.application import Ledger
from ledger.groupcommit import GroupCommitter
from ledger.settings import MerchantSettings, Settings
from ledger.wechatpay.notification import NotificationVerifier

__all__ = ["AppState", "Merchant"]


@dataclass(frozen=True)
class Merchant:
    mchid: str
    appid: str | None
    verifier: NotificationVerifier = field(repr=False)

    @classmethod
    def from_settings(cls, settings: MerchantSettings, clock: Callable[[], float]) -> Merchant:
        verifier = NotificationVerifier(settings.keys, settings.apiv3_key.value.encode(), clock=clock)
        return cls(settings.mchid, settings.appid, verifier)


@dataclass
class AppState:
    settings: Settings
    ledger: Ledger
    committer: GroupCommitter
    merchants: dict[str, Merchant]
    limiter: anyio.CapacityLimiter

    @property
    def default_mchid(self) -> str | None:
        merchant = self.settings.default_merchant
        return merchant.mchid if merchant else None

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes
