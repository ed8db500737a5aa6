"""`@asgiserve.ingress(app)`: FastAPI and Starlette apps as a deployment's HTTP entry.

Every test goes through a real uvicorn or Hypercorn server (the `http` fixture) except the
one in-memory `httpx.ASGITransport` test at the end.

No `from __future__ import annotations` here on purpose: FastAPI resolves endpoint
annotations against the endpoint's module globals, so string annotations naming classes
local to a test function (pydantic models, `Request`) would not resolve.
"""

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    Response,
    WebSocket,
)
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import asgiserve
from tests.servers import SERVERS, serve


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Poll until `check()` holds; for effects that happen after a response was sent."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


def absolute(http: httpx.Client, path: str) -> str:
    """The URL the server's app sees for `path`, as `url_for` and redirects spell it."""
    return str(http.base_url).rstrip("/") + path


def events_in(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- class-based views -------------------------------------------------------------------


def test_class_based_view_self_state_and_several_methods(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Counter:
        def __init__(self, start: int, *, label: str) -> None:
            self.count = start
            self.label = label

        @app.get("/")
        def read(self) -> dict[str, Any]:
            return {"count": self.count, "label": self.label, "is_counter": type(self).__name__}

        @app.post("/")
        def add(self, by: int = 1) -> int:
            self.count += by
            return self.count

        @app.put("/")
        async def set_to(self, value: int) -> int:
            self.count = value
            return self.count

        @app.delete("/")
        def reset(self) -> None:
            self.count = 0

        @app.get("/items/{item_id}")
        async def item(self, item_id: int, q: str = "none") -> dict[str, Any]:
            return {"item_id": item_id, "q": q, "label": self.label}

    asgiserve.run(Counter.bind(10, label="first"), route_prefix="/counter")
    assert http.get("/counter").json() == {"count": 10, "label": "first", "is_counter": "Counter"}
    assert http.post("/counter", params={"by": 5}).json() == 15
    assert http.post("/counter").json() == 16
    assert http.get("/counter/").json()["count"] == 16  # state lives on the replica's instance
    assert http.put("/counter", params={"value": 3}).json() == 3
    assert http.delete("/counter").status_code == 200
    assert http.get("/counter").json()["count"] == 0
    assert http.patch("/counter").status_code == 405
    assert http.get("/counter/items/7", params={"q": "x"}).json() == {
        "item_id": 7,
        "q": "x",
        "label": "first",
    }


def test_two_methods_both_named_root_as_in_the_seed(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment(route_prefix="/hello")
    @asgiserve.ingress(app)
    class MyFastAPIDeployment:
        @app.get("/")
        def root(self):  # type: ignore[no-untyped-def]
            return "Hello, world!"

        @app.post("/{subpath}")
        def root(self, subpath: str):  # type: ignore[no-untyped-def]  # noqa: F811
            return f"Hello from {subpath}!"

    asgiserve.run(MyFastAPIDeployment.bind(), route_prefix="/hello")
    assert http.get("/hello").json() == "Hello, world!"
    assert http.post("/hello/Serve").json() == "Hello from Serve!"


def test_routes_declared_on_a_base_class_are_the_subclass_views(http: httpx.Client) -> None:
    app = FastAPI()

    class Base:
        def __init__(self, name: str) -> None:
            self.name = name

        @app.get("/base")
        def base(self) -> str:
            return f"base of {self.name}"

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Child(Base):
        @app.get("/child")
        def child(self) -> str:
            return f"child {self.name}"

    asgiserve.run(Child.bind("c"), route_prefix="/inherit")
    assert http.get("/inherit/child").json() == "child c"
    assert http.get("/inherit/base").json() == "base of c"


def test_bring_your_own_app_is_served_as_it_is(http: httpx.Client) -> None:
    app = FastAPI()

    @app.get("/")
    def f() -> str:
        return "Hello from the root!"

    @app.get("/add/{a}")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @asgiserve.deployment(route_prefix="/")
    @asgiserve.ingress(app)
    class FastAPIWrapper:
        pass

    asgiserve.run(FastAPIWrapper.bind(), route_prefix="/")
    assert http.get("/").json() == "Hello from the root!"
    assert http.get("/add/2", params={"b": 40}).json() == 42
    assert http.get("/add/two").status_code == 422
    assert http.get("/missing").status_code == 404


def test_route_prefix_stacks_on_the_apps_routes(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class MyApp:
        @app.get("/")
        def root(self) -> str:
            return "root"

        @app.get("/fetch_data")
        def fetch_data(self) -> dict[str, str]:
            return {"data": "fetched"}

        @app.post("/")
        def post_root(self) -> str:
            return "posted"

        @app.get("/items/")
        def items(self) -> list[int]:
            return [1, 2]

    asgiserve.run(MyApp.bind(), route_prefix="/my_app")
    assert http.get("/my_app/fetch_data").json() == {"data": "fetched"}
    assert http.get("/my_app").json() == "root"
    assert http.get("/my_app/").json() == "root"
    assert http.post("/my_app").json() == "posted"
    assert http.get("/fetch_data").status_code == 404
    assert http.get("/my_app/other").status_code == 404
    redirect = http.get("/my_app/items?page=2")  # FastAPI's slash redirect keeps the prefix
    assert redirect.status_code == 307
    assert redirect.headers["location"] == absolute(http, "/my_app/items/?page=2")
    assert http.get("/my_app/items", follow_redirects=True).json() == [1, 2]


# -- composing the ingress app -----------------------------------------------------------


def test_api_router_and_mounted_starlette_sub_app(http: httpx.Client) -> None:
    app = FastAPI()
    users = APIRouter()

    @users.get("/users/{user_id}")
    def get_user(user_id: int) -> dict[str, int]:
        return {"user_id": user_id}

    app.include_router(users, prefix="/v1")

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse(
            {"pong": True, "root_path": request.scope["root_path"], "path": request.url.path}
        )

    app.mount("/sub", Starlette(routes=[Route("/ping", ping)]))

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Composed:
        @app.get("/own")
        def own(self) -> str:
            return "own"

    asgiserve.run(Composed.bind(), route_prefix="/api")
    assert http.get("/api/v1/users/5").json() == {"user_id": 5}
    assert http.get("/api/v1/users/x").status_code == 422
    assert http.get("/api/own").json() == "own"
    assert http.get("/api/sub/ping").json() == {
        "pong": True,
        "root_path": "/api/sub",
        "path": "/api/sub/ping",
    }


def test_class_view_methods_on_an_included_api_router(http: httpx.Client) -> None:
    app = FastAPI()
    router = APIRouter()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Store:
        def __init__(self, name: str) -> None:
            self.name = name

        @router.get("/items/{item_id}")
        def item(self, item_id: int) -> dict[str, Any]:
            return {"store": self.name, "item_id": item_id}

    app.include_router(router, prefix="/v1")
    asgiserve.run(Store.bind("corner shop"), route_prefix="/store")
    assert http.get("/store/v1/items/3").json() == {"store": "corner shop", "item_id": 3}
    schema = http.get("/store/openapi.json").json()
    params = schema["paths"]["/v1/items/{item_id}"]["get"]["parameters"]
    assert [param["name"] for param in params] == ["item_id"]


# -- middleware --------------------------------------------------------------------------


def test_cors_middleware_on_the_ingress_app(http: httpx.Client) -> None:
    app = FastAPI()
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["http://example.com"],
        allow_methods=["GET", "POST"],
        allow_headers=["x-custom"],
    )

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Cors:
        @app.post("/")
        def root(self) -> str:
            return "ok"

    asgiserve.run(Cors.bind(), route_prefix="/cors")
    preflight = http.options(
        "/cors/",
        headers={
            "origin": "http://example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-custom",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://example.com"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-custom" in preflight.headers["access-control-allow-headers"].lower()
    refused = http.options(
        "/cors/",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert refused.status_code == 400
    simple = http.post("/cors", headers={"origin": "http://example.com"})
    assert simple.json() == "ok"
    assert simple.headers["access-control-allow-origin"] == "http://example.com"
    assert "access-control-allow-origin" not in http.post("/cors").headers


class PureHeaderMiddleware:
    """Pure ASGI middleware adding a header to every HTTP response."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-pure", self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)


def test_custom_middleware_on_the_ingress_app(http: httpx.Client) -> None:
    app = FastAPI()
    app.add_middleware(PureHeaderMiddleware, value="pure")

    @app.middleware("http")
    async def timing(request: Request, call_next: RequestResponseEndpoint) -> Any:
        response = await call_next(request)
        response.headers["x-decorated"] = request.url.path
        return response

    class BaseHeader(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Any:
            response = await call_next(request)
            response.headers["x-base"] = "base"
            return response

    app.add_middleware(BaseHeader)

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class WithMiddleware:
        @app.get("/hi")
        def hi(self) -> str:
            return "hi"

    asgiserve.run(WithMiddleware.bind(), route_prefix="/mw")
    response = http.get("/mw/hi")
    assert response.json() == "hi"
    assert response.headers["x-pure"] == "pure"
    assert response.headers["x-base"] == "base"
    assert response.headers["x-decorated"] == "/mw/hi"
    assert "x-request-id" in response.headers
    missing = http.get("/mw/nothing")  # middleware wraps the app's own 404 too
    assert missing.status_code == 404 and missing.headers["x-pure"] == "pure"


# -- errors ------------------------------------------------------------------------------


class MyError(Exception):
    pass


class Item(BaseModel):
    name: str
    price: float


def test_exception_handlers_http_exception_and_validation(http: httpx.Client) -> None:
    app = FastAPI()

    @app.exception_handler(MyError)
    async def my_error(request: Request, exc: MyError) -> JSONResponse:
        return JSONResponse({"my_error": str(exc)}, status_code=418)

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Errors:
        def __init__(self) -> None:
            self.secret = "s3cr3t"

        @app.get("/mine")
        def mine(self) -> None:
            raise MyError(f"handled by the app for {type(self).__name__}")

        @app.get("/http")
        def http_error(self) -> None:
            raise HTTPException(status_code=404, detail="no such thing", headers={"x-e": "1"})

        @app.get("/items/{item_id}")
        def item(self, item_id: int) -> int:
            return item_id

        @app.post("/items")
        def create(self, item: Item) -> Item:
            return item

        @app.get("/crash")
        def crash(self) -> None:
            raise ValueError(self.secret)

    asgiserve.run(Errors.bind(), route_prefix="/err")
    mine = http.get("/err/mine")
    assert (mine.status_code, mine.json()) == (418, {"my_error": "handled by the app for Errors"})
    not_found = http.get("/err/http")
    assert (not_found.status_code, not_found.json()) == (404, {"detail": "no such thing"})
    assert not_found.headers["x-e"] == "1"
    bad_path = http.get("/err/items/abc")
    assert bad_path.status_code == 422
    assert bad_path.json()["detail"][0]["loc"] == ["path", "item_id"]
    bad_body = http.post("/err/items", json={"name": "x"})
    assert bad_body.status_code == 422
    assert bad_body.json()["detail"][0]["loc"] == ["body", "price"]
    good = http.post("/err/items", json={"name": "x", "price": 2})
    assert good.json() == {"name": "x", "price": 2.0}
    crash = http.get("/err/crash")
    assert crash.status_code == 500
    assert "s3cr3t" not in crash.text and "Traceback" not in crash.text
    assert http.get("/err/items/1").json() == 1  # the replica still serves after a crash


# -- background tasks, dependencies, responses -------------------------------------------


def test_background_tasks_run_after_the_response(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Jobs:
        def __init__(self) -> None:
            self.done: list[str] = []
            self.gate = threading.Event()

        def work(self, name: str) -> None:
            released = self.gate.wait(10)
            self.done.append(f"{name}:{'released' if released else 'timed out'}")

        @app.post("/jobs/{name}")
        def submit(self, name: str, tasks: BackgroundTasks) -> str:
            tasks.add_task(self.work, name)
            return "accepted"

        @app.get("/jobs")
        def jobs(self) -> list[str]:
            return self.done

        def release(self) -> None:
            self.gate.set()

        def finished(self) -> list[str]:
            return self.done

    handle = asgiserve.run(Jobs.bind(), route_prefix="/bg")
    # The task blocks until released, so a response that waited for it would never come
    # before the release below: the task would record "timed out".
    assert http.post("/bg/jobs/a").json() == "accepted"
    assert http.get("/bg/jobs").json() == []
    handle.release.remote().result(timeout_s=10)
    wait_for(lambda: http.get("/bg/jobs").json() == ["a:released"], "background task ran")
    assert handle.finished.remote().result(timeout_s=10) == ["a:released"]


class Resource:
    def __init__(self) -> None:
        self.events = ["setup"]


def get_resource() -> Iterator[Resource]:
    resource = Resource()
    try:
        yield resource
    finally:
        resource.events.append("teardown")


def test_dependency_with_yield_sets_up_and_tears_down(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class UsesResource:
        def __init__(self) -> None:
            self.seen: list[Resource] = []

        @app.get("/use")
        def use(self, resource: Resource = Depends(get_resource)) -> list[str]:
            self.seen.append(resource)
            return list(resource.events)

        @app.get("/events")
        def events(self) -> list[list[str]]:
            return [resource.events for resource in self.seen]

    asgiserve.run(UsesResource.bind(), route_prefix="/dep")
    assert http.get("/dep/use").json() == ["setup"]  # torn down only after the endpoint
    assert http.get("/dep/use").json() == ["setup"]
    wait_for(
        lambda: http.get("/dep/events").json() == [["setup", "teardown"]] * 2,
        "both dependencies torn down",
    )


class UserIn(BaseModel):
    name: str
    password: str


class UserOut(BaseModel):
    name: str


def test_response_model_cookies_and_repeated_headers(http: httpx.Client) -> None:
    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Users:
        def __init__(self, greeting: str) -> None:
            self.greeting = greeting

        @app.post("/users", response_model=UserOut, status_code=201)
        def create(self, user: UserIn) -> Any:
            return {"name": f"{self.greeting} {user.name}", "password": user.password}

        @app.get("/login")
        def login(self, response: Response) -> str:
            response.set_cookie("session", "abc", httponly=True)
            response.set_cookie("theme", "dark")
            response.headers.append("x-multi", "one")
            response.headers.append("x-multi", "two")
            return self.greeting

        @app.get("/raw")
        def raw(self) -> PlainTextResponse:
            response = PlainTextResponse("raw", headers={"x-raw": "1"})
            response.set_cookie("a", "1")
            response.set_cookie("b", "2")
            return response

    asgiserve.run(Users.bind("hi"), route_prefix="/users")
    created = http.post("/users/users", json={"name": "ann", "password": "hunter2"})
    assert created.status_code == 201
    assert created.json() == {"name": "hi ann"}
    assert "hunter2" not in created.text

    login = http.get("/users/login")
    assert login.json() == "hi"
    cookies = login.headers.get_list("set-cookie")
    assert len(cookies) == 2
    assert any(c.startswith("session=abc") and "httponly" in c.lower() for c in cookies)
    assert login.cookies["theme"] == "dark"
    assert login.headers.get_list("x-multi") == ["one", "two"]

    raw = http.get("/users/raw")
    assert (raw.text, raw.headers["x-raw"]) == ("raw", "1")
    assert sorted(raw.headers.get_list("set-cookie"))[0].startswith("a=1")
    assert len(raw.headers.get_list("set-cookie")) == 2


# -- the ingress app's own lifespan ------------------------------------------------------


def test_lifespan_context_manager_runs_in_the_replica(http: httpx.Client, tmp_path: Path) -> None:
    log = tmp_path / "events.txt"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        with log.open("a") as f:
            f.write("startup\n")
        app.state.on_app = "set in lifespan"
        yield {"model": "loaded-model"}
        with log.open("a") as f:
            f.write("shutdown\n")

    app = FastAPI(lifespan=lifespan)

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class WithLifespan:
        @app.get("/")
        def root(self, request: Request) -> dict[str, Any]:
            return {"model": request.state.model, "on_app": request.app.state.on_app}

    asgiserve.run(WithLifespan.bind(), name="life", route_prefix="/life")
    expected = {"model": "loaded-model", "on_app": "set in lifespan"}
    assert http.get("/life").json() == expected
    assert events_in(log) == ["startup"]
    assert http.get("/life").json() == expected
    assert events_in(log) == ["startup"]  # once per replica, not per request
    asgiserve.delete("life")
    wait_for(lambda: events_in(log) == ["startup", "shutdown"], "lifespan shutdown on delete")
    assert http.get("/life").status_code == 404


def test_on_event_startup_and_shutdown(http: httpx.Client, tmp_path: Path) -> None:
    log = tmp_path / "events.txt"
    app = FastAPI()
    if not hasattr(app, "on_event"):
        pytest.skip("this FastAPI no longer has on_event")

    @app.on_event("startup")
    def startup() -> None:
        with log.open("a") as f:
            f.write("startup\n")

    @app.on_event("shutdown")
    async def shutdown() -> None:
        with log.open("a") as f:
            f.write("shutdown\n")

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class OldStyle:
        @app.get("/")
        def root(self) -> list[str]:
            return events_in(log)

    asgiserve.run(OldStyle.bind(), name="old", route_prefix="/old")
    assert http.get("/old").json() == ["startup"]  # startup ran before the first request
    asgiserve.shutdown()
    wait_for(lambda: events_in(log) == ["startup", "shutdown"], "on_event shutdown on shutdown()")


# -- OpenAPI, docs, url_for --------------------------------------------------------------


def test_openapi_docs_and_url_for_carry_the_prefix(http: httpx.Client) -> None:
    app = FastAPI(title="Class views")

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Documented:
        def __init__(self, base: int) -> None:
            self.base = base

        @app.get("/items/{item_id}", name="item")
        def item(self, item_id: int, q: str | None = None) -> dict[str, Any]:
            return {"item_id": item_id + self.base, "q": q}

        @app.post("/items")
        def create(self, item: Item) -> Item:
            return item

        @app.get("/where")
        def where(self, request: Request) -> str:
            return str(request.url_for("item", item_id=3))

    asgiserve.run(Documented.bind(100), route_prefix="/docsapp")
    assert http.get("/docsapp/items/1").json() == {"item_id": 101, "q": None}

    schema = http.get("/docsapp/openapi.json").json()
    assert schema["info"]["title"] == "Class views"
    assert schema["servers"] == [{"url": "/docsapp"}]
    assert set(schema["paths"]) == {"/items/{item_id}", "/items", "/where"}
    params = schema["paths"]["/items/{item_id}"]["get"]["parameters"]
    assert sorted(p["name"] for p in params) == ["item_id", "q"]
    assert "parameters" not in schema["paths"]["/where"]["get"]  # `request` and no `self`
    assert "self" not in str(schema)
    body = schema["paths"]["/items"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/Item")

    for page in ("docs", "redoc"):
        html = http.get(f"/docsapp/{page}")
        assert html.status_code == 200
        assert html.headers["content-type"].startswith("text/html")
        assert "/docsapp/openapi.json" in html.text

    assert http.get("/docsapp/where").json() == absolute(http, "/docsapp/items/3")


def test_two_deployments_share_one_app_object(http: httpx.Client) -> None:
    app = FastAPI()

    @app.get("/shared")
    def shared() -> str:
        return "shared"

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class First:
        def __init__(self, tag: str) -> None:
            self.tag = tag

        @app.get("/")
        def root(self) -> str:
            return f"first:{self.tag}"

        @app.get("/only_first")
        def only_first(self) -> str:
            return "only first"

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class Second:
        @app.get("/")
        def root(self) -> str:
            return "second"

        @app.get("/only_second")
        def only_second(self) -> str:
            return "only second"

    asgiserve.run(First.bind("t"), name="first", route_prefix="/first")
    asgiserve.run(Second.bind(), name="second", route_prefix="/second")
    assert http.get("/first").json() == "first:t"
    assert http.get("/second").json() == "second"
    assert http.get("/first/only_first").json() == "only first"
    assert http.get("/second/only_second").json() == "only second"
    assert http.get("/first/only_second").status_code == 404
    assert http.get("/second/only_first").status_code == 404
    assert http.get("/first/shared").json() == "shared"  # plain routes belong to both
    assert http.get("/second/shared").json() == "shared"

    first = http.get("/first/openapi.json").json()
    second = http.get("/second/openapi.json").json()
    assert set(first["paths"]) == {"/", "/only_first", "/shared"}
    assert set(second["paths"]) == {"/", "/only_second", "/shared"}
    assert first["servers"] == [{"url": "/first"}]
    assert second["servers"] == [{"url": "/second"}]


# -- Starlette, WebSockets, in memory ----------------------------------------------------


def test_starlette_app_as_ingress(http: httpx.Client) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    async def homepage(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{request.state.greeting} from starlette")

    async def item(request: Request) -> JSONResponse:
        item_id = request.path_params["item_id"]
        return JSONResponse({"item_id": item_id, "url": str(request.url_for("item", item_id=9))})

    app = Starlette(
        routes=[
            Route("/", homepage),
            Route("/items/{item_id:int}", item, name="item", methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class StarletteIngress:
        pass

    asgiserve.run(StarletteIngress.bind(), route_prefix="/star")
    assert http.get("/star").text == "hello from starlette"
    expected = {"item_id": 4, "url": absolute(http, "/star/items/9")}
    assert http.post("/star/items/4").json() == expected
    assert http.get("/star/items/x").status_code == 404
    assert http.delete("/star/items/4").status_code == 405


@pytest.mark.parametrize("kind", SERVERS)
def test_websocket_route_on_a_class_view(backend: str, kind: str) -> None:
    from websockets.sync.client import connect

    app = FastAPI()

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class EchoServer:
        def __init__(self, prefix: str) -> None:
            self.prefix = prefix

        @app.websocket("/ws")
        async def echo(self, ws: WebSocket) -> None:
            await ws.accept()
            text = await ws.receive_text()
            await ws.send_text(self.prefix + text)
            await ws.close()

    outer = FastAPI()
    outer.mount("/", asgiserve.router)
    asgiserve.run(EchoServer.bind("echo: "), route_prefix="/echo")
    with serve(outer, kind) as server, connect(f"{server.ws_url}/echo/ws") as ws:
        ws.send("Eureka!")
        assert ws.recv(timeout=10) == "echo: Eureka!"


@pytest.mark.anyio
async def test_class_view_in_memory_with_asgi_transport(backend: str) -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"ready": True}

    app = FastAPI(lifespan=lifespan)

    @asgiserve.deployment
    @asgiserve.ingress(app)
    class InMemory:
        def __init__(self, factor: int) -> None:
            self.factor = factor

        @app.get("/times/{x}")
        async def times(self, x: int, request: Request) -> dict[str, Any]:
            return {"result": x * self.factor, "ready": request.state.ready}

    asgiserve.run(InMemory.bind(3), route_prefix="/mem")
    outer = FastAPI()
    outer.mount("/", asgiserve.router)
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/mem/times/5")
        assert response.json() == {"result": 15, "ready": True}
        assert (await client.get("/mem/times/x")).status_code == 422
        schema = (await client.get("/mem/openapi.json")).json()
        assert schema["servers"] == [{"url": "/mem"}]
        assert [p["name"] for p in schema["paths"]["/times/{x}"]["get"]["parameters"]] == ["x"]
