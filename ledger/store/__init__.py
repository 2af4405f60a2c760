"""How events and the project's own tables are stored: the only package that knows SQL.

`backends` turns `LEDGER_DATABASE_URL` into the library's persistence environment; `postgres`
and `sqlite` are the event-table recorders; `transcoder` and `cipher` are what every stored
event passes through; `reencrypt` rewrites stored states under a new key.
"""
