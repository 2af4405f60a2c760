"""The operator pages under /ui: the overview, search, an order's timeline, re-query WeChat Pay; server-rendered.

An order is named by `mchid`, `sub_mchid` (a service provider's, required for its orders as in the
JSON API) and its number; every link to an order carries them. A sub-order of a combined payment
links to the other sub-orders registered with the same `combine_out_trade_no` (from the read model).

Every page is behind `UISessions` (the admin token or a login session); without either a
request gets the login form and a 401, never order data. Payload fields are untrusted text:
the templates autoescape everything. The daily bills pages (api/ui/bills.py) are served through
the same rendering and guard, and so are the unrouted notifications (api/ui/notifications.py), the
overview at /ui/ (api/ui/overview.py) and the anomalies (api/ui/anomalies.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import anyio
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from api.bills import bill_figures
from api.errors import answer_for
from api.notify import read_body
from api.params import OUT_TRADE_NO, mchid_param, sub_mchid_param, sub_mchid_value
from api.responses import to_jsonable
from api.state import app_state
from api.ui.activity import ActivityPages
from api.ui.anomalies import AnomalyPages
from api.ui.auth import COOKIE, SESSION_SECONDS, Access, UISessions
from api.ui.bills import BillPages, bill_url
from api.ui.formatting import beijing, yuan
from api.ui.notifications import NotificationPages
from api.ui.overview import OverviewPages
from ledger.errors import (
    BodyTooLarge,
    InvalidRequest,
    LedgerError,
    OrderNotFound,
    RequestConflict,
    RequestRefused,
    WeChatPayError,
)
from ledger.identity import OrderKey
from ledger.operators import Role
from ledger.settings import Settings
from projections.read_model.runner import orders_head
from projections.read_model.view import OrdersView
from projections.timeline import Entry, Timeline, attempt_text, duration, iso, load_timeline

__all__ = ["ui_mount"]

log = logging.getLogger("api.ui")

_HERE = Path(__file__).parent
MAX_FORM_BYTES = 4096
# Only our own stylesheet and forms; nothing framed, nothing fetched from elsewhere.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    # Not "no-referrer": with it browsers send "Origin: null" on our own POSTs, which the CSRF check refuses.
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
# A page's handler, called once the request is let in (`OperatorPages.guarded`).
Page = Callable[[Request, Access], Awaitable[Response]]
# Shown in a "raw" fold of their own: what an auditor re-verifies, not what they read first.
_RAW_FIELDS = ("raw_body", "signature_headers", "response_headers")


def _pretty(value: Any) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, indent=2, sort_keys=True)


def _who(mchid: str, sub_mchid: str | None) -> dict[str, str]:
    return {"mchid": mchid, "sub_mchid": sub_mchid} if sub_mchid else {"mchid": mchid}


def _order_url(out_trade_no: str, mchid: str, sub_mchid: str | None = None, **params: str) -> str:
    return f"/ui/orders/{quote(out_trade_no, safe='')}?{urlencode({**_who(mchid, sub_mchid), **params})}"


def _action_url(action: str, out_trade_no: str, mchid: str, sub_mchid: str | None = None) -> str:
    """Where the order page's `action` form posts: query, refund or close."""
    return f"/ui/orders/{quote(out_trade_no, safe='')}/{action}?{urlencode(_who(mchid, sub_mchid))}"


def _query_url(out_trade_no: str, mchid: str, sub_mchid: str | None = None) -> str:
    return _action_url("query", out_trade_no, mchid, sub_mchid)


def _usable(view: OrdersView | None) -> OrdersView | None:
    """The orders view, unless there is none or it awaits a rebuild (an earlier version's layout)."""
    return view if view is not None and not view.outdated else None


def _next_path(value: str) -> str:
    """Where to go after login: one of our own pages only (no open redirect)."""
    if value.startswith("/ui/") and not value.startswith(("//", "/\\")) and "\\" not in value:
        return value
    return "/ui/"


async def _form(request: Request) -> dict[str, str]:
    # Refused on its Content-Length or while it streams, never read whole first: the login
    # form is open to anyone, in the process that answers WeChat.
    try:
        body = await read_body(request, MAX_FORM_BYTES)
    except BodyTooLarge:
        raise InvalidRequest("form too large") from None
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("bad form") from None
    return {k: v[0] for k, v in fields.items()}


