"""Bad input is never a 5xx: every adapter and the router's typed path parameters, fuzzed.

A few thousand generated requests in all, through a real uvicorn server, on the
in-process backend (the adapters and the router run in the same place on every backend).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

import asgiserve
from asgiserve.adapters import (
    image_to_ndarray,
    json_request,
    json_to_multi_ndarray,
    json_to_ndarray,
    pandas_read_json,
)
from tests.conftest import BACKENDS

FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
pytestmark = [
    pytest.mark.parametrize("live", ["uvicorn"], indirect=True),
    pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "inprocess"], indirect=True),
]

adapters_app = FastAPI()


@adapters_app.post("/ndarray")
def ndarray(arr: Any = Depends(json_to_ndarray)) -> list[int]:
    return list(arr.shape)


@adapters_app.post("/multi")
def multi(arrays: dict[str, Any] = Depends(json_to_multi_ndarray)) -> list[str]:
    return sorted(arrays)


@adapters_app.post("/image")
def image(pixels: Any = Depends(image_to_ndarray)) -> list[int]:
    return list(pixels.shape)


@adapters_app.post("/pandas")
def frame(df: Any = Depends(pandas_read_json)) -> int:
    return len(df)


@adapters_app.post("/json")
def plain_json(value: Any = Depends(json_request)) -> str:
    return type(value).__name__


@asgiserve.deployment
@asgiserve.ingress(adapters_app)
class Adapters:
    pass


@asgiserve.deployment
def typed(request: Request) -> dict[str, Any]:
    return dict(request.path_params)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
numbers = st.integers(-(2**70), 2**70) | st.floats() | st.booleans() | st.none()
nested = st.recursive(numbers, lambda inner: st.lists(inner, max_size=4), max_leaves=30)
dtypes = st.sampled_from(
    ["float32", "int8", "uint64", "complex128", "(2,2", "(1000000000,)f8", "f8,i4", "O", "S5",
     "V4", "M8", "<U3", "bool", "float128", "", "i" * 300, "(2,)f8"]
) | st.text(max_size=12)  # fmt: skip
ndarray_payloads = st.fixed_dictionaries(
    {"array": nested | json_values},
    optional={"shape": st.lists(st.integers(-5, 10**12), max_size=5) | json_values,
              "dtype": dtypes | json_values},
)  # fmt: skip


@pytest.fixture
def fuzzed(http: httpx.Client, backend: str) -> httpx.Client:
    asgiserve.run(Adapters.bind(), name="adapters", route_prefix="/a")
    asgiserve.run(typed.bind(), name="typed", route_prefix="/t/{n:int}/{x:float}/{p:path}")
    return http


def no_5xx(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])


@FUZZ
@given(payload=ndarray_payloads | json_values)
def test_json_to_ndarray(fuzzed: httpx.Client, payload: Any) -> None:
    no_5xx(fuzzed.post("/a/ndarray", content=json.dumps(payload)))


@FUZZ
@given(payload=st.dictionaries(st.text(max_size=8), ndarray_payloads, max_size=3) | json_values)
def test_json_to_multi_ndarray(fuzzed: httpx.Client, payload: Any) -> None:
    no_5xx(fuzzed.post("/a/multi", content=json.dumps(payload)))


@FUZZ
@given(body=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a"]))
def test_image_to_ndarray(fuzzed: httpx.Client, body: bytes, prefix: bytes) -> None:
    no_5xx(fuzzed.post("/a/image", files={"img": ("f.png", prefix + body)}))


@FUZZ
@given(
    payload=json_values,
    orient=st.sampled_from(["split", "records", "index", "columns", "values", "table", "bad"]),
    typ=st.sampled_from(["frame", "series", "other"]),
)
def test_pandas_read_json(fuzzed: httpx.Client, payload: Any, orient: str, typ: str) -> None:
    response = fuzzed.post("/a/pandas", content=json.dumps(payload),
                           params={"orient": orient, "typ": typ})  # fmt: skip
    no_5xx(response)


@FUZZ
@given(body=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_json_request(fuzzed: httpx.Client, body: bytes) -> None:
    no_5xx(fuzzed.post("/a/json", content=body))


path_segments = st.text(alphabet="0123456789.-+eE_inf", min_size=1, max_size=6000)


@FUZZ
@given(n=path_segments, x=path_segments, rest=st.text(max_size=30))
def test_typed_path_parameters(fuzzed: httpx.Client, n: str, x: str, rest: str) -> None:
    response = fuzzed.get(f"/t/{n}/{x}/{quote(rest)}")
    no_5xx(response)
