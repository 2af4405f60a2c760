"""`payledger`, the command line: thin commands that parse, build through `bootstrap()`, call and print.

It sits on top with the HTTP app: it may import `ledger`, `projections` and `api`; nothing
imports it.
"""
