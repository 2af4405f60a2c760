"""`payledger sandbox`: a local fake WeChat Pay speaking the real protocol byte for byte.

It has keys of its own (WeChat's public key and platform certificates, the merchant's API key pair
it verifies requests with, and an APIv2 key), holds orders of a direct merchant or of a service
provider's sub-merchants, combined orders among them, serves the query, refund, close and certificate
APIs and daily bills, and delivers signed, encrypted notifications (APIv3, APIv2 XML, and other types
such as complaints) on WeChat's retry schedule, with probes, duplicates and drops.
`write_ledger_config` writes the settings that point a ledger at it.

    server.py            Sandbox: the state, the Python API, the app, the ledger's configuration
    orders.py            orders, combined orders and refunds, by sub-merchant for a service provider
    views.py             the JSON WeChat answers and notifies about them
    resources.py         those JSON shapes, keys in WeChat's order (payment, refund, combined, others)
    legacy.py            APIv2 XML notifications: signed payments, refunds with an encrypted req_info
    api.py               WeChat's endpoints: Authorization check, response signing, faults
    api_partner.py       the service-provider and combined-payment endpoints
    refunds.py           refund creation: idempotent by out_refund_no, faults, every request as received
    bills.py             daily bills of its orders: trade and fund-flow files, download tokens, bill faults
    keys.py              which key signs: public key or platform certificates, rotation
    notices.py           the notifications it sends, built and scheduled
    delivery.py          notification delivery and the delivery log
    control.py           the sandbox's own /sandbox/ endpoints
    signer.py            WeChat's signing side: signed, encrypted notifications (tests, --dev)

Citations in brackets: "protocol:" names sections of docs/wechatpay-protocol.md, "next:" sections of the
reference for service providers, combined payments and other notification types
(`../shared/wechatpay-protocol-next.md`: "Service-provider mode" and its partner payment and refund
notifications and queries, "Combined payments" with its notification, query and close and the refunds
of sub-orders, "Other notification types"), which the project's notes do not cover yet.

Imported only by the command line (`payledger sandbox`, `demo`, `serve --dev`), the tests and
the benches: nothing on the production path depends on it.
"""
