"""`pandas_read_json`: a JSON body as a pandas DataFrame (or Series).

Only the `pandas.read_json` options listed in `ALLOWED_OPTIONS` come from the query
string: forwarding every query parameter, as Serve did, would let any client set options
such as `storage_options`, `compression` or `chunksize`.
"""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

import anyio.to_thread
from pydantic import RootModel, WrapValidator
from starlette.requests import Request

from asgiserve.adapters.body import UnreadJSONBody, invalid, read_body, require, unparsed

ALLOWED_OPTIONS = (
    "orient",
    "typ",
    "dtype",
    "convert_axes",
    "convert_dates",
    "keep_default_dates",
    "precise_float",
    "date_unit",
    "lines",
)


class PandasJSON(RootModel[Any]):
    """JSON that `pandas.read_json` reads, laid out as the `orient` query option says."""


PandasBody = Annotated[PandasJSON, WrapValidator(unparsed), UnreadJSONBody()]
Orient = Literal["split", "records", "index", "columns", "values", "table"]


def read_json(body: bytes, options: dict[str, Any]) -> Any:
    pandas = require("pandas", "pandas")
    try:
        return pandas.read_json(io.BytesIO(body), **options)
    except Exception as exc:  # ValueError for most bad input; pandas raises others too
        raise invalid(("body",), f"pandas could not read the JSON: {exc}", "json_invalid") from None


async def pandas_read_json(
    raw_request: Request,
    payload: PandasBody,
    orient: Orient | None = None,
    typ: Literal["frame", "series"] = "frame",
    dtype: bool | None = None,
    convert_axes: bool | None = None,
    convert_dates: bool = True,
    keep_default_dates: bool = True,
    precise_float: bool = False,
    date_unit: Literal["s", "ms", "us", "ns"] | None = None,
    lines: bool = False,
) -> Any:
    """Accept JSON body and converts into pandas DataFrame.

    The allowed `pandas.read_json` options are query parameters; any other is a 422.
    """
    require("pandas", "pandas")
    unknown = sorted(set(raw_request.query_params) - set(ALLOWED_OPTIONS))
    if unknown:
        raise invalid(
            ("query", unknown[0]),
            f"unknown query parameter(s) {', '.join(unknown)}; "
            f"the allowed pandas.read_json options are {', '.join(ALLOWED_OPTIONS)}",
            "extra_forbidden",
        )
    given = {
        "orient": orient,
        "typ": typ,
        "dtype": dtype,
        "convert_axes": convert_axes,
        "convert_dates": convert_dates,
        "keep_default_dates": keep_default_dates,
        "precise_float": precise_float,
        "date_unit": date_unit,
        "lines": lines,
    }
    options = {name: given[name] for name in raw_request.query_params}  # pandas' defaults else
    body = await read_body(raw_request)
    if not body:
        raise invalid(("body",), "the request body is empty; send JSON", "json_invalid")
    return await anyio.to_thread.run_sync(read_json, body, options)
