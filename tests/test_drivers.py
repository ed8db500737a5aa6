"""`asgiserve.DAGDriver` through the router on real servers (the `http` fixture).

No `from __future__ import annotations`: FastAPI reads the adapters' annotations.
"""

from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import BaseModel
from starlette.requests import Request

import asgiserve
from asgiserve.adapters import json_request, json_to_ndarray


@asgiserve.deployment
class Model:
    def __call__(self, arr: np.ndarray) -> Any:
        return arr.sum()


@asgiserve.deployment
class Echo:
    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag

    def __call__(self, value: Any) -> Any:
        if isinstance(value, BaseModel):
            return {self.tag: value.model_dump(), "model": type(value).__name__}
        return {self.tag: value}


class User(BaseModel):
    user_id: int
    user_name: str


def query_adapter(field_a: int, field_b: str) -> dict[str, Any]:
    """The seed's "HTTP adapter that accepts two HTTP query parameters"."""
    return {"a": field_a, "b": field_b}


def test_seed_dagdriver_example(http: httpx.Client) -> None:
    asgiserve.run(asgiserve.DAGDriver.bind(Model.bind(), http_adapter=json_to_ndarray))
    resp = http.post("/", json={"array": [[1, 2], [2, 3]]})
    assert resp.json() == 8
    assert "ragged" in http.post("/", json={"array": [[1, 2], [2]]}).json()["detail"][0]["msg"]


def test_openapi_and_docs_show_the_adapter_schema(http: httpx.Client) -> None:
    driver = asgiserve.DAGDriver.bind(Model.bind(), http_adapter=json_to_ndarray)
    asgiserve.run(driver, route_prefix="/model")
    spec = http.get("/model/openapi.json").json()
    body = spec["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/NdArray"}
    assert spec["components"]["schemas"]["NdArray"]["title"] == "NdArray"
    docs = http.get("/model/docs")
    assert docs.status_code == 200 and "/model/openapi.json" in docs.text


def test_pydantic_model_adapter(http: httpx.Client) -> None:
    asgiserve.run(asgiserve.DAGDriver.bind(Echo.bind(), http_adapter=User), route_prefix="/user")
    resp = http.post("/user", json={"user_id": 1, "user_name": "ann"})
    assert resp.json() == {"echo": {"user_id": 1, "user_name": "ann"}, "model": "User"}
    assert http.post("/user", json={"user_id": "x"}).status_code == 422
    spec = http.get("/user/openapi.json").json()
    assert "User" in spec["components"]["schemas"]


def test_query_parameter_adapter_and_default_adapter(http: httpx.Client) -> None:
    driver = asgiserve.DAGDriver.bind(Echo.bind(), http_adapter=query_adapter)
    asgiserve.run(driver, name="q", route_prefix="/q")
    assert http.get("/q?field_a=1&field_b=x").json() == {"echo": {"a": 1, "b": "x"}}
    assert http.get("/q?field_a=nope&field_b=x").status_code == 422
    params = http.get("/q/openapi.json").json()["paths"]["/"]["get"]["parameters"]
    assert [p["name"] for p in params] == ["field_a", "field_b"]

    @asgiserve.deployment
    class Path:
        def __call__(self, request: Request) -> str:
            return request.url.path

    asgiserve.run(asgiserve.DAGDriver.bind(Path.bind()), name="raw", route_prefix="/raw")
    assert http.get("/raw").json().startswith("/raw")  # no adapter: the Starlette request
    assert http.get("/raw").headers["content-type"] == "application/json"  # a str is JSON


def test_several_routes_under_one_driver(http: httpx.Client) -> None:
    driver = asgiserve.DAGDriver.bind(
        {"/sum": Model.bind(), "/echo": Echo.bind("json")}, http_adapter=json_request
    )
    handle = asgiserve.run(driver, route_prefix="/multi")
    assert http.post("/multi/echo", json={"k": [1]}).json() == {"json": {"k": [1]}}
    assert http.post("/multi/sum", json=[1, 2]).status_code == 500  # a list has no .sum()
    assert http.post("/multi/nope", json=1).status_code == 404
    assert set(http.get("/multi/openapi.json").json()["paths"]) == {"/sum", "/echo"}
    assert handle.predict_with_route.remote("/echo", 5).result() == {"json": 5}


def test_adapter_named_by_string_and_predict(http: httpx.Client) -> None:
    driver = asgiserve.DAGDriver.bind(
        Model.bind(), http_adapter="asgiserve.adapters.json_to_ndarray"
    )
    handle = asgiserve.run(driver, route_prefix="/s")
    assert http.post("/s", json={"array": [1.5, 2.5]}).json() == 4.0
    assert handle.predict.remote(np.arange(4)).result() == 6


def test_bad_routes_fail_at_run(backend: str) -> None:
    with pytest.raises(ValueError, match="starting with '/'"):
        asgiserve.run(asgiserve.DAGDriver.bind({"a": Model.bind()}), route_prefix=None)
