"""Fuzzing the notification endpoint: nothing but a correctly signed notification is acknowledged.

Random bodies and headers, and mutations of one valid signed notification, are sent to the app
in-process as raw ASGI requests. Each must be refused with the documented JSON failure (a fixed
reason, never exception text) and append nothing; afterwards a valid notification is still
acknowledged, so the committer and the app survived all of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ledger.application import Ledger
from ledger.errors import BodyTooLarge, MalformedNotification, UnknownSerial, VerificationFailed
from ledger.wechatpay.keys import normalise_serial
from ledger.wechatpay.sandbox.signer import Delivery, NotificationFactory
from tests.support.constants import MCHID
from tests.support.inprocess import Answer, InProcess, in_process
from tests.support.servers import ledger_app

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
PATHS = ["/wechatpay/notify", f"/wechatpay/notify/{MCHID}"]
SIGNATURE_HEADERS = [
    b"wechatpay-timestamp",
    b"wechatpay-nonce",
    b"wechatpay-signature",
    b"wechatpay-serial",
    b"wechatpay-signature-type",
]
REQUIRED_HEADERS = SIGNATURE_HEADERS[:4]  # Wechatpay-Signature-Type may be absent ([protocol: The signature headers])
# Every reason a refused notification may give: fixed strings, so no exception text can pass.
REASONS = {
    VerificationFailed.reason,
    UnknownSerial.reason,
    MalformedNotification.reason,
    BodyTooLarge.reason,
    "missing signature headers",
    "bad timestamp",
    "timestamp outside the allowed window",
    "unsupported signature type",
    "certificate expired",
    "duplicate signature headers",
}
Headers = list[tuple[bytes, bytes]]
Mutation = Callable[[bytes, Headers], tuple[bytes, Headers]]


@pytest.fixture
def service(merchant_env: dict[str, str], sqlite_url: str) -> Iterator[tuple[InProcess, Ledger]]:
    with ledger_app(merchant_env, sqlite_url) as (app, ledger), in_process(app) as client:
        yield client, ledger


def raw_headers(delivery: Delivery) -> Headers:
    return [(k.lower().encode(), v.encode()) for k, v in delivery.headers.items()] + [
        (b"content-type", b"application/json")
    ]


def assert_refused(answer: Answer) -> None:
    assert not 200 <= answer.status < 300, answer
    assert answer.status in (401, 413), answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() in [{"code": "FAIL", "message": reason} for reason in sorted(REASONS)], answer


@contextlib.contextmanager
def nothing_appended(ledger: Ledger) -> Iterator[None]:
    before = ledger.recorder.max_notification_id()
    yield
    assert ledger.recorder.max_notification_id() == before, "a refused notification appended an event"


def still_acknowledges(app: InProcess, ledger: Ledger, factory: NotificationFactory, out_trade_no: str) -> None:
    delivery = factory.paid(out_trade_no, 100)
    assert app.request("POST", PATHS[0], raw_headers(delivery), delivery.body).status == 204
    assert [e["type"] for e in ledger.order_history(MCHID, out_trade_no)][-1] == "PaymentSucceeded"


# -- random requests -------------------------------------------------------------------------------

header_names = st.one_of(
    st.sampled_from([*SIGNATURE_HEADERS, b"content-type", b"content-length", b"request-id"]),
    st.binary(min_size=1, max_size=40),
)
header_values = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(min_value=0, max_value=2_000_000_000).map(lambda n: str(n).encode()),
    st.integers(min_value=10_000, max_value=100_000).map(lambda n: b"A" * n),
)
bodies = st.one_of(
    st.binary(max_size=2048),
    st.text(max_size=500).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(lambda n: b'{"id":"' + b"x" * n + b'"}', st.integers(min_value=65_000, max_value=70_000)),
)


def test_random_bodies_and_headers_are_refused_and_append_nothing(
    service: tuple[InProcess, Ledger], factory: NotificationFactory
) -> None:
    app, ledger = service

    @FUZZ
    @given(
        path=st.sampled_from(PATHS),
        headers=st.lists(st.tuples(header_names, header_values), max_size=8),
        body=bodies,
    )
    def refused(path: str, headers: Headers, body: bytes) -> None:
        with nothing_appended(ledger):
            assert_refused(app.request("POST", path, headers, body))

    refused()
    still_acknowledges(app, ledger, factory, "ORDER-FZ01")


# -- mutations of a valid notification ------------------------------------------------------------


def _set(headers: Headers, name: bytes, value: bytes) -> Headers:
    return [(k, value if k == name else v) for k, v in headers]


def _get(headers: Headers, name: bytes) -> bytes:
    return next((v for k, v in headers if k == name), b"")


@st.composite
def body_edits(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["flip", "insert", "delete"]))
    at = draw(st.integers(min_value=0, max_value=10_000))
    byte = draw(st.integers(min_value=1, max_value=255))

    def edit(body: bytes, headers: Headers) -> tuple[bytes, Headers]:
        i = at % len(body)
        if kind == "flip":
            return body[:i] + bytes([body[i] ^ byte]) + body[i + 1 :], headers
        if kind == "insert":
            return body[:i] + bytes([byte]) + body[i:], headers
        return body[:i] + body[i + 1 + byte % 8 :], headers

    return edit


@st.composite
def header_edits(draw: st.DrawFn) -> Mutation:
    name = draw(st.sampled_from(SIGNATURE_HEADERS))
    kind = draw(st.sampled_from(["replace", "drop", "duplicate", "case", "control", "empty", "huge", "space"]))
    new = draw(
        st.one_of(st.binary(max_size=64), st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")))
    )
    char = draw(st.characters(categories=["Cc", "Cf", "Zs", "So", "Lo"]))

    def edit(body: bytes, headers: Headers) -> tuple[bytes, Headers]:
        value = _get(headers, name)
        if kind == "replace":
            return body, _set(headers, name, new)
        if kind == "drop":
            if name == b"wechatpay-signature-type":
                return body, _set(headers, name, b"")
            return body, [(k, v) for k, v in headers if k != name]
        if kind == "duplicate":
            return body, [*headers, (name, new if new else value)]
        if kind == "case":
            return body, _set(headers, name, value.swapcase())
        if kind == "control":
            middle = len(value) // 2
            return body, _set(headers, name, value[:middle] + char.encode() + value[middle:])
        if kind == "empty":
            return body, _set(headers, name, b"")
        if kind == "huge":
            return body, _set(headers, name, value * 2000)
        return body, _set(headers, name, b" " + value)

    return edit


def _timestamp_shift(delta: int) -> Mutation:
    def edit(body: bytes, headers: Headers) -> tuple[bytes, Headers]:
        ts = _get(headers, b"wechatpay-timestamp")
        if not ts.isdigit():  # already spoilt by an earlier mutation
            return body, headers
        return body, _set(headers, b"wechatpay-timestamp", str(int(ts) + delta).encode())

    return edit


def _serial(serial: str) -> Mutation:
    return lambda body, headers: (body, _set(headers, b"wechatpay-serial", serial.encode()))


def _content_type(value: bytes) -> Callable[[Headers], Headers]:
    return lambda headers: _set(headers, b"content-type", value)


@pytest.mark.parametrize("path", PATHS)
def test_mutated_signed_notifications_are_refused_and_append_nothing(
    service: tuple[InProcess, Ledger],
    factory: NotificationFactory,
    other_factory: NotificationFactory,
    path: str,
) -> None:
    app, ledger = service
    valid = factory.paid("ORDER-FZ02", 100)
    original = (valid.body, raw_headers(valid))
    verifying = {factory.public_key_id, factory.certificate_serial}

    def canonical(headers: Headers) -> Headers:
        def value(name: bytes, raw: bytes) -> bytes:
            same_key = name == b"wechatpay-serial" and normalise_serial(raw.decode("latin-1")) in verifying
            return b"<verifying serial>" if same_key else raw

        return [(k, value(k, v)) for k, v in headers if k in SIGNATURE_HEADERS]

    @FUZZ
    @given(
        mutations=st.lists(
            st.one_of(
                body_edits(),
                header_edits(),
                st.integers(min_value=-(10**9), max_value=10**9).filter(bool).map(_timestamp_shift),
                st.sampled_from(
                    [other_factory.public_key_id, "PUB_KEY_ID_0", "5157F09EFDC096DE15EBE81A47057A72", "*"]
                ).map(_serial),
            ),
            min_size=1,
            max_size=3,
        ),
        content_type=st.sampled_from([b"application/json", b"text/plain", b"application/xml", b"", b"\x00"]),
    )
    def refused(mutations: list[Mutation], content_type: bytes) -> None:
        body, headers = original
        for mutate in mutations:
            body, headers = mutate(body, headers)
        headers = _content_type(content_type)(headers)
        # A mutation that leaves the signed bytes and the signature headers as the verifier reads
        # them unchanged (a serial naming the same key, say) is no mutation.
        assume((body, canonical(headers)) != (original[0], canonical(original[1])))
        with nothing_appended(ledger):
            assert_refused(app.request("POST", path, headers, body))

    refused()
    still_acknowledges(app, ledger, factory, "ORDER-FZ03")


def test_what_does_not_invalidate_a_signed_notification(
    service: tuple[InProcess, Ledger], factory: NotificationFactory
) -> None:
    """The edges of the fuzzing above: the signature covers the body bytes and the Wechatpay-* values.

    Header names are case-insensitive ([protocol: The signature headers]), Wechatpay-Signature-Type is
    optional, the serial may name the public key or the certificate with the same key, and Content-Type is
    not signed: refusing an authentic notification over it would only make WeChat retry it forever."""
    app, ledger = service
    for i, change in enumerate(
        [
            lambda h: [(k.upper(), v) for k, v in h],
            lambda h: [(k, v) for k, v in h if k != b"wechatpay-signature-type"],
            lambda h: _set(h, b"wechatpay-serial", factory.certificate_serial.lower().encode()),
            _content_type(b"text/plain"),
        ]
    ):
        delivery = factory.paid(f"ORDER-FZ1{i}", 100)
        answer = app.request("POST", PATHS[0], change(raw_headers(delivery)), delivery.body)
        assert answer.status == 204, (i, answer)
        assert ledger.get_order(MCHID, f"ORDER-FZ1{i}").trade_state == "SUCCESS"


def test_a_repeated_signature_header_is_refused_even_with_the_same_value(
    service: tuple[InProcess, Ledger], factory: NotificationFactory
) -> None:
    app, ledger = service
    delivery = factory.paid("ORDER-FZ20", 100)
    headers = raw_headers(delivery)
    with nothing_appended(ledger):
        for name in SIGNATURE_HEADERS:
            answer = app.request("POST", PATHS[0], [*headers, (name, _get(headers, name))], delivery.body)
            assert answer.status == 401
            assert answer.json() == {"code": "FAIL", "message": "duplicate signature headers"}
    assert app.request("POST", PATHS[0], headers, delivery.body).status == 204
