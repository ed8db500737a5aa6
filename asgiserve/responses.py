"""Turning what a handler returns into an HTTP response."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
from _json import encode_basestring, make_encoder
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import PlainTextResponse, Response


class EncodeError(TypeError):
    """A handler's return value that cannot become a response; the message says where."""


# Objects FastAPI's encoder would turn into `{}` (their `__dict__`), not data.
NOT_DATA = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
            types.CoroutineType, types.GeneratorType, type)  # fmt: skip


def to_jsonable(value: Any) -> Any:
    """`json.dumps` fallback: numpy values, mappings such as `QueryParams`, pydantic models."""
    if isinstance(value, NOT_DATA) or inspect.isawaitable(value):
        raise EncodeError(f"{type(value).__name__!r} objects are not data")
    if isinstance(value, (bytes, bytearray)) and not utf8(bytes(value)):
        raise EncodeError(
            "bytes that are not UTF-8 have no JSON form (return them alone, which goes out "
            "as application/octet-stream, or encode them, as base64)"
        )
    if type(value).__module__ == "numpy":
        return value.tolist()  # ndarray and numpy scalars alike
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    from fastapi.encoders import jsonable_encoder

    try:
        return jsonable_encoder(value)
    except (ValueError, TypeError):
        raise EncodeError(
            f"{type(value).__name__!r} objects have no JSON form (return dicts, lists, str, "
            "numbers, pydantic models, dataclasses or a Response)"
        ) from None


# Starlette's settings (ensure_ascii=False, allow_nan=False, compact) in json's C encoder,
# made once: `json.dumps` with any option builds a JSONEncoder per call, and each
# `JSONEncoder.encode` a C encoder. Made without cycle checks (markers=None), a circular
# value fails with RecursionError instead of ValueError: a 500 either way.
ENCODE = make_encoder(None, to_jsonable, encode_basestring, None, ":", ",", False, False, False)


def dump_json(value: Any) -> bytes:
    """`value` as JSON; `EncodeError` names the part that cannot be (the key of a NaN, of
    bytes that are not UTF-8, of an object with no JSON form)."""
    try:
        return "".join(ENCODE(value, 0)).encode("utf-8")
    except EncodeError as exc:
        where = next((path for path, part in walk(value) if fails(part)), "the top level")
        raise EncodeError(f"{exc}; found at {where}") from None
    except ValueError:  # NaN and infinities: not JSON
        where = next((p for p, part in walk(value) if isinstance(part, float)
                      and not math.isfinite(part)), "the top level")  # fmt: skip
        raise EncodeError(f"JSON has no NaN or infinity, found at {where}") from None


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every part of a JSON-like value with its path (`["a"][0]`)."""
    yield path or "the top level", value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from walk(item, f"{path}[{index}]")


def fails(part: Any) -> bool:
    if isinstance(part, (Mapping, list, tuple, str, int, float, bool)) or part is None:
        return False
    try:
        to_jsonable(part)
    except EncodeError:
        return True
    return False


def utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
