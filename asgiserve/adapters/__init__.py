"""HTTP adapters: functions that turn a request into Python values.

Each is a FastAPI dependency (`Depends(json_to_ndarray)` in your own app, its input
schema in your OpenAPI document) and an `http_adapter=` for `asgiserve.DAGDriver`.

`import asgiserve` imports this package, so it stays light: the modules holding the
adapters (and FastAPI, pydantic, numpy, PIL, pandas behind them) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asgiserve.adapters.image import image_to_ndarray
    from asgiserve.adapters.ndarray import NdArray, json_to_multi_ndarray, json_to_ndarray
    from asgiserve.adapters.pandas import pandas_read_json
    from asgiserve.adapters.requests import json_request, starlette_request

WHERE = {
    "NdArray": "ndarray",
    "json_to_ndarray": "ndarray",
    "json_to_multi_ndarray": "ndarray",
    "image_to_ndarray": "image",
    "pandas_read_json": "pandas",
    "json_request": "requests",
    "starlette_request": "requests",
}

__all__ = [
    "NdArray",
    "image_to_ndarray",
    "json_request",
    "json_to_multi_ndarray",
    "json_to_ndarray",
    "pandas_read_json",
    "starlette_request",
]


def __getattr__(name: str) -> Any:
    module = WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'asgiserve.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"asgiserve.adapters.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *WHERE])