class OperatorPages:
    def __init__(self, sessions: UISessions) -> None:
        self.sessions = sessions
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters.update(pretty=_pretty, iso=iso, duration=duration, beijing=beijing, yuan=yuan)
        self.templates.globals.update(
            attempt_text=attempt_text,
            order_url=_order_url,
            query_url=_query_url,
            action_url=_action_url,
            bill_url=bill_url,
            payload=_payload,
        )

    # -- rendering ------------------------------------------------------------------------

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        access: Access | None = context.pop("access", None)
        html = self.templates.get_template(name).render(
            access=access,
            csrf=self.sessions.csrf_token(access) if access is not None else "",
            open_mode=access is not None and access.via == "open",
            operator=access.operator if access is not None and access.via != "open" else None,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def failure(self, request: Request, access: Access, exc: LedgerError, message: str) -> HTMLResponse:
        """The page for a failure: the status the JSON API would answer, the operator's own words."""
        return self.page(request, "message.html", answer_for(exc).status, access=access, message=message)

    def login_form(self, request: Request, *, error: str | None = None, next_path: str | None = None) -> HTMLResponse:
        wanted = next_path or request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return self.page(request, "login.html", 401, error=error, next_path=_next_path(wanted))

    def guarded(self, page: Page, needs: Role = Role.VIEWER) -> Callable[[Request], Awaitable[Response]]:
        """The endpoint of `page`: called with how the request got in, or the login form (401) instead;
        a page (or action) that `needs` more than the operator's role answers 403 (and shows no button)."""

        async def endpoint(request: Request) -> Response:
            access = self.sessions.access(request)
            if access is None:
                return self.login_form(request)
            if not access.role.allows(needs):
                log.warning("operator %s (%s) refused %s", access.operator, access.role, request.url.path)
                message = f"Your role ({access.role}) may not do this."
                return self.page(request, "message.html", 403, access=access, message=message)
            return await page(request, access)

        return endpoint

    async def form(self, request: Request, access: Access) -> dict[str, str] | HTMLResponse:
        """A POSTed form (small, read as it streams: see `_form`), or the page (403) to answer when it
        does not carry the session's CSRF token."""
        form = await _form(request)
        if not self.sessions.csrf_ok(request, access, form.get("csrf", "")):
            return self.page(request, "message.html", 403, access=access, message="This form has expired.")
        return form

    def merchant(self, request: Request, access: Access) -> str | HTMLResponse:
        """The merchant `?mchid=` names (see `mchid_param`), or the page to answer when it names none."""
        try:
            return mchid_param(app_state(request), request.query_params.get("mchid"))
        except InvalidRequest as exc:
            return self.failure(request, access, exc, "Unknown or missing mchid.")

    def _order_named(self, request: Request, access: Access) -> tuple[str, str, str | None] | HTMLResponse:
        """The order a page is about (out_trade_no, mchid, sub_mchid), or the page to answer instead."""
        mchid = self.merchant(request, access)
        if isinstance(mchid, Response):
            return mchid
        try:
            sub_mchid = sub_mchid_param(app_state(request), mchid, request.query_params.get("sub_mchid"))
        except InvalidRequest as exc:
            return self.failure(request, access, exc, f"{exc}.")
        return request.path_params["out_trade_no"], mchid, sub_mchid

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=_HEADERS)

    # -- login ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """An operator's name and password (or the admin token): a session cookie, or the form again.
        Failed logins are limited per client address and per account; the answer is then 429."""
        sessions = self.sessions
        if not sessions.required(request):
            return RedirectResponse("/ui/", status_code=303)
        if request.method == "GET":
            return self.login_form(request, next_path=request.query_params.get("next", "/ui/"))
        address = request.client.host if request.client is not None else "-"
        form = await _form(request)
        target = _next_path(form.get("next", "/ui/"))
        wait = sessions.limiter.wait(address)
        if wait > 0:
            log.warning("operator login refused: too many failures from this address")
            return self._too_many(request, target, wait)
        if "token" in form:
            if not sessions.token_matches(form["token"]):
                sessions.limiter.failed(address)
                log.warning("operator login refused: not the admin token")
                return self.login_form(request, error="That token is not right.", next_path=target)
            log.info("operator logged in with the admin token")
            return self._logged_in(target, sessions.issue())
        name, password = form.get("name", "").strip().lower(), form.get("password", "")
        operators = app_state(request).services.operators
        result = await anyio.to_thread.run_sync(lambda: operators.authenticate(name, password))
        if result.operator is None:
            sessions.limiter.failed(address)
            log.warning("operator login refused for %r", name[:32])
            if result.locked_for > 0:
                return self._too_many(request, target, result.locked_for)
            return self.login_form(request, error="That name and password do not match.", next_path=target)
        log.info("operator %s (%s) logged in", result.operator.name, result.operator.role)
        return self._logged_in(target, sessions.issue_for(request, result.operator))

    def _too_many(self, request: Request, target: str, wait: float) -> HTMLResponse:
        seconds = max(1, math.ceil(wait))
        response = self.login_form(
            request, error=f"Too many failed logins: try again in {seconds} s.", next_path=target
        )
        response.status_code = 429
        response.headers["Retry-After"] = str(seconds)
        return response

    def _logged_in(self, target: str, session: str) -> Response:
        response = RedirectResponse(target, status_code=303, headers=_HEADERS)
        response.set_cookie(
            COOKIE, session, max_age=SESSION_SECONDS, path="/", secure=True, httponly=True, samesite="strict"
        )
        return response

    async def logout(self, request: Request, access: Access) -> Response:
        form = await self.form(request, access)
        if isinstance(form, Response):
            return form
        response = RedirectResponse("/ui/login", status_code=303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response

    # -- pages ----------------------------------------------------------------------------

    async def stylesheet(self, request: Request) -> Response:
        css = (_HERE / "static" / "ui.css").read_bytes()
        return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    async def search(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        q = request.query_params.get("q", "").strip()[:64]
        given = request.query_params.get("sub_mchid", "").strip()[:32]
        context: dict[str, Any] = {"q": q, "sub_mchid": given, "behind": False}
        if not q:
            return self.page(request, "search.html", access=access, matches=None, **context)
        try:
            sub = sub_mchid_value(given)
        except InvalidRequest:
            return self.page(request, "search.html", 404, access=access, matches=[], **context)

        def find() -> tuple[list[tuple[str, str | None, str]], bool]:
            """(mchid, sub_mchid, out_trade_no) of each order found, and whether the view is behind."""
            found: dict[tuple[str, str | None, str], None] = {}
            if OUT_TRADE_NO.fullmatch(q):
                # The log first (read-your-writes): each merchant's own order, or a provider's of `sub`.
                for mchid, merchant in state.merchants.items():
                    partner = merchant.settings.partner
                    if partner and sub is None:
                        continue  # which sub-merchant's? the view knows them all
                    try:
                        state.ledger.get_order(mchid, q, sub if partner else None)
                    except OrderNotFound:
                        continue
                    found[(mchid, sub if partner else None, q)] = None
            view = _usable(state.orders_view)
            if view is None:
                return list(found), False
            for row in [*view.by_out_trade_no(q), *view.by_transaction_id(q)]:
                if sub is None or row["sub_mchid"] == sub:
                    found[(row["mchid"], row["sub_mchid"], row["out_trade_no"])] = None
            return list(found), view.position() < orders_head(state.ledger)

        matches, behind = await anyio.to_thread.run_sync(find, limiter=state.limiter)
        if len(matches) == 1:
            mchid, sub_mchid, no = matches[0]
            return self.redirect(_order_url(no, mchid, sub_mchid))
        status = 200 if matches else 404
        context["behind"] = behind
        return self.page(request, "search.html", status, access=access, matches=matches, **context)

    async def order(self, request: Request, access: Access, *, error: str | None = None, status: int = 200) -> Response:
        state = app_state(request)
        named = self._order_named(request, access)
        if isinstance(named, Response):
            return named
        no, mchid, sub_mchid = named
        services = state.services

        def load() -> tuple[Timeline, dict[str, str | None], list[dict[str, Any]]]:
            timeline = load_timeline(services.ledger, lambda: services.outbox, mchid, no, sub_mchid)
            order = timeline.order
            siblings: list[dict[str, Any]] = []
            view = _usable(state.orders_view)
            if order.get("combine_out_trade_no") and view is not None:
                siblings = [
                    row
                    for row in view.combined(order["combine_out_trade_no"])
                    if (row["mchid"], row["sub_mchid"], row["out_trade_no"]) != (mchid, sub_mchid, no)
                ]
            return timeline, bill_figures(services.bill_lines, mchid, order), siblings

        try:
            timeline, billed, siblings = await anyio.to_thread.run_sync(load, limiter=state.limiter)
        except OrderNotFound as exc:
            return self.failure(request, access, exc, "No such order.")
        queried = request.query_params.get("queried", "")
        return self.page(
            request,
            "order.html",
            status,
            access=access,
            t=timeline,
            billed=billed,
            mchid=mchid,
            siblings=siblings,
            error=error,
            queried=int(queried) if queried.isdigit() else None,
            asked=request.query_params.get("asked", "")[:100],
        )

    async def _order_form(
        self, request: Request, access: Access
    ) -> tuple[dict[str, str], tuple[str, str, str | None]] | Response:
        """A form POSTed to one order's page (see `form`), and the order (out_trade_no, mchid, sub_mchid);
        or the page to answer instead."""
        form = await self.form(request, access)
        if isinstance(form, Response):
            return form
        named = self._order_named(request, access)
        if isinstance(named, Response):
            return named
        if not OUT_TRADE_NO.fullmatch(named[0]):
            return self.page(request, "message.html", 400, access=access, message="Not an out_trade_no.")
        return form, named

    async def requery(self, request: Request, access: Access) -> Response:
        """Ask WeChat Pay now; the answer is recorded as a StatusQueried event like any query."""
        state = app_state(request)
        posted = await self._order_form(request, access)
        if isinstance(posted, Response):
            return posted
        _, (no, mchid, sub_mchid) = posted
        try:
            order = await anyio.to_thread.run_sync(
                lambda: state.services.actions.requery(OrderKey(mchid, no, sub_mchid), operator=access.operator),
                limiter=state.limiter,
            )
        except WeChatPayError as exc:
            answer = answer_for(exc)
            error = f"WeChat Pay query failed ({answer.message(exc)})."
            return await self.order(request, access, error=error, status=answer.status)
        answer = order.operator_actions[-1]["detail"][
            "answer_version"
        ]  # the StatusQueried, before the note of who asked
        return self.redirect(_order_url(no, mchid, sub_mchid, queried=str(answer)))

    # -- refunds and closes, asked from the order page (a confirmation first) ---------------------

    async def refund(self, request: Request, access: Access) -> Response:
        return await self._ask(request, access, "refund")

    async def close(self, request: Request, access: Access) -> Response:
        return await self._ask(request, access, "close")

    async def _ask(self, request: Request, access: Access, action: str) -> Response:
        """The order page's refund or close: the first POST shows what will be asked (nothing is sent),
        the confirmed one asks it through the ledger (`ledger.refunding`), like the API and the CLI."""
        state = app_state(request)
        posted = await self._order_form(request, access)
        if isinstance(posted, Response):
            return posted
        form, (no, mchid, sub_mchid) = posted
        key = OrderKey(mchid, no, sub_mchid)
        fields = {name: form.get(name, "").strip() for name in ("out_refund_no", "amount", "reason")}
        if action == "refund" and not (fields["amount"].isascii() and fields["amount"].isdigit()):
            return await self.order(request, access, error="The amount must be a whole number of fen.", status=400)
        if form.get("confirm") != "yes":
            order = await anyio.to_thread.run_sync(
                lambda: state.services.ledger.get_order_by_id(key.stream_id, no), limiter=state.limiter
            )
            return self.page(
                request, "confirm.html", access=access, action=action, o=order.summary(), mchid=mchid, fields=fields
            )
        requester = state.services.requester
        try:
            if action == "refund":
                asked = await anyio.to_thread.run_sync(
                    lambda: requester.refund(
                        key,
                        out_refund_no=fields["out_refund_no"],
                        amount=int(fields["amount"]),
                        reason=fields["reason"],
                        requested_by=access.operator,
                    ),
                    limiter=state.limiter,
                )
                done = f"refund {fields['out_refund_no']}: {asked.outcome}"
            else:
                await anyio.to_thread.run_sync(
                    lambda: requester.close(key, requested_by=access.operator), limiter=state.limiter
                )
                done = "closed"
        except (InvalidRequest, RequestRefused, RequestConflict) as exc:
            return await self.order(request, access, error=f"{exc}.", status=answer_for(exc).status)
        except WeChatPayError as exc:
            answer = answer_for(exc)
            return await self.order(request, access, error=f"WeChat Pay: {answer.message(exc)}.", status=answer.status)
        log.info("operator asked %s of %s mchid=%s sub_mchid=%s: %s", action, no, mchid, sub_mchid, done)
        return self.redirect(_order_url(no, mchid, sub_mchid, asked=done))


def _payload(entry: Entry) -> dict[str, Any]:
    """The decoded payload: everything but the raw evidence."""
    return {k: v for k, v in entry.data.items() if k not in _RAW_FIELDS}


def ui_mount(settings: Settings, *, clock: Callable[[], float] = time.time) -> Mount:
    """The /ui routes; the admin token (if any) comes from `settings`, "now" from `clock`."""
    token = settings.admin_token.value if settings.admin_token is not None else None
    pages = OperatorPages(UISessions(token, operators=lambda request: app_state(request).services.operators))
    return Mount(
        "/ui",
        routes=[
            *OverviewPages(pages, clock).routes(),
            Route("/search", pages.guarded(pages.search), methods=["GET"]),
            Route("/login", pages.login, methods=["GET", "POST"]),
            Route("/logout", pages.guarded(pages.logout), methods=["POST"]),
            Route("/static/ui.css", pages.stylesheet, methods=["GET"]),
            Route("/orders/{out_trade_no}", pages.guarded(pages.order), methods=["GET"]),
            Route("/orders/{out_trade_no}/query", pages.guarded(pages.requery, Role.OPERATOR), methods=["POST"]),
            Route("/orders/{out_trade_no}/refund", pages.guarded(pages.refund, Role.OPERATOR), methods=["POST"]),
            Route("/orders/{out_trade_no}/close", pages.guarded(pages.close, Role.OPERATOR), methods=["POST"]),
            *BillPages(pages).routes(),
            *NotificationPages(pages).routes(),
            *ActivityPages(pages).routes(),
            *AnomalyPages(pages).routes(),
        ],
    )
