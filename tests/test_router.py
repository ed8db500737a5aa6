from __future__ import annotations

import gc
import logging
import re
import time
import weakref
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.testclient import TestClient

import asgiserve
from tests.servers import SERVERS, serve


@asgiserve.deployment
class Echo:
    def __init__(self, tag: str = "echo") -> None:
        self.tag = tag

    def __call__(self, request: Request) -> dict[str, object]:
        return {
            "tag": self.tag,
            "path": request.url.path,
            "root_path": request.scope["root_path"],
            "path_params": request.path_params,
            "query": request.query_params,
        }


def test_plain_deployment_gets_a_starlette_request(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind())
    body = http.get("/anything?a=b&c=d").json()
    assert body["query"] == {"a": "b", "c": "d"}
    assert body["path"] == "/anything"


def test_longest_prefix_wins(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind("root"), name="root", route_prefix="/")
    asgiserve.run(Echo.bind("api"), name="api", route_prefix="/api")
    asgiserve.run(Echo.bind("v2"), name="v2", route_prefix="/api/v2")
    assert http.get("/api/v2/x").json()["tag"] == "v2"
    assert http.get("/api/v2").json()["tag"] == "v2"
    assert http.get("/api/v22").json()["tag"] == "api"
    assert http.get("/api/x").json()["tag"] == "api"
    assert http.get("/apix").json()["tag"] == "root"
    assert http.get("/").json()["tag"] == "root"


def test_typed_path_parameters(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind(), route_prefix="/api/{user_id:int}/{x:float}")
    body = http.get("/api/123/3.14").json()
    assert body["path_params"] == {"user_id": 123, "x": 3.14}
    assert http.get("/api/abc/3.14").status_code == 404


def test_no_match_is_404_with_request_id(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind(), route_prefix="/only")
    response = http.get("/elsewhere")
    assert response.status_code == 404
    assert response.json()["request_id"] == response.headers["x-request-id"]


