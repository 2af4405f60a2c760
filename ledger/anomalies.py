"""The kinds of anomaly an order's `AnomalyDetected` records (`ledger.domain`)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AnomalyKind"]


class AnomalyKind(StrEnum):
    """What an `AnomalyDetected` found; its value is the event's stored `kind`."""

    AMOUNT_MISMATCH = "amount_mismatch"
    # Stored as kind "amount_mismatch" (detail field "amount.currency", key "currency_mismatch:…"):
    # the name says what it is, the stored events keep their spelling.
    CURRENCY_MISMATCH = "amount_mismatch"
    MCHID_MISMATCH = "mchid_mismatch"
    APPID_MISMATCH = "appid_mismatch"
    NOTIFICATION_CONFLICT = "notification_conflict"
    TRANSACTION_CONFLICT = "transaction_conflict"
    OVER_REFUND = "over_refund"
    SUB_MCHID_UNKNOWN = "sub_mchid_unknown"  # a service provider's sub-merchant not in WECHATPAY_SUB_MCHIDS
    PAID_AFTER_CLOSE = "paid_after_close"  # the ledger closed the order, then WeChat took the payment anyway
