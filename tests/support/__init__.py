"""What the tests share, in one place; test modules import from here and never from each other.

    constants    MCHID, APPID, POSTGRES_URL, VECTORS_PATH, ROOT
    builders     domain values by hand: evidence, a status-query answer, replay
    fakes        FakeClock, FakeWeChatPay, FakeWeChat, Receiver (a webhook endpoint)
    servers      an app under uvicorn on loopback, the ledger's app with a client, a TCP proxy to cut
    sandbox_ledger  the sandbox as WeChat Pay and the ledger's app, each knowing the other
    inprocess    the app in-process, requests as raw ASGI scopes
    cli          `payledger` as a subprocess with a clean environment
    orders       a ledger filled with many orders (read model, rebuild)
    audit        a ledger holding every kind of evidence (verify, re-derivation)
    audit_world  one realistic order through the real service, with its webhook deliveries
    projectors   run a projection until it has caught up
    tamper       edit the event table behind the ledger's back
    webhooks     a webhook receiver's verifier from the specification; a decision put in the outbox
    deploy       reading deploy/nginx.conf
    threads      work in many threads let go at the same moment

Fixtures (keys, stores, the vectors, a served Receiver) are in tests/conftest.py.
"""

__all__: list[str] = []
