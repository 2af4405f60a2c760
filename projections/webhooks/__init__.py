"""Outbound notifications to the merchant's business systems: the outbox, fed from the log.

`projection` turns decision events into outbox messages (one per endpoint, stable ids);
`dispatcher` delivers them with retries and dead letters; `signing` signs each request
(Standard Webhooks); `stats` reads what metrics need. The outbox itself (`outbox.Outbox`) is
four tables (`schema`) holding values (`records`), used in three parts: the endpoint registry
with its operator log (`endpoints`), the message queue as operators see it (`messages`), and
the dispatchers' lease protocol (`leases`).
"""
