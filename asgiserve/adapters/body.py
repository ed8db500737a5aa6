"""What the adapters share: reading a JSON body without FastAPI parsing it, 422 errors,
and imports of optional packages that name the extra to install.

Why the body is declared as a form: FastAPI parses any declared JSON body with the
standard library's `json.loads` before a dependency runs, and for a 1,000 x 1,000 float
array that alone costs about 5 times what pydantic-core's parser takes. A parameter
declared with `UnreadJSONBody` is a form parameter to FastAPI, so it calls
`request.form()`, which for a JSON content type returns an empty form and leaves the body
unread; the adapter then reads the raw bytes and parses them itself. The parameter's type
is the schema model (`NdArray`), so the OpenAPI document shows exactly the request body a
plain `payload: NdArray` would, and a validator that returns its input unchanged keeps
pydantic from validating anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from fastapi import params
from fastapi.exceptions import HTTPException, RequestValidationError
from pydantic import ValidatorFunctionWrapHandler
from pydantic_core import from_json
from starlette.requests import ClientDisconnect, Request

from asgiserve.extras import install_hint

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def require(module: str, extra: str) -> ModuleType:
    """Import an optional package, or fail with the `pip install` line that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this adapter needs {module!r}, which is not installed: {install_hint(extra)}"
        ) from exc


def invalid(
    loc: Sequence[str | int], msg: str, kind: str = "value_error"
) -> RequestValidationError:
    """A 422 in FastAPI's own format (`{"detail": [{"loc", "msg", "type"}]}`)."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": kind}])


class UnreadJSONBody(params.Form):  # type: ignore[misc]  # FastAPI's own params do the same
    """A JSON request body declared for the OpenAPI document only (see the module doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(media_type="application/json", **kwargs)


def unparsed(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Skip validation: the adapter parses and checks the raw body itself."""
    return value


def loads(body: bytes) -> Any:
    """pydantic-core's JSON parser: as fast as orjson on numbers, and it builds the Python
    objects as it reads, where orjson first builds a document tree 13 times the body's size.
    """
    return from_json(body, cache_strings="keys")


async def read_body(request: Request) -> bytes:
    """The raw body; a form body was consumed by FastAPI's form parsing, and is not JSON."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type in FORM_TYPES:
        raise invalid(
            ("body",),
            f"expected a JSON body (content-type application/json), got {media_type}",
            "content_type",
        )
    try:
        return await request.body()
    except ClientDisconnect:  # as FastAPI answers when it reads a body itself
        raise HTTPException(400, "the client disconnected before sending the body") from None


def parse_json(body: bytes) -> Any:
    if not body:
        raise invalid(("body",), "invalid JSON: the request body is empty", "json_invalid")
    try:
        return loads(body)
    except ValueError as exc:  # syntax errors and bad UTF-8 alike
        raise invalid(("body",), f"invalid JSON: {exc}", "json_invalid") from None
