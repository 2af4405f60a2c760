"""The HTTP service: `create_app(settings)` (app.py) and one module per endpoint or concern.

    bootstrap.py   the composition root: every long-lived object of every process
    app.py         create_app: routes, lifespan, middleware
    notify.py      POST /wechatpay/notify: raw bytes in, 204 only after the commit
    orders.py      registration, state, history, a status query to WeChat Pay
    params.py      request values both the JSON API and the pages accept
    errors.py      the one table: exception → status, code, message, notify outcome
    auth.py        the admin token (ui/auth.py is the operator pages' login)
    state.py       what the app holds between requests (`app_state(request)`)
    metrics.py     GET /metrics;  openapi.py: GET /openapi.json;  responses.py: the JSON shapes
    request_id.py  X-Request-Id on every answer and log line
    ui/            the operator pages under /ui

It imports `ledger` and `projections`, never `cli`.
"""
