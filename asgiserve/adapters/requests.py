"""`starlette_request` and `json_request`: the request itself, or its JSON body."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import RootModel, WrapValidator
from starlette.requests import Request

from asgiserve.adapters.body import UnreadJSONBody, parse_json, read_body, unparsed


class JSONValue(RootModel[Any]):
    """Any JSON value."""


JSONBody = Annotated[JSONValue, WrapValidator(unparsed), UnreadJSONBody()]


async def starlette_request(request: Request) -> Request:
    """Returns the raw request object, its body read so it can travel to any replica."""
    await request.body()
    return request


async def json_request(request: Request, payload: JSONBody) -> Any:
    """Return the JSON object from request body (invalid JSON is a 422 naming the error)."""
    return parse_json(await read_body(request))
