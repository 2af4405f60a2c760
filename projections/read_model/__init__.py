"""The orders read model: one row per order, fed from the log, rebuilt beside the live one.

`view` holds the table and the projection; `runner` follows the log under a lock; `rebuild`
builds a new version in bulk and switches (blue/green); `live` records which version serves.
"""
