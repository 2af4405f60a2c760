"""`payledger verify`: recompute every hash chain and re-verify every stored notification.

Reads stored events, not aggregates: one stream by id, or the whole log in notification order
in pages (`--all`), keeping only each stream's head (version, chain, whose stream) in memory.
Each event is decoded through the application's mapper, so encrypted states are checked too.
A stored `NotificationReceived` is re-verified against its stored signature headers with the
configured key its serial names, at the notification's own timestamp: the 300-second window
of the live path does not apply to old events, the signature and the key's validity do. A
legacy APIv2 delivery (its envelope says `"api": "v2"`) is re-verified with the merchant's APIv2
key instead: the sign of a payment, the `req_info` of a refund, and what its XML maps to.
A kept daily bill ([protocol: Keeping a bill]) is inflated chunk by chunk as its events pass and
its SHA-1 and size compared with its `Fetched`: one inflater per bill being read, never the bill.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError, StoredEvent
from eventsourcing.utils import get_topic

from ledger.application import Ledger
from ledger.audit.rederive import EVIDENCE, Rederiver
from ledger.bill_evidence import BillInflater
from ledger.domain import BILL_DECISION_EVENTS, NotificationInbox, PaymentOrder, inbox_id, order_id
from ledger.errors import (
    DecryptionFailed,
    EventUndecryptable,
    InvalidRequest,
    NotificationRejected,
    OrderNotFound,
    StoredBillCorrupt,
    StoreUnavailable,
    UnknownSerial,
    V2DecryptionFailed,
    V2SignInvalid,
    VerificationFailed,
)
from ledger.hashchain import GENESIS, event_fields, link
from ledger.statements import BillStatement
from ledger.store.cipher import stored_key_id
from ledger.wechatpay.keys import KeyStore, normalise_serial
from ledger.wechatpay.notification import open_envelope
from ledger.wechatpay.signature import SignatureHeaders, build_message, verify
from ledger.wechatpay.v2 import V2_KEY_SERIAL, parse_v2_notification, v2_delivery

__all__ = ["PAGE", "Break", "Report", "check_all", "check_order"]

# Events read per query of the whole log: bounded so that a page of bill chunk events
# (`ledger.bill_evidence.STORED_CHUNK`, about 175 KB each as stored) stays under about 200 MB.
PAGE = 1_000
_ORDER_TOPIC = get_topic(PaymentOrder) + "."
_INBOX_TOPIC = get_topic(NotificationInbox) + "."
_BILL_TOPIC = get_topic(BillStatement) + "."


@dataclass(frozen=True)
class Break:
    """One place where the ledger is not what was written."""

    stream_id: str
    kind: str  # "order", "inbox", "bill" or "stream" (its first event is gone)
    name: str  # the out_trade_no, the notification id or "<kind> <bill day>", "" when unknown
    mchid: str
    version: int
    problem: str

    def __str__(self) -> str:
        who = f"{self.kind} {self.name} (mchid {self.mchid})" if self.name else f"stream {self.stream_id}"
        return f"{who} version {self.version}: {self.problem}"


@dataclass
class Report:
    streams: int = 0
    events: int = 0
    notifications: int = 0
    # Stored resources compared with what their signed body decrypts to, and those that could
    # not be (no APIv3 key given, or the key has been reset since they arrived).
    resources: int = 0
    resources_unchecked: int = 0
    # Decision events compared with what replaying their evidence decides (0: not asked for).
    decisions: int = 0
    breaks: list[Break] = field(default_factory=list)
    # How many stored states each key encrypts ("unencrypted" for plaintext): retire a key at 0.
    key_ids: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def summary(self) -> str:
        breaks = f"{len(self.breaks)} break" + ("" if len(self.breaks) == 1 else "s")
        states = ", ".join(
            f"{n} {k if k == 'unencrypted' else 'with key ' + k}" for k, n in sorted(self.key_ids.items())
        )
        return (
            f"verified {self.streams} streams, {self.events} events, {self.notifications} notifications "
            f"re-verified, {self.resources} resources re-decrypted, {self.decisions} decisions re-derived"
            + (f" ({self.resources_unchecked} not: APIv3 key missing or reset)" if self.resources_unchecked else "")
            + f": {breaks}"
            + (f" (stored states: {states})" if states else "")
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "streams": self.streams,
                "events": self.events,
                "notifications": self.notifications,
                "resources": self.resources,
                "resources_unchecked": self.resources_unchecked,
                "decisions": self.decisions,
                "breaks": [asdict(b) for b in self.breaks],
                "key_ids": dict(sorted(self.key_ids.items())),
            },
            ensure_ascii=False,
            indent=2,
        )


@dataclass
class _Head:
    kind: str = "stream"
    name: str = ""
    mchid: str = ""
    version: int = 0
    chain: str | None = GENESIS  # None after an event that could not be decoded


class _Checker:
    def __init__(
        self,
        ledger: Ledger,
        keys: Mapping[str, KeyStore],
        apiv3: Mapping[str, bytes],
        appids: Mapping[str, str | None] | None = None,
        sub_mchids: Mapping[str, frozenset[str] | None] | None = None,
        v2_keys: Mapping[str, str] | None = None,
    ) -> None:
        self._ledger = ledger
        self._keys = keys
        self._apiv3 = apiv3
        self._v2_keys = v2_keys or {}
        self.report = Report()
        self.heads: dict[UUID, _Head] = {}
        self._rederiver = None if appids is None else Rederiver(appids, self._resume, sub_mchids=sub_mchids)
        # Bills whose chunks are being read; None once one of its chunks was found broken.
        self._bills: dict[UUID, BillInflater | None] = {}
        self._named_bills: dict[str, bool] = {}  # a bill decision's `evidence` -> that bill is kept

    def _resume(self, stream_id: UUID, version: int) -> PaymentOrder | None:
        try:
            order: Any = self._ledger.repository.get(stream_id, version=version)
        except Exception:  # the stream's earlier breaks were reported when they were met
            return None
        return order if isinstance(order, PaymentOrder) else None

    def finish(self) -> None:
        """Decisions derived at the end of a stream that were never stored."""
        if self._rederiver is None:
            return
        for stream_id, problem in self._rederiver.leftovers():
            head = self.heads[stream_id]
            self._break(stream_id, head, head.version, problem)

    def _break(self, stream_id: UUID, head: _Head, version: int, problem: str) -> None:
        self.report.breaks.append(Break(str(stream_id), head.kind, head.name, head.mchid, version, problem))

    def check(self, stored: StoredEvent) -> None:
        """Feed one stored event; a stream's events must come in the order they were stored."""
        stream_id: Any = stored.originator_id
        head = self.heads.get(stream_id)
        if head is None:
            head = self.heads[stream_id] = _Head()
            self.report.streams += 1
        self.report.events += 1
        version = stored.originator_version
        self.report.key_ids[stored_key_id(stored.state) or "unencrypted"] += 1
        if version != head.version + 1:
            missing = (
                f"version {head.version + 1}"
                if version == head.version + 2
                else (f"versions {head.version + 1}-{version - 1}")
            )
            self._break(stream_id, head, version, f"events missing before it ({missing})")
        try:
            event: Any = self._ledger.mapper.to_domain_event(stored)
        except Exception as exc:  # any failure to decode is a finding, reported and passed over
            cause = exc.__cause__
            why = str(cause) if isinstance(cause, EventUndecryptable) else "stored state is not a valid event"
            self._break(stream_id, head, version, f"event does not decode: {why}")
            head.version, head.chain = version, None
            if stored.topic.startswith(_BILL_TOPIC):
                self._bills[stream_id] = None
            return
        if version == 1:
            self._name(head, stored.topic, event)
        if not event.chain:
            self._break(stream_id, head, version, "event has no chain")
        elif head.chain is not None and link(head.chain, type(event), event_fields(event)) != event.chain:
            self._break(stream_id, head, version, "chain mismatch")
        head.version, head.chain = version, event.chain or None
        if stored.topic.endswith(".NotificationReceived"):
            self.report.notifications += 1
            if isinstance(event.envelope, dict) and event.envelope.get("api") == "v2":
                problem = self._v2_problem(head.mchid, event)
            else:
                problem = self._signature_problem(head.mchid, event)
                if problem is None:
                    problem = self._resource_problem(head.mchid, event)
            if problem is not None:
                self._break(stream_id, head, version, problem)
        if stored.topic.startswith(_BILL_TOPIC):
            problem = self._bill_problem(stream_id, event)
            if problem is not None:
                self._break(stream_id, head, version, problem)
        if isinstance(event, BILL_DECISION_EVENTS):
            problem = self._bill_named_problem(head.mchid, str(getattr(event, "evidence", "")))
            if problem is not None:
                self._break(stream_id, head, version, problem)
        if self._rederiver is not None and stored.topic.startswith(_ORDER_TOPIC):
            if type(event).__name__ not in EVIDENCE:
                self.report.decisions += 1
            for problem in self._rederiver.feed(stream_id, version, event):
                self._break(stream_id, head, version, problem)

    @staticmethod
    def _name(head: _Head, topic: str, event: Any) -> None:
        if topic.startswith(_ORDER_TOPIC):
            head.kind, head.name = "order", str(getattr(event, "out_trade_no", ""))
        elif topic.startswith(_INBOX_TOPIC):
            head.kind, head.name = "inbox", str(getattr(event, "notification_id", ""))
        elif topic.startswith(_BILL_TOPIC):
            head.kind, head.name = "bill", f"{getattr(event, 'kind', '')} {getattr(event, 'bill_date', '')}"
        head.mchid = str(getattr(event, "mchid", ""))

    def _bill_named_problem(self, mchid: str, evidence: str) -> str | None:
        """A decision taken from a bill must name a bill that is kept, by its SHA-1."""
        if evidence not in self._named_bills:
            kind, _, rest = evidence.removeprefix("bill:").partition(":")
            day, _, sha1 = rest.partition(":")
            try:
                kept = self._ledger.bill_status(mchid, dt.date.fromisoformat(day), kind)
            except (ValueError, InvalidRequest):
                kept = None
            self._named_bills[evidence] = kept is not None and kept.sha1 == sha1 and bool(sha1)
        return None if self._named_bills[evidence] else f"the bill it names is not kept ({evidence})"

    def _bill_problem(self, stream_id: UUID, event: Any) -> str | None:
        """Chunks are inflated as they pass; at `Fetched`, what they made must have its SHA-1 and size."""
        if isinstance(event, BillStatement.ChunkStored):
            inflater = self._bills.setdefault(stream_id, BillInflater())
            if inflater is None:
                return None  # this bill's first broken chunk was reported
            try:
                for _ in inflater.feed(str(event.data)):
                    pass  # hashed and counted by the inflater, then dropped
            except StoredBillCorrupt as exc:
                self._bills[stream_id] = None
                return f"bill chunk {event.index} does not inflate: {exc}"
            return None
        if not isinstance(event, BillStatement.Fetched):
            return None
        if stream_id in self._bills and self._bills[stream_id] is None:
            self._bills.pop(stream_id)
            return "bill sha1 mismatch (a chunk is broken)"
        inflater = self._bills.pop(stream_id, None) or BillInflater()
        try:
            for _ in inflater.finish():
                pass
        except StoredBillCorrupt as exc:
            return f"bill sha1 mismatch ({exc})"
        if inflater.sha1 != event.sha1 or inflater.size != event.size:
            return "bill sha1 mismatch"
        return None

    def _resource_problem(self, mchid: str, event: Any) -> str | None:
        """The stored resource must be what the signed body decrypts to (opened the way the
        verifier that accepted it opens a body; its signature was checked just before)."""
        apiv3 = self._apiv3.get(mchid)
        if apiv3 is None or mchid not in self._keys:
            self.report.resources_unchecked += 1
            return None
        try:
            _, resource = open_envelope(str(event.raw_body).encode("utf-8"), apiv3)
        except DecryptionFailed:  # the merchant reset the APIv3 key since: cannot tell
            self.report.resources_unchecked += 1
            return None
        except NotificationRejected:
            return "signed body is not a valid notification"
        self.report.resources += 1
        if resource != event.resource:
            return "stored resource is not what the signed body decrypts to"
        return None

    def _v2_problem(self, mchid: str, event: Any) -> str | None:
        """A legacy APIv2 delivery ([protocol: APIv2 as APIv3]): its raw XML must verify with the merchant's
        APIv2 key as it did on arrival (a payment's sign; a refund's `req_info` decrypts), and the stored
        id, type, delivery key and resource must be what that XML maps to."""
        key = self._v2_keys.get(mchid)
        if key is None:
            return "APIv2 key not configured"
        if event.key_serial != V2_KEY_SERIAL or event.signature_headers:
            return "an APIv2 delivery with APIv3 signature data"
        raw = str(event.raw_body).encode("utf-8")
        try:
            notification = parse_v2_notification(raw, key, max_bytes=len(raw))
        except V2SignInvalid:
            return "APIv2 sign does not verify"
        except V2DecryptionFailed:
            return "APIv2 req_info does not decrypt with the configured APIv2 key"
        except NotificationRejected:
            return "stored body is not a valid APIv2 notification"
        delivery = v2_delivery(notification)
        self.report.resources += 1
        stored = (event.notification_id, event.event_type, event.delivery_key)
        if (delivery.notification_id, delivery.event_type, delivery.delivery_key) != stored:
            return "stored delivery is not what its XML body says"
        if delivery.resource != event.resource:
            return "stored resource is not what its XML body maps to"
        return None

    def _signature_problem(self, mchid: str, event: Any) -> str | None:
        try:
            headers = SignatureHeaders.from_headers(event.signature_headers)
        except (VerificationFailed, AttributeError, TypeError):
            return "stored signature headers are incomplete"
        serial = normalise_serial(headers.serial)
        if normalise_serial(str(event.key_serial)) != serial:
            return f"recorded key serial {event.key_serial} is not the signature's ({serial})"
        if not (headers.timestamp.isascii() and headers.timestamp.isdigit()):
            return "stored signature timestamp is not an integer"
        stores = [self._keys[mchid]] if mchid in self._keys else list(self._keys.values())
        key = None
        for store in stores:
            try:
                _, key = store.lookup(serial, int(headers.timestamp))
                break
            except UnknownSerial:
                continue
            except VerificationFailed:
                return f"certificate {serial} was not valid at the notification's timestamp"
        if key is None:
            return f"key {serial} not configured"
        message = build_message(headers.timestamp, headers.nonce, str(event.raw_body).encode("utf-8"))
        if not verify(key, message, headers.signature):
            return "signature does not verify"
        return None


