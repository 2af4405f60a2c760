"""The library's JSON event format, written by orjson.

`eventsourcing`'s `JSONTranscoder` writes compact JSON with `ensure_ascii=False` and tags
the types it knows (`{"_type_": "datetime_iso", "_data_": "..."}`). Encoding a delivery
event that way with the standard `json` module is a visible share of every callback; orjson
writes the same bytes several times faster (docs/benchmarks.md, "Figures behind design
choices"). Decoding stays the library's own, so what either wrote reads the same. Anything
orjson would write differently is handed to the library: UUIDs (orjson writes them untagged),
integers beyond 64 bits, non-string keys.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder

__all__ = ["FastJSONTranscoder"]

# datetime, date and time go to `_tagged` instead of orjson's own RFC 3339 form.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


class FastJSONTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        if isinstance(obj, dict) and not any(isinstance(v, UUID) for v in obj.values()):
            try:
                return orjson.dumps(obj, default=self._tagged, option=_OPTIONS)
            except TypeError:  # orjson.JSONEncodeError: a type or value it would write otherwise
                pass
        return super().encode(obj)

    def _tagged(self, o: Any) -> dict[str, Any]:
        transcoding = self.types.get(type(o))
        if transcoding is None:
            raise TypeError(type(o).__name__)
        return {"_type_": transcoding.name, "_data_": transcoding.encode(o)}
