"""JSON answers: one encoder for money, times and Decimals; one shape for failures."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any
from uuid import UUID

from starlette.responses import JSONResponse

__all__ = ["LedgerJSONResponse", "fail", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    return value


class LedgerJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(to_jsonable(content), ensure_ascii=False, separators=(",", ":")).encode()


def fail(status_code: int, message: str, code: str = "FAIL") -> LedgerJSONResponse:
    """A failure answer: fixed, short message; never exception text."""
    return LedgerJSONResponse({"code": code, "message": message}, status_code=status_code)