def _checked(
    ledger: Ledger,
    keys: Mapping[str, KeyStore],
    apiv3: Mapping[str, bytes],
    appids: Mapping[str, str | None] | None,
    events: Iterable[StoredEvent],
    sub_mchids: Mapping[str, frozenset[str] | None] | None = None,
    v2_keys: Mapping[str, str] | None = None,
) -> _Checker:
    checker = _Checker(ledger, keys, apiv3, appids, sub_mchids, v2_keys)
    try:
        for stored in events:
            checker.check(stored)
    except PersistenceError as exc:
        raise StoreUnavailable(type(exc).__name__) from None
    return checker


def check_order(
    ledger: Ledger,
    keys: Mapping[str, KeyStore],
    mchid: str,
    out_trade_no: str,
    apiv3: Mapping[str, bytes] | None = None,
    appids: Mapping[str, str | None] | None = None,
    *,
    sub_mchid: str | None = None,
    sub_mchids: Mapping[str, frozenset[str] | None] | None = None,
    v2_keys: Mapping[str, str] | None = None,
) -> Report:
    """One order's stream (a sub-merchant's with `sub_mchid`); when no order has that name, the inbox
    stream of that notification id. `v2_keys`: each merchant's APIv2 key, for its APIv2 deliveries."""
    streams = ((order_id(mchid, out_trade_no, sub_mchid), "order"), (inbox_id(mchid, out_trade_no), "inbox"))
    for stream_id, kind in streams:
        try:
            stored = list(ledger.recorder.select_events(stream_id))
        except PersistenceError as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        if stored:
            checker = _Checker(ledger, keys, apiv3 or {}, appids, sub_mchids, v2_keys)
            # Named from the request, so a stream whose first event is gone is still named.
            checker.heads[stream_id] = _Head(kind, out_trade_no, mchid)
            checker.report.streams = 1
            for event in stored:
                checker.check(event)
            checker.finish()
            return checker.report
    raise OrderNotFound(out_trade_no)


def _log(ledger: Ledger, page: int, progress: Callable[[int, int], None] | None = None) -> Iterator[StoredEvent]:
    head = (ledger.recorder.max_notification_id() or 0) if progress is not None else 0
    position = 0
    while True:
        notifications = ledger.recorder.select_notifications(position, page, inclusive_of_start=False)
        if not notifications:
            return
        yield from notifications
        position = notifications[-1].id
        if progress is not None:
            progress(position, max(head, position))


def check_all(
    ledger: Ledger,
    keys: Mapping[str, KeyStore],
    *,
    page: int = PAGE,
    apiv3: Mapping[str, bytes] | None = None,
    appids: Mapping[str, str | None] | None = None,
    sub_mchids: Mapping[str, frozenset[str] | None] | None = None,
    v2_keys: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Every stream in the log, read once in notification order; after each page, `progress(position,
    head)` (the log's position read up to, and its head when the check began, or beyond)."""
    events = _log(ledger, page, progress)
    checker = _checked(ledger, keys, apiv3 or {}, appids, events, sub_mchids, v2_keys)
    checker.finish()
    return checker.report