def test_request_id_is_kept_when_the_client_sends_one(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind())
    assert http.get("/", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(http.get("/").headers["x-request-id"]) == 32


def test_return_values(http: httpx.Client) -> None:
    @asgiserve.deployment
    def values(request: Request) -> object:
        kind = request.query_params["kind"]
        if kind == "text":
            return "hello"
        if kind == "bytes":
            return b"\x00\x01"
        if kind == "numpy":
            return {
                "array": np.arange(4).reshape(2, 2),
                "scalar": np.float32(0.5),
                "int": np.int64(7),
            }
        if kind == "none":
            return None
        response = Response("custom", status_code=201, headers={"x-custom": "yes"})
        response.set_cookie("session", "s1")
        response.set_cookie("theme", "dark")
        return response

    asgiserve.run(values.bind())
    text = http.get("/?kind=text")
    assert (text.text, text.headers["content-type"]) == ("hello", "text/plain; charset=utf-8")
    raw = http.get("/?kind=bytes")
    assert (raw.content, raw.headers["content-type"]) == (b"\x00\x01", "application/octet-stream")
    assert http.get("/?kind=numpy").json() == {"array": [[0, 1], [2, 3]], "scalar": 0.5, "int": 7}
    assert http.get("/?kind=none").json() is None
    custom = http.get("/?kind=response")
    assert (custom.status_code, custom.text, custom.headers["x-custom"]) == (201, "custom", "yes")
    assert custom.cookies["session"] == "s1" and custom.cookies["theme"] == "dark"
    assert len(custom.headers.get_list("set-cookie")) == 2


def test_custom_status_code(http: httpx.Client) -> None:
    @asgiserve.deployment
    def f(starlette_request: Request) -> Response:
        return Response("Hello, world!", status_code=123, media_type="text/plain")

    import requests

    asgiserve.run(f.bind())
    # The seed's client and code; httpx rejects a 1xx final status, and HTTP gives it no body.
    assert requests.get(str(http.base_url), timeout=10).status_code == 123

    @asgiserve.deployment
    def teapot(request: Request) -> Response:
        return Response("short and stout", status_code=418, headers={"x-a": "1"})

    asgiserve.run(teapot.bind())
    response = http.get("/")
    assert (response.status_code, response.text, response.headers["x-a"]) == (
        418,
        "short and stout",
        "1",
    )


def test_user_exception_is_500_json_without_traceback(http: httpx.Client) -> None:
    @asgiserve.deployment
    def broken(request: Request) -> None:
        raise ValueError("secret detail")

    asgiserve.run(broken.bind())
    response = http.get("/")
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert "secret detail" not in response.text and "Traceback" not in response.text


def test_async_and_function_deployments(http: httpx.Client) -> None:
    @asgiserve.deployment
    async def hello(request: Request) -> str:
        return f"hello {request.query_params['name']}"

    asgiserve.run(hello.bind())
    assert http.get("/?name=bob").text == "hello bob"


def test_delete_removes_routes(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind(), name="gone", route_prefix="/gone")
    assert http.get("/gone").status_code == 200
    asgiserve.delete("gone")
    assert http.get("/gone").status_code == 404
    assert "gone" not in asgiserve.status()["applications"]


def test_redeploy_replaces_the_application(http: httpx.Client) -> None:
    asgiserve.run(Echo.bind("one"), name="app", route_prefix="/app")
    assert http.get("/app").json()["tag"] == "one"
    asgiserve.run(Echo.bind("two"), name="app", route_prefix="/app")
    assert http.get("/app").json()["tag"] == "two"


def test_prefix_taken_by_another_application(backend: str) -> None:
    asgiserve.run(Echo.bind(), name="first", route_prefix="/x")
    with pytest.raises(ValueError, match="already used by application 'first'"):
        asgiserve.run(Echo.bind(), name="second", route_prefix="/x")


def test_route_prefix_none_is_handle_only(http: httpx.Client) -> None:
    @asgiserve.deployment
    class Hidden:
        def __call__(self, x: int) -> int:
            return x + 1

    handle = asgiserve.run(Hidden.bind(), name="hidden", route_prefix=None)
    assert http.get("/").status_code == 404
    assert handle.remote(1).result() == 2


def test_status_reports_applications(backend: str) -> None:
    asgiserve.run(Echo.options(num_replicas=2).bind(), name="s", route_prefix="/s")
    report = asgiserve.status()["applications"]["s"]
    assert report["route_prefix"] == "/s"
    deployment = report["deployments"]["Echo"]
    assert deployment["num_replicas"] == 2 and len(deployment["replicas"]) == 2


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize("outer", ["fastapi", "starlette"])
@pytest.mark.parametrize("mount_at", ["/", "/ml"])
def test_mounted_anywhere(backend: str, kind: str, outer: str, mount_at: str) -> None:
    if outer == "fastapi":
        app: object = FastAPI()
        app.mount(mount_at, asgiserve.router)  # type: ignore[attr-defined]
    else:
        app = Starlette(routes=[Mount(mount_at, asgiserve.router)])
    asgiserve.run(Echo.bind(), route_prefix="/model")
    base = "" if mount_at == "/" else mount_at
    with serve(app, kind) as server, server.client() as client:
        body = client.get(f"{base}/model/predict").json()
    assert body["path"] == f"{base}/model/predict"
    assert body["root_path"] == f"{base}/model"


@pytest.mark.parametrize("kind", SERVERS)
def test_behind_a_root_path(backend: str, kind: str) -> None:
    app = FastAPI()
    app.mount("/", asgiserve.router)
    asgiserve.run(Echo.bind(), route_prefix="/model")
    with serve(app, kind, root_path="/proxy") as server, server.client() as client:
        body = client.get("/model/x").json()
    assert body["root_path"] == "/proxy/model"
    assert body["path"] in ("/proxy/model/x", "/model/x")


def test_routes_after_a_root_mount_still_answer(backend: str) -> None:
    app = FastAPI()
    app.mount("/", asgiserve.router)
    handle = asgiserve.run(Echo.bind(), route_prefix="/model")

    @app.get("/status")
    def own_route() -> dict[str, str]:
        return {"own": "route"}

    del handle
    with serve(app) as server, server.client() as client:
        assert client.get("/status").json() == {"own": "route"}
        assert client.get("/model").json()["tag"] == "echo"
        assert client.post("/status").status_code == 405


def test_router_as_top_level_app_runs_lifespan(backend: str) -> None:
    asgiserve.run(Echo.bind())
    with serve(asgiserve.router, lifespan="on") as server, server.client() as client:
        assert client.get("/").json()["tag"] == "echo"
        replicas = asgiserve.status()["applications"]["default"]["deployments"]["Echo"]["replicas"]
        assert replicas[0]["state"] == "RUNNING"
    assert asgiserve.status()["applications"]["default"]["deployments"]["Echo"]["replicas"] == []


def test_router_middleware_cors(backend: str) -> None:
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    router = asgiserve.Router(
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])]
    )
    asgiserve.run(Echo.bind(), router=router)
    with serve(router) as server, server.client() as client:
        response = client.get("/", headers={"origin": "http://example.com"})
        assert response.headers["access-control-allow-origin"] == "*"


