"""`payledger sandbox`: a local fake WeChat Pay speaking the real APIv3 protocol byte for byte.

It has keys of its own (WeChat's public key and platform certificates, and the merchant's API
key pair it verifies requests with), holds orders, serves the query, close and certificate
APIs and daily bills, and delivers signed, encrypted notifications on WeChat's retry schedule, with probes,
duplicates and drops. `write_ledger_config` writes the settings that point a ledger at it.

    server.py            Sandbox: the state, the Python API, the app, the ledger's configuration
    orders.py            orders and refunds, and the JSON WeChat answers about them
    api.py               WeChat's endpoints: Authorization check, response signing, faults
    bills.py             daily bills of its orders: trade and fund-flow files, download tokens, bill faults
    keys.py              which key signs: public key or platform certificates, rotation
    delivery.py          notification delivery and the delivery log
    control.py           the sandbox's own /sandbox/ endpoints
    signer.py            WeChat's signing side: signed, encrypted notifications (tests, --dev)

Imported only by the command line (`payledger sandbox`, `demo`, `serve --dev`), the tests and
the benches: nothing on the production path depends on it.
"""
