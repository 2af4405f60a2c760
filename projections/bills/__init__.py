"""Daily bills: WeChat's statement of a Beijing day fetched, kept, matched against the ledger.

`reports` keeps each day's last report (and the fee of every matched bill line, so the read
side can show net amounts); `facts` answers the matcher from the orders read model; `service`
runs one reconciliation (fetch what is not kept, match, record each difference as an event).
"""