def test_two_routers(backend: str) -> None:
    first, second = asgiserve.Router(), asgiserve.Router()
    asgiserve.run(Echo.bind("a"), name="a", router=first)
    asgiserve.run(Echo.bind("b"), name="b", router=second)
    app = Starlette(routes=[Mount("/one", first), Mount("/two", second)])
    with serve(app) as server, server.client() as client:
        assert client.get("/one/").json()["tag"] == "a"
        assert client.get("/two/").json()["tag"] == "b"


@pytest.mark.anyio
async def test_in_memory_asgi_transport(backend: str) -> None:
    asgiserve.run(Echo.bind(), route_prefix="/m")
    app = FastAPI()
    app.mount("/", asgiserve.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/m/x")).json()["root_path"] == "/m"


def test_deployment_without_call_answers_http_with_404(http: httpx.Client) -> None:
    @asgiserve.deployment
    class HandleOnly:
        def predict(self, x: int) -> int:
            return x

    handle = asgiserve.run(HandleOnly.bind(), route_prefix="/only-handles")
    response = http.get("/only-handles")
    assert response.status_code == 404
    assert "answers handle calls only" in response.json()["detail"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert handle.predict.remote(3).result() == 3


class Probe:
    """Something a test can hold a weak reference to."""


probes: list[weakref.ref[Probe]] = []


@asgiserve.deployment
class KeepsAProbe:
    async def __call__(self, request: Request) -> str:
        probe = Probe()
        request.scope["probe"] = probe
        probes.append(weakref.ref(probe))
        return "ok"


def test_a_request_is_freed_once_answered(http: httpx.Client, backend: str) -> None:
    """Nothing keeps an in-process request's objects once it is answered, not even the
    server's keep-alive timer on the connection left open: reference counting frees them
    at once, instead of them piling up for the garbage collector (which then ran
    constantly, with 25 ms pauses)."""
    if backend != "inprocess":
        pytest.skip("the replica's objects live in another process")
    asgiserve.run(KeepsAProbe.bind())
    gc.disable()  # freed by reference counting, not by a collection
    try:
        assert http.get("/").text == "ok"  # the connection stays open (keep-alive)
        deadline = time.monotonic() + 2
        while probes[-1]() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert probes[-1]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "returned, message",
    [
        (lambda: 1, r"Returns.__call__ returned function, .*'function' objects are not data"),
        (object(), r"returned object, .*'object' objects have no JSON form"),
        ({"score": float("nan")}, r"JSON has no NaN or infinity, found at \['score'\]"),
        ({"blob": [b"\xff"]}, r"bytes that are not UTF-8 .* found at \['blob'\]\[0\]"),
    ],
)
def test_a_return_value_that_cannot_be_encoded_is_a_500_that_says_why(
    returned: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    @asgiserve.deployment
    class Returns:
        def __call__(self) -> Any:
            return returned

    router = asgiserve.Router()
    asgiserve.run(Returns.bind(), name="returns", router=router, backend="inprocess")
    try:
        with TestClient(router) as client, caplog.at_level(logging.ERROR, "asgiserve"):
            assert client.get("/").status_code == 500
        assert any(re.search(message, str(record.exc_info[1])) for record in caplog.records
                   if record.exc_info)  # fmt: skip
    finally:
        asgiserve.shutdown()
