"""The library's JSON event format, written by orjson and read by msgspec.

`eventsourcing`'s `JSONTranscoder` writes compact JSON with `ensure_ascii=False` and tags
the types it knows (`{"_type_": "datetime_iso", "_data_": "..."}`). Encoding a delivery
event that way with the standard `json` module is a visible share of every callback; orjson
writes the same bytes several times faster (docs/benchmarks.md, "Figures behind design
choices"). Anything orjson would write differently is handed to the library: UUIDs (orjson
writes them untagged), integers beyond 64 bits, non-string keys.

Reading is the library's too, only faster: msgspec parses the JSON (it keeps integers of any
size, as `json` does; orjson would turn big ones into floats) and the tagged objects are
decoded bottom-up exactly as the library's `object_hook` decodes them. Whatever msgspec
refuses and `json` may accept (NaN, infinities, lone surrogates) or an unknown tag is left to
the library, which reads it or raises as it always did. A rebuild decodes every stored event
(docs/benchmarks.md, "Rebuild").
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
import orjson
from eventsourcing.persistence import JSONTranscoder

__all__ = ["FastJSONTranscoder"]

# datetime, date and time go to `_tagged` instead of orjson's own RFC 3339 form.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME
_DECODER = msgspec.json.Decoder()


class _LeftToTheLibrary(Exception):
    """A tag this transcoder does not know: the library's decoder raises its own error for it."""


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

    def decode(self, data: bytes) -> Any:
        try:
            return self._untagged(_DECODER.decode(data))
        except (msgspec.DecodeError, _LeftToTheLibrary, TypeError):  # TypeError: an unhashable tag
            return super().decode(data)

    def _untagged(self, value: Any) -> Any:
        """`value` with every tagged object decoded, innermost first (as `object_hook` is called)."""
        if type(value) is dict:
            for key, item in value.items():
                kind = type(item)
                if kind is dict:
                    if len(item) == 2 and type(data := item.get("_data_")) is str and "_type_" in item:
                        value[key] = self._decoded(item["_type_"], data)  # the usual tag: a value as text
                    else:
                        value[key] = self._untagged(item)
                elif kind is list:
                    value[key] = self._untagged(item)
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                return self._decoded(value["_type_"], value["_data_"])
            return value
        for index, item in enumerate(value):
            if type(item) is dict or type(item) is list:
                value[index] = self._untagged(item)
        return value

    def _decoded(self, name: Any, data: Any) -> Any:
        transcoding = self.names.get(name)
        if transcoding is None:
            raise _LeftToTheLibrary
        return transcoding.decode(data)
