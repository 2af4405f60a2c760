"""How events and the project's own tables are stored: the only package that knows SQL.

`backends` turns `LEDGER_DATABASE_URL` into the library's persistence environment; `postgres`
and `sqlite` are the event-table recorders, and `eventlog` the reads they add to the library's
(many streams at once, bulk pages, counts over a range); `views` is what a projection's view
is built on (the library's tracking recorders, typed); `sql` is `Database`, for the project's
own tables; `transcoder` and `cipher` are what every stored event passes through; `reencrypt`
rewrites stored states under a new key. Code outside catches `sql.STORE_ERRORS`, never a
driver's exception by name.
"""
