"""What is derived from the event log: the read model and outbound notifications.

Nothing here yet: the ledger answers order state by replaying its stream. Projections come
with the read model and the outbound webhooks.
"""
