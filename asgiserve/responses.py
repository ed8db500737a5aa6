"""Turning what a handler returns into an HTTP response."""

from __future__ import annotations

import dataclasses
from _json import encode_basestring, make_encoder
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import PlainTextResponse, Response


def to_jsonable(value: Any) -> Any:
    """`json.dumps` fallback: numpy values, mappings such as `QueryParams`, pydantic models."""
    if type(value).__module__ == "numpy":
        return value.tolist()  # ndarray and numpy scalars alike
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(value)


# Starlette's settings (ensure_ascii=False, allow_nan=False, compact) in json's C encoder,
# made once: `json.dumps` with any option builds a JSONEncoder per call, and each
# `JSONEncoder.encode` a C encoder. Made without cycle checks (markers=None), a circular
# value fails with RecursionError instead of ValueError: a 500 either way.
ENCODE = make_encoder(None, to_jsonable, encode_basestring, None, ":", ",", False, False, False)


def dump_json(value: Any) -> bytes:
    return "".join(ENCODE(value, 0)).encode("utf-8")


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSONResponse, also for numpy arrays and scalars."""

    def render(self, content: Any) -> bytes:
        return dump_json(content)


def to_response(value: Any) -> Response:
    """A `Response` goes out as it is, `str` as text, `bytes` as octet-stream, the rest as JSON."""
    if isinstance(value, Response):
        return value
    if isinstance(value, str):
        return PlainTextResponse(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Response(bytes(value), media_type="application/octet-stream")
    return JSONResponse(value)


def error_response(status_code: int, detail: str, request_id: str, **extra: Any) -> Response:
    return JSONResponse(
        {"detail": detail, "request_id": request_id, **extra}, status_code=status_code
    )
