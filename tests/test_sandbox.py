"""The sandbox is a fake WeChat Pay over real loopback HTTP: what a client and a ledger see of it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ledger.errors import VerificationFailed
from ledger.settings import Settings
from ledger.wechatpay import aead
from ledger.wechatpay.keys import KeyStore, PlatformCertificate
from ledger.wechatpay.notification import NotificationVerifier
from ledger.wechatpay.sandbox.server import RETRY_SCHEDULE, Sandbox, SandboxError
from ledger.wechatpay.sandbox.signer import NotificationFactory, compact_json
from tests.support.constants import APPID, MCHID
from tests.support.sandbox import NotifyReceiver, Receiving, authorization, call, query, serve, verified
from tests.support.servers import running


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def wechat(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with serve(sandbox.app) as client:
        yield client


# -- the query, close and certificate APIs ([protocol: Calling WeChat Pay]) ----------------------------------


def test_query_of_a_paid_order_is_signed_with_the_public_key(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1001", 100, "咖啡")
    transaction_id = sandbox.pay("ORDER-1001", notify=False)

    response = query(wechat, "ORDER-1001", merchant_key)

    assert response.status_code == 200
    assert verified(response, factory.key_store()) == factory.public_key_id
    assert response.headers["Request-ID"]
    data = response.json()
    assert data["trade_state"] == "SUCCESS"
    assert data["transaction_id"] == transaction_id
    assert len(transaction_id) == 28 and transaction_id.isdigit()
    assert data["success_time"].endswith("+08:00")
    assert (data["mchid"], data["appid"], data["amount"]["total"]) == (MCHID, APPID, 100)
    assert "支付成功".encode() in response.content  # raw UTF-8, compact
    assert b": " not in response.content and b", " not in response.content


def test_query_by_transaction_id_and_an_unpaid_order(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1002", 100)
    unpaid = query(wechat, "ORDER-1002", merchant_key).json()
    assert unpaid["trade_state"] == "NOTPAY"
    assert not {"transaction_id", "success_time", "payer"} & unpaid.keys()

    transaction_id = sandbox.pay("ORDER-1002", notify=False)
    response = call(wechat, "GET", f"/v3/pay/transactions/id/{transaction_id}?mchid={MCHID}", key=merchant_key)
    assert response.status_code == 200
    assert response.json()["out_trade_no"] == "ORDER-1002"


def test_answer_uses_the_platform_certificate_the_request_names(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1003", 100)
    response = query(wechat, "ORDER-1003", merchant_key, headers={"Wechatpay-Serial": factory.certificate_serial})
    assert response.headers["Wechatpay-Serial"] == factory.certificate_serial
    assert verified(response, factory.key_store()) == factory.certificate_serial


@pytest.mark.parametrize(
    "problem",
    ["missing", "other key", "stale timestamp", "merchant serial", "mchid", "other target", "format"],
)
def test_bad_authorization_is_an_unsigned_401_sign_error(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey, problem: str
) -> None:
    sandbox.create_order("ORDER-1004", 100)
    target = f"/v3/pay/transactions/out-trade-no/ORDER-1004?mchid={MCHID}"
    signing: dict[str, Any] = {"key": merchant_key}
    if problem == "other key":
        signing["key"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif problem == "stale timestamp":
        signing["timestamp"] = int(time.time()) - 301
    elif problem == "merchant serial":
        signing["serial"] = "0123456789ABCDEF"
    elif problem == "mchid":
        signing["mchid"] = "1900000999"
    header = authorization("GET", target.replace("1004", "9999") if problem == "other target" else target, **signing)
    if problem == "format":
        header = header.replace('",', '";')
    response = wechat.get(target, headers={} if problem == "missing" else {"Authorization": header})

    assert response.status_code == 401
    assert response.json()["code"] == "SIGN_ERROR"
    assert "Wechatpay-Signature" not in response.headers


def test_authorization_pairs_may_come_in_any_order(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1005", 100)
    target = f"/v3/pay/transactions/out-trade-no/ORDER-1005?mchid={MCHID}"
    scheme, _, pairs = authorization("GET", target, key=merchant_key).partition(" ")
    reordered = f"{scheme} {','.join(reversed(pairs.split(',')))}"
    assert wechat.get(target, headers={"Authorization": reordered}).status_code == 200


def test_unknown_orders_and_refunds_are_404(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1006", 100)
    for target, code in [
        (f"/v3/pay/transactions/out-trade-no/ORDER-9999?mchid={MCHID}", "ORDER_NOT_EXIST"),
        ("/v3/pay/transactions/out-trade-no/ORDER-1006?mchid=1900000999", "ORDER_NOT_EXIST"),  # another mchid's
        ("/v3/refund/domestic/refunds/R-9999", "RESOURCE_NOT_EXISTS"),
    ]:
        unknown = call(wechat, "GET", target, key=merchant_key)
        assert (unknown.status_code, unknown.json()["code"]) == (404, code), target
        assert "Wechatpay-Signature" not in unknown.headers, target


def test_close_is_a_signed_204_and_a_paid_order_cannot_be_closed(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1007", 100)
    body = json.dumps({"mchid": MCHID}, separators=(",", ":")).encode()

    closed = call(wechat, "POST", "/v3/pay/transactions/out-trade-no/ORDER-1007/close", body, key=merchant_key)
    assert closed.status_code == 204 and closed.content == b""
    assert verified(closed, factory.key_store()) == factory.public_key_id  # over "ts\nnonce\n\n"
    assert query(wechat, "ORDER-1007", merchant_key).json()["trade_state"] == "CLOSED"
    again = call(wechat, "POST", "/v3/pay/transactions/out-trade-no/ORDER-1007/close", body, key=merchant_key)
    assert again.status_code == 204  # re-entrant

    sandbox.create_order("ORDER-1008", 100)
    sandbox.pay("ORDER-1008", notify=False)
    paid = call(wechat, "POST", "/v3/pay/transactions/out-trade-no/ORDER-1008/close", body, key=merchant_key)
    assert (paid.status_code, paid.json()["code"]) == (400, "ORDER_PAID")


def test_refund_query_reports_status_and_partial_refunds(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1009", 100)
    sandbox.pay("ORDER-1009", notify=False)
    refund_id = sandbox.refund("ORDER-1009", "R-1009-1", 30, notify=False)
    with pytest.raises(SandboxError) as too_much:
        sandbox.refund("ORDER-1009", "R-1009-2", 71, notify=False)
    assert too_much.value.code == "NOT_ENOUGH"

    response = call(wechat, "GET", "/v3/refund/domestic/refunds/R-1009-1", key=merchant_key)
    assert verified(response, factory.key_store())
    data = response.json()
    assert (data["status"], data["refund_id"], data["amount"]["refund"], data["amount"]["total"]) == (
        "SUCCESS",
        refund_id,
        30,
        100,
    )
    assert "refund_status" not in data  # [protocol: Querying a refund]: `status` in the query answer
    assert query(wechat, "ORDER-1009", merchant_key).json()["trade_state"] == "REFUND"


def test_orders_follow_wechat_state_rules(sandbox: Sandbox) -> None:
    def code_of(action: Callable[[], object]) -> str:
        with pytest.raises(SandboxError) as error:
            action()
        return error.value.code

    sandbox.notify_url = "http://127.0.0.1:9/notify"  # never served: notifications only queue
    sandbox.create_order("ORDER-1101", 100)
    sandbox.close("ORDER-1101")
    assert code_of(lambda: sandbox.pay("ORDER-1101")) == "ORDER_CLOSED"
    assert code_of(lambda: sandbox.create_order("ORDER-1101", 100)) == "OUT_TRADE_NO_USED"
    assert code_of(lambda: sandbox.create_order("SHORT", 100)) == "PARAM_ERROR"
    assert code_of(lambda: sandbox.refund("ORDER-1101", "R-1101", 10)) == "INVALID_REQUEST"

    sandbox.create_order("ORDER-1102", 100)
    sandbox.pay("ORDER-1102", notify=False)
    assert code_of(lambda: sandbox.pay("ORDER-1102")) == "ORDER_PAID"
    sandbox.refund("ORDER-1102", "R-1102", 100, status="PROCESSING")
    assert sandbox.notifications == []  # WeChat sends no REFUND.PROCESSING
    assert code_of(lambda: sandbox.refund("ORDER-1102", "R-1102-2", 1)) == "NOT_ENOUGH"
    sandbox.complete_refund("R-1102", "ABNORMAL")
    assert [n.event_type for n in sandbox.notifications] == ["REFUND.ABNORMAL"]
    with pytest.raises(ValueError):
        Sandbox(factory=sandbox.factory, merchant_private_key=sandbox.merchant_private_key, drop_rate=1.5)


def _decrypted_certificates(response: httpx.Response, apiv3_key: str) -> dict[str, x509.Certificate]:
    out = {}
    for entry in response.json()["data"]:
        sealed = entry["encrypt_certificate"]
        assert (sealed["algorithm"], sealed["associated_data"]) == ("AEAD_AES_256_GCM", "certificate")
        pem = aead.decrypt(apiv3_key.encode(), sealed["nonce"], sealed["associated_data"], sealed["ciphertext"])
        cert = x509.load_pem_x509_certificate(pem)
        assert format(cert.serial_number, "040X") == entry["serial_no"]
        assert entry["expire_time"].endswith("+08:00")
        out[entry["serial_no"]] = cert
    return out


def test_certificates_download_decrypts_to_the_platform_certificate(
    wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    response = call(wechat, "GET", "/v3/certificates", key=merchant_key)
    assert response.status_code == 200
    assert verified(response, factory.key_store()) == factory.public_key_id
    assert list(_decrypted_certificates(response, factory.apiv3_key)) == [factory.certificate_serial]


def test_rotation_lists_two_certificates_and_answers_with_the_named_one(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    new_serial = sandbox.rotate_certificate(days_valid=30)
    response = call(wechat, "GET", "/v3/certificates", key=merchant_key)
    certificates = _decrypted_certificates(response, factory.apiv3_key)
    assert set(certificates) == {factory.certificate_serial, new_serial}

    # [protocol: Which key signed it]: an answer follows the Wechatpay-Serial the client names, so a client that knows
    # only the old certificate can still verify; a client naming the new one gets the new one.
    sandbox.create_order("ORDER-1010", 100)
    old_answer = query(wechat, "ORDER-1010", merchant_key, headers={"Wechatpay-Serial": factory.certificate_serial})
    assert old_answer.headers["Wechatpay-Serial"] == factory.certificate_serial
    assert verified(old_answer, factory.key_store()) == factory.certificate_serial
    answer = query(wechat, "ORDER-1010", merchant_key, headers={"Wechatpay-Serial": new_serial})
    assert answer.headers["Wechatpay-Serial"] == new_serial
    with pytest.raises(VerificationFailed):
        verified(answer, factory.key_store())
    downloaded = [PlatformCertificate.from_pem(c.public_bytes(Encoding.PEM)) for c in certificates.values()]
    assert verified(answer, KeyStore({}, downloaded)) == new_serial


def test_a_public_key_only_merchant_has_no_certificates(
    make_sandbox: Callable[..., Sandbox], other_factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    with serve(make_sandbox(factory=other_factory).app) as wechat:
        response = call(wechat, "GET", "/v3/certificates", key=merchant_key)
    assert (response.status_code, response.json()["code"]) == (404, "RESOURCE_NOT_EXISTS")


# -- fault injection for the client's tests ----------------------------------------------------


def test_fail_next_answers_unsigned_errors_then_recovers(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1011", 100)
    sandbox.fail_next(2)
    sandbox.fail_next(1, status=429)

    answers = [query(wechat, "ORDER-1011", merchant_key) for _ in range(4)]

    assert [(r.status_code, r.json()["code"]) for r in answers[:3]] == [
        (500, "SYSTEM_ERROR"),
        (500, "SYSTEM_ERROR"),
        (429, "FREQUENCY_LIMITED"),
    ]
    assert all("Wechatpay-Signature" not in r.headers for r in answers[:3])
    assert answers[3].status_code == 200 and verified(answers[3], factory.key_store())
    assert sandbox.request_count("/v3/pay/transactions/out-trade-no/ORDER-1011") == 4
    assert [r.status for r in sandbox.requests] == [500, 500, 429, 200]


def test_probe_next_response_fails_verification_once(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1012", 100)
    sandbox.probe_next_response()
    probed = query(wechat, "ORDER-1012", merchant_key)
    assert probed.status_code == 200
    assert probed.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    with pytest.raises(VerificationFailed):
        verified(probed, factory.key_store())
    assert verified(query(wechat, "ORDER-1012", merchant_key), factory.key_store())


def test_tamper_next_response_changes_one_byte_after_signing(
    sandbox: Sandbox, wechat: httpx.Client, factory: NotificationFactory, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-1013", 100)
    sandbox.pay("ORDER-1013", notify=False)
    honest = query(wechat, "ORDER-1013", merchant_key).content
    sandbox.tamper_next_response()
    tampered = query(wechat, "ORDER-1013", merchant_key)
    assert len(tampered.content) == len(honest)
    assert sum(a != b for a, b in zip(tampered.content, honest, strict=True)) == 1
    json.loads(tampered.content)  # still JSON: only the signature can tell
    with pytest.raises(VerificationFailed):
        verified(tampered, factory.key_store())


# -- notification delivery ([protocol: Notifications; Signature probes; Retries and lost notifications]) -----


def test_a_failed_notification_is_retried_with_the_same_body_and_a_fresh_signature(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox(time_scale=100)  # first retry after 150 ms
    receiver = NotifyReceiver(answers=(500, 204))
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2001", 100)
        transaction_id = sandbox.pay("ORDER-2001")
        sandbox.wait_idle(5)

    assert len(receiver.received) == 2
    (first, body, at_first), (second, body_again, at_second) = receiver.received
    assert body == body_again
    assert first["wechatpay-nonce"] != second["wechatpay-nonce"]
    assert first["wechatpay-signature"] != second["wechatpay-signature"]
    assert at_second - at_first >= RETRY_SCHEDULE[0] / 100 - 0.01
    for headers, raw, _ in receiver.received:
        notification = verifier.verify(headers, raw)
        assert notification.event_type == "TRANSACTION.SUCCESS"
        assert notification.resource["transaction_id"] == transaction_id
        assert notification.resource["trade_state"] == "SUCCESS"
    assert [(d.attempt, d.status) for d in sandbox.deliveries] == [(0, 500), (1, 204)]
    assert {d.notification_id for d in sandbox.deliveries} == {json.loads(body)["id"]}
    assert [n.state for n in sandbox.notifications] == ["delivered"]


def test_the_envelope_and_the_payment_resource_are_d2s_byte_for_byte(vectors: dict[str, Any]) -> None:
    """[protocol: Derived vectors] D2: the factory's payment resource and envelope are the published bytes, so
    the published signature verifies over them; D3-D5 are wrapped the same way."""
    d2 = vectors["D2_transaction_success_notification"]
    factory = NotificationFactory(mchid="1230000109", apiv3_key=d2["apiv3_key"])
    resource = factory.transaction(
        "1217752501201407033233368018",
        100,
        transaction_id="4200000000002104083200000488",
        success_time="2018-06-08T10:34:56+08:00",
    )
    assert compact_json(resource).decode() == d2["plaintext"]
    body = factory.envelope(
        resource,
        notification_id="EV-2018022511223320873",
        create_time="2018-06-08T10:34:56+08:00",
        nonce="fdasflkja484",
    )
    assert body == d2["body"].encode()
    certificate = PlatformCertificate.from_pem(vectors["platform_certificate_pem"].encode())
    verifier = NotificationVerifier(KeyStore({}, [certificate]), d2["apiv3_key"].encode(), clock=lambda: d2["now"])
    assert verifier.verify(d2["headers"], body).resource == resource


def test_refund_notifications_carry_refund_status(
    sandbox: Sandbox, factory: NotificationFactory, receiving: Receiving
) -> None:
    receiver = NotifyReceiver()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2002", 100)
        sandbox.pay("ORDER-2002", notify=False)
        sandbox.refund("ORDER-2002", "R-2002-1", 40)
        sandbox.refund("ORDER-2002", "R-2002-2", 60, status="CLOSED")
        sandbox.wait_idle(5)

    notifications = sorted((verifier.verify(h, b) for h, b, _ in receiver.received), key=lambda n: n.event_type)
    assert [n.event_type for n in notifications] == ["REFUND.CLOSED", "REFUND.SUCCESS"]
    closed, succeeded = (n.resource for n in notifications)
    assert (succeeded["out_refund_no"], succeeded["refund_status"], succeeded["amount"]["refund"]) == (
        "R-2002-1",
        "SUCCESS",
        40,
    )
    assert "success_time" in succeeded and "success_time" not in closed
    assert closed["refund_status"] == "CLOSED"
    assert notifications[0].envelope["summary"] == "退款关闭"


def test_a_dropped_notification_never_arrives_but_is_logged(sandbox: Sandbox, receiving: Receiving) -> None:
    receiver = NotifyReceiver()
    with serve(sandbox.app) as control, receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2003", 100)
        sandbox.pay("ORDER-2003", drop=True)
        sandbox.wait_idle(5)
        log = control.get("/sandbox/deliveries").json()["deliveries"]
    assert receiver.received == []
    assert [(d["attempt"], d["dropped"], d["status"]) for d in log] == [(0, True, None)]


def test_a_probe_is_followed_by_a_correctly_signed_delivery(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox(probe_rate=1.0)
    receiver = NotifyReceiver(verifier=NotificationVerifier(factory.key_store(), factory.apiv3_key.encode()))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2004", 100)
        sandbox.pay("ORDER-2004")
        sandbox.wait_idle(5)

    probe, real = receiver.received
    assert probe[0]["wechatpay-signature"].startswith("WECHATPAY/SIGNTEST/")
    assert probe[1] == real[1]
    assert [(d.attempt, d.was_probe, d.status) for d in sandbox.deliveries] == [
        (0, True, 401),
        (0, False, 204),
    ]


def test_duplicates_deliver_the_same_notification_twice(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox(duplicate_rate=1.0)
    receiver = NotifyReceiver()
    verifier = NotificationVerifier(factory.key_store(), factory.apiv3_key.encode())
    with serve(sandbox.app), receiving(sandbox, receiver):
        for n in range(4):
            sandbox.create_order(f"ORDER-201{n}", 100)
            sandbox.pay(f"ORDER-201{n}")
        asyncio.run(sandbox.idle(5))  # from a coroutine in another event loop

    assert len(receiver.received) == 8
    by_id: dict[str, list[str]] = {}
    for headers, body, _ in receiver.received:
        by_id.setdefault(verifier.verify(headers, body).id, []).append(headers["wechatpay-signature"])
    assert len(by_id) == 4 and all(len(signatures) == 2 for signatures in by_id.values())
    assert sum(d.was_duplicate for d in sandbox.deliveries) == 4


def test_delivery_gives_up_after_fifteen_retries(make_sandbox: Callable[..., Sandbox], receiving: Receiving) -> None:
    sandbox = make_sandbox(time_scale=1_000_000)
    receiver = NotifyReceiver(answers=(503,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2020", 100)
        sandbox.pay("ORDER-2020")
        sandbox.wait_idle(5)

    assert len(receiver.received) == len(RETRY_SCHEDULE) + 1 == 16
    assert [d.attempt for d in sandbox.deliveries] == list(range(16))
    assert [n.state for n in sandbox.notifications] == ["failed"]


def test_an_answer_slower_than_the_timeout_is_retried(
    make_sandbox: Callable[..., Sandbox], receiving: Receiving
) -> None:
    sandbox = make_sandbox(time_scale=1_000_000, answer_timeout=0.5)  # WeChat's is 5 s: shortened for the test
    receiver = NotifyReceiver(delays=(0.7,))
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2021", 100)
        sandbox.pay("ORDER-2021")
        sandbox.wait_idle(5)
    assert [(d.status, d.error) for d in sandbox.deliveries] == [(None, "timeout"), (204, None)]


def test_certificate_signing_mode_signs_notifications_with_the_certificate(
    make_sandbox: Callable[..., Sandbox], factory: NotificationFactory, receiving: Receiving
) -> None:
    sandbox = make_sandbox(signing="certificate")
    receiver = NotifyReceiver()
    with serve(sandbox.app), receiving(sandbox, receiver):
        sandbox.create_order("ORDER-2022", 100)
        sandbox.pay("ORDER-2022")
        sandbox.wait_idle(5)
    ((headers, body, _),) = receiver.received
    assert headers["wechatpay-serial"] == factory.certificate_serial
    assert NotificationVerifier(factory.key_store(), factory.apiv3_key.encode()).verify(headers, body)


def test_notifications_wait_for_the_server_and_wait_idle_times_out(
    make_sandbox: Callable[..., Sandbox],
    receiving: Receiving,
) -> None:
    sandbox = make_sandbox(time_scale=1_000_000)
    sandbox.notify_url = "http://127.0.0.1:9/notify"
    sandbox.create_order("ORDER-2023", 100)
    sandbox.pay("ORDER-2023")
    with pytest.raises(TimeoutError):
        sandbox.wait_idle(0.05)
    receiver = NotifyReceiver()
    with receiving(sandbox, receiver) as url:
        sandbox.create_order("ORDER-2024", 100, notify_url=url)
        sandbox.pay("ORDER-2024")
        with serve(sandbox.app):
            sandbox.wait_idle(5)
    assert len(receiver.received) == 1
    assert [n.state for n in sandbox.notifications] == ["failed", "delivered"]


def test_a_seeded_sandbox_makes_the_same_decisions(make_sandbox: Callable[..., Sandbox]) -> None:
    def run() -> tuple[list[str], list[bool], list[str]]:
        sandbox = make_sandbox(seed=11, drop_rate=0.5, notify_url="http://127.0.0.1:9/notify")
        ids = []
        for n in range(8):
            sandbox.create_order(f"ORDER-300{n}", 100)
            ids.append(sandbox.pay(f"ORDER-300{n}"))
        notifications = sandbox.notifications
        return ids, [n.dropped for n in notifications], [n.id for n in notifications]

    first, second = run(), run()
    assert first == second
    assert 0 < sum(first[1]) < 8


def test_the_sandbox_can_run_inside_an_event_loop_of_ours(sandbox: Sandbox, receiving: Receiving) -> None:
    receiver = NotifyReceiver(answers=(500, 204))

    async def main() -> None:
        async with sandbox.app.router.lifespan_context(sandbox.app):
            sandbox.create_order("ORDER-2030", 100)
            sandbox.pay("ORDER-2030")
            await sandbox.idle(5)
            with pytest.raises(RuntimeError):
                sandbox.wait_idle(1)  # would block the loop that delivers

    with receiving(sandbox, receiver):
        asyncio.run(main())
    assert [d.status for d in sandbox.deliveries] == [500, 204]


# -- the control endpoints and the ledger's configuration ----------------------------------------


def test_control_endpoints_need_no_authorization(sandbox: Sandbox, wechat: httpx.Client, receiving: Receiving) -> None:
    receiver = NotifyReceiver()
    with receiving(sandbox, receiver):
        created = wechat.post("/sandbox/orders", json={"out_trade_no": "ORDER-4001", "amount_total": 250})
        assert (created.status_code, created.json()["trade_state"]) == (201, "NOTPAY")
        paid = wechat.post("/sandbox/orders/ORDER-4001/pay", json={"drop": False})
        refunded = wechat.post(
            "/sandbox/orders/ORDER-4001/refunds",
            json={"out_refund_no": "R-4001", "amount": 50, "status": "SUCCESS", "drop": True},
        )
        sandbox.wait_idle(5)
        shown = wechat.get("/sandbox/orders/ORDER-4001").json()
        log = wechat.get("/sandbox/deliveries").json()["deliveries"]
    assert paid.status_code == 200 and len(paid.json()["transaction_id"]) == 28
    assert refunded.status_code == 200
    assert shown["order"]["trade_state"] == "REFUND"
    assert shown["refunds"][0]["status"] == "SUCCESS"
    assert sorted((d["event_type"], d["dropped"], d["status"]) for d in log) == [
        ("REFUND.SUCCESS", True, None),
        ("TRANSACTION.SUCCESS", False, 204),
    ]
    assert len(receiver.received) == 1
    bad = wechat.post("/sandbox/orders/ORDER-4001/refunds", json={"out_refund_no": "R-4002", "amount": 500})
    assert (bad.status_code, bad.json()["code"]) == (400, "NOT_ENOUGH")
    assert sandbox.requests == []  # control calls are not WeChat API requests


def test_faults_can_be_injected_over_http(
    sandbox: Sandbox, wechat: httpx.Client, merchant_key: rsa.RSAPrivateKey
) -> None:
    sandbox.create_order("ORDER-4002", 100)
    set_faults = {"fail_next": 1, "status": 503, "code": "SYSTEM_ERROR", "probe_next": 1}
    assert wechat.post("/sandbox/faults", json=set_faults).status_code == 200
    failed, probed, honest = (query(wechat, "ORDER-4002", merchant_key) for _ in range(3))
    assert (failed.status_code, failed.json()["code"]) == (503, "SYSTEM_ERROR")
    assert probed.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    assert not honest.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    assert wechat.post("/sandbox/faults", json={"fail_next": 1, "status": 200}).status_code == 400


def test_written_ledger_configuration_loads_and_its_keys_work(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sandbox = make_sandbox()
    sandbox.rotate_certificate()
    with serve(sandbox.app) as wechat:
        env = sandbox.write_ledger_config(tmp_path / "sandbox", str(wechat.base_url))
        settings = Settings.load({**env, "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.sqlite3'}"})
        merchant = settings.default_merchant
        assert merchant is not None and merchant.merchant_private_key is not None
        assert merchant.api_base_url == str(wechat.base_url).rstrip("/")
        assert len(merchant.keys.certificates) == 2

        sandbox.create_order("ORDER-5001", 100)
        response = query(wechat, "ORDER-5001", merchant.merchant_private_key)
        assert response.status_code == 200
        assert verified(response, merchant.keys) == merchant.public_key_id

    lines = (tmp_path / "sandbox" / "env").read_text().splitlines()
    assert dict(line.split("=", 1) for line in lines) == env
    assert {
        "WECHATPAY_MCHID",
        "WECHATPAY_APPID",
        "WECHATPAY_APIV3_KEY",
        "WECHATPAY_PUBLIC_KEY_ID",
        "WECHATPAY_PUBLIC_KEY_FILE",
        "WECHATPAY_PLATFORM_CERT_DIR",
        "WECHATPAY_MERCHANT_SERIAL_NO",
        "WECHATPAY_MERCHANT_PRIVATE_KEY_FILE",
        "WECHATPAY_API_BASE_URL",
        "WECHATPAY_V2_KEY",
    } == env.keys()
    assert len(env["WECHATPAY_V2_KEY"]) == 32 and env["WECHATPAY_V2_KEY"] == sandbox.v2_key


def test_the_ledger_records_a_payment_delivered_with_probes_and_duplicates(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    from api.app import create_app
    from ledger.application import build_ledger

    sandbox = make_sandbox(probe_rate=0.5, duplicate_rate=0.5, seed=3)
    database_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with serve(sandbox.app) as wechat:
        env = sandbox.write_ledger_config(tmp_path / "sandbox", str(wechat.base_url))
        settings = Settings.load({**env, "LEDGER_DATABASE_URL": database_url})
        ledger = build_ledger(database_url)
        try:
            with running(create_app(settings, ledger=ledger)) as ledger_url:
                sandbox.notify_url = f"{ledger_url}/wechatpay/notify"
                for n in range(3):
                    sandbox.create_order(f"ORDER-600{n}", 100)
                    sandbox.pay(f"ORDER-600{n}")
                sandbox.wait_idle(10)
            histories = [[e["type"] for e in ledger.order_history(MCHID, f"ORDER-600{n}")] for n in range(3)]
        finally:
            ledger.close()

    deliveries = sandbox.deliveries
    assert any(d.was_probe for d in deliveries) and any(d.was_duplicate for d in deliveries)
    assert all(d.status is not None and d.status >= 400 for d in deliveries if d.was_probe)
    assert all(d.status in (200, 204) for d in deliveries if not d.was_probe)
    assert all(history.count("PaymentSucceeded") == 1 for history in histories)
