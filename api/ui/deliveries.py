"""The outbound deliveries pages under /ui: messages (dead letters and failing first) and endpoints.

`GET /ui/deliveries` lists the outbox's messages with every attempt (status and latency), dead
ones first, then failing, waiting and the latest delivered; `?state=` and `?endpoint=` narrow it.
An operator queues a message again (`POST /ui/deliveries/resend`) or every dead and failing one
created in a window (`POST /ui/deliveries/recover`: Asia/Shanghai times, an endpoint or all).
`GET /ui/endpoints` shows each endpoint (its URL's password masked), whether it is enabled or
failing, its backlog and its last hour's attempts; an admin disables or enables it
(`POST /ui/endpoints/{id}/disable|enable`). Every action goes through `Services.actions`, which
records it under the operator's name; a viewer sees no button and is answered 403.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import TYPE_CHECKING

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.state import AppState, app_state
from api.ui.auth import Access
from ledger.errors import EndpointNotFound, InvalidRequest, MessageNotFound
from ledger.operators import Role
from ledger.wechatpay.bills import BEIJING
from projections.webhooks.records import STATES, Endpoint, Message
from projections.webhooks.stats import (
    BACKLOG_STATES,
    RECENT_ATTEMPTS,
    EndpointActivity,
    backlog_by_endpoint,
    endpoint_activity,
)

if TYPE_CHECKING:
    from api.ui.pages import OperatorPages

__all__ = ["DeliveryPages"]

log = logging.getLogger("api.ui")

# Dead letters first: what needs an operator; then what is still being retried.
SHOWN_ORDER = ("dead", "failing", "pending", "delivered")
PER_STATE = 50
RECENT_SECONDS = 3600.0
_MESSAGE_ID = re.compile(r"msg_[0-9a-f]{32}")
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_LOCAL_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?")
_REASON_CHARS = 200


def _local_time(name: str, text: str) -> dt.datetime:
    """A datetime-local field's value (YYYY-MM-DDTHH:MM[:SS]) read as Asia/Shanghai time."""
    try:
        if not _LOCAL_TIME.fullmatch(text):
            raise ValueError
        return dt.datetime.fromisoformat(text.replace(" ", "T")).replace(tzinfo=BEIJING)
    except ValueError:
        raise InvalidRequest(f"{name} must be a time written YYYY-MM-DDTHH:MM (Asia/Shanghai)") from None


def _latency(message: Message) -> float | None:
    return message.history[-1].duration_ms if message.history else None


