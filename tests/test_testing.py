"""`asgiserve.testing`: the test clients users write their own suites with, on every backend."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, WebSocket
from starlette.requests import Request

import asgiserve
from asgiserve.testing import AsyncTestClient, TestClient


@asgiserve.deployment(num_replicas=2)
class Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def __call__(self, request: Request) -> str:
        if request.query_params.get("fail"):
            raise ValueError("the greeter failed")
        return f"{self.greeting}, {request.query_params['name']}!"


api = FastAPI()


@api.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


@api.get("/broken")
def broken() -> None:
    raise LookupError("a route that raises")


@api.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    if text == "fail":
        raise LookupError("a websocket route that raises")
    await websocket.send_text(text)
    await websocket.close()


def test_a_bound_application(backend: str) -> None:
    with TestClient(Greeter.bind("Hello")) as client:
        assert client.get("/", params={"name": "Ada"}).text == "Hello, Ada!"
        status = asgiserve.status()["applications"][client.app_name]
        assert status["deployments"]["Greeter"]["running_replicas"] == 2
        assert status["deployments"]["Greeter"]["backend"] == backend
        with pytest.raises(ValueError, match="the greeter failed"):
            client.get("/", params={"fail": 1})
    assert client.app_name not in asgiserve.status()["applications"]  # stopped with it


def test_an_asgi_app_served_as_the_ingress(backend: str) -> None:
    with TestClient(api) as client:
        assert client.get("/hello").json() == {"hello": "world"}
        with pytest.raises(LookupError, match="a route that raises"):
            client.get("/broken")
        with client.websocket_connect("/echo") as websocket:
            websocket.send_text("hi")
            assert websocket.receive_text() == "hi"
        with pytest.raises(LookupError, match="a websocket route that raises"):
            with client.websocket_connect("/echo") as websocket:
                websocket.send_text("fail")
                websocket.receive_text()


def test_errors_can_be_answers_instead(backend: str) -> None:
    with TestClient(api, raise_server_exceptions=False) as client:
        assert client.get("/broken").status_code == 500
        assert client.get("/-/healthz").text == "success"


@pytest.mark.anyio
async def test_the_async_client(backend: str) -> None:
    async with AsyncTestClient(Greeter.bind("Hi")) as client:
        answer = await client.get("/", params={"name": "Bo"})
        assert answer.text == "Hi, Bo!"
        with pytest.raises(ValueError, match="the greeter failed"):
            await client.get("/", params={"fail": 1})
    assert client.app_name not in asgiserve.status()["applications"]


def test_a_target_that_cannot_be_served() -> None:
    with pytest.raises(TypeError, match="TestClient serves a bound application"):
        TestClient(42)
