"""What the app holds between requests: the wired services, the group committer, a thread limiter."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from ledger.application import Ledger
from ledger.bootstrap import MerchantServices, Services
from ledger.groupcommit import GroupCommitter
from ledger.settings import Settings
from projections.read_model import OrdersView

__all__ = ["AppState"]


@dataclass
class AppState:
    services: Services
    committer: GroupCommitter
    limiter: anyio.CapacityLimiter
    orders_view: OrdersView | None = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    @property
    def merchants(self) -> dict[str, MerchantServices]:
        return self.services.merchants

    @property
    def default_mchid(self) -> str | None:
        merchant = self.settings.default_merchant
        return merchant.mchid if merchant else None

    @property
    def max_body_bytes(self) -> int:
        return self.settings.max_body_bytes