class DeliveryPages:
    def __init__(self, pages: OperatorPages) -> None:
        self._pages = pages
        pages.templates.globals.update(latency=_latency)

    def routes(self) -> list[Route]:
        guarded = self._pages.guarded
        return [
            Route("/deliveries", guarded(self.index), methods=["GET"]),
            Route("/deliveries/resend", guarded(self.resend, Role.OPERATOR), methods=["POST"]),
            Route("/deliveries/recover", guarded(self.recover, Role.OPERATOR), methods=["POST"]),
            Route("/endpoints", guarded(self.endpoints), methods=["GET"]),
            Route("/endpoints/{endpoint_id}/enable", guarded(self.enable, Role.ADMIN), methods=["POST"]),
            Route("/endpoints/{endpoint_id}/disable", guarded(self.disable, Role.ADMIN), methods=["POST"]),
        ]

    def _bad(self, request: Request, access: Access, message: str, status: int = 400) -> Response:
        return self._pages.page(request, "message.html", status, access=access, message=message)

    @staticmethod
    def _endpoint_named(given: str, endpoints: list[Endpoint]) -> str | None:
        """The endpoint id `given` names ("" for none), or InvalidRequest when it names none there is."""
        if not given:
            return None
        if not _ENDPOINT_ID.fullmatch(given) or given not in {e.id for e in endpoints}:
            raise InvalidRequest("no such endpoint")
        return given

    # -- deliveries -----------------------------------------------------------------------

    async def index(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        params = request.query_params
        wanted = params.get("state", "")
        if wanted and wanted not in STATES:
            return self._bad(request, access, f"state must be one of {', '.join(SHOWN_ORDER)}.")
        outbox = state.services.outbox

        def read() -> tuple[list[Endpoint], list[Message], dict[str, int]]:
            endpoints = outbox.endpoints.all()
            endpoint_id = self._endpoint_named(params.get("endpoint", ""), endpoints)
            shown: list[Message] = []
            for each in (wanted,) if wanted else SHOWN_ORDER:
                shown += outbox.messages.newest(each, PER_STATE, endpoint_id=endpoint_id)
            waiting = backlog_by_endpoint(outbox)
            counts = {state: sum(by_state[state] for by_state in waiting.values()) for state in BACKLOG_STATES}
            return endpoints, shown, counts

        try:
            endpoints, messages, counts = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        except InvalidRequest:
            return self._bad(request, access, "No such endpoint.")
        return self._pages.page(
            request,
            "deliveries.html",
            access=access,
            messages=messages,
            counts=counts,
            endpoints=endpoints,
            states=SHOWN_ORDER,
            f={"state": wanted, "endpoint": params.get("endpoint", "")},
            resent=params.get("resent", "") == "1",
            recovered=params.get("recovered", "") if params.get("recovered", "").isdigit() else None,
            now=time.time(),
        )

    async def resend(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        form = await self._pages.form(request, access)
        if isinstance(form, Response):
            return form
        message_id = form.get("message_id", "")
        if not _MESSAGE_ID.fullmatch(message_id):
            return self._bad(request, access, "That is not a message id.")
        actions = state.services.actions
        try:
            await anyio.to_thread.run_sync(
                lambda: actions.resend(message_id, operator=access.operator), limiter=state.limiter
            )
        except MessageNotFound as exc:
            return self._pages.failure(request, access, exc, "No such message.")
        log.info("operator %s resent %s", access.operator, message_id)
        return self._pages.redirect("/ui/deliveries?resent=1")

    async def recover(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        form = await self._pages.form(request, access)
        if isinstance(form, Response):
            return form
        outbox = state.services.outbox
        actions = state.services.actions
        try:
            since = _local_time("since", form.get("since", "").strip())
            until = _local_time("until", form.get("until", "").strip())
            if since >= until:
                raise InvalidRequest("since must be before until")
            endpoints = await anyio.to_thread.run_sync(outbox.endpoints.all, limiter=state.limiter)
            endpoint_id = self._endpoint_named(form.get("endpoint", "").strip(), endpoints)
        except InvalidRequest as exc:
            return self._bad(request, access, f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        count = await anyio.to_thread.run_sync(
            lambda: actions.recover(since, until, endpoint_id=endpoint_id, operator=access.operator),
            limiter=state.limiter,
        )
        log.info("operator %s recovered %d messages endpoint=%s", access.operator, count, endpoint_id)
        return self._pages.redirect(f"/ui/deliveries?recovered={count}")

    # -- endpoints ------------------------------------------------------------------------

    async def endpoints(self, request: Request, access: Access) -> Response:
        state = app_state(request)
        outbox = state.services.outbox
        now = time.time()

        def read() -> tuple[list[Endpoint], dict[str, EndpointActivity]]:
            return outbox.endpoints.all(), endpoint_activity(outbox, now - RECENT_SECONDS)

        endpoints, activity = await anyio.to_thread.run_sync(read, limiter=state.limiter)
        switched = request.query_params.get("switched", "")
        return self._pages.page(
            request,
            "endpoints.html",
            access=access,
            endpoints=endpoints,
            activity=activity,
            idle=EndpointActivity(),
            recent_attempts=f"{RECENT_ATTEMPTS:,}",
            switched=switched if switched in ("enabled", "disabled", "unchanged") else None,
        )

    async def enable(self, request: Request, access: Access) -> Response:
        return await self._switch(request, access, enabled=True)

    async def disable(self, request: Request, access: Access) -> Response:
        return await self._switch(request, access, enabled=False)

    async def _switch(self, request: Request, access: Access, *, enabled: bool) -> Response:
        state: AppState = app_state(request)
        form = await self._pages.form(request, access)
        if isinstance(form, Response):
            return form
        endpoint_id = request.path_params["endpoint_id"]
        reason = " ".join(form.get("reason", "").split())[:_REASON_CHARS]
        actions = state.services.actions
        try:
            if not _ENDPOINT_ID.fullmatch(endpoint_id):
                raise EndpointNotFound(endpoint_id[:64])
            changed = await anyio.to_thread.run_sync(
                lambda: actions.set_endpoint(endpoint_id, enabled=enabled, operator=access.operator, reason=reason),
                limiter=state.limiter,
            )
        except EndpointNotFound as exc:
            return self._pages.failure(request, access, exc, "No such endpoint.")
        done = ("enabled" if enabled else "disabled") if changed else "unchanged"
        log.info("operator %s %s endpoint %s", access.operator, done, endpoint_id)
        return self._pages.redirect(f"/ui/endpoints?switched={done}")
