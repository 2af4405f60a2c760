"""The ledger's core: the domain, the application, storage and the WeChat Pay protocol.

    domain.py        PaymentOrder and NotificationInbox: evidence in, decisions out, no I/O;
                     the one list of event kinds (EVIDENCE_EVENTS, DECISION_EVENTS, AnomalyKind)
    hashchain.py     every event hash-chained to the one before it in its stream
    application.py   Ledger: commands and queries on the event store
    groupcommit.py   concurrent notifications in one read and one transaction
    status_query.py  ask WeChat Pay about an order and record the answer as evidence
    settings.py      Settings, read once; errors.py: the one exception tree; logs.py
    store/           the only package that knows SQL and the database drivers
    audit/           payledger verify: chains, signatures and decisions re-checked
    wechatpay/       the protocol (signatures, decryption, keys, the client); sandbox/ is the fake

It imports nothing of `projections`, `api` or `cli` (tests/test_layers.py).
"""
