"""The request lifecycle through real servers and real clients.

Streaming, WebSockets, cancellation, backpressure, errors, the request context, the access
log and leaks, on uvicorn and Hypercorn, with httpx, `requests`, `websockets` and raw
sockets (asyncio streams) as clients.

Backend-agnostic by construction: a test never shares a Python object with a replica.
Replica-side effects are observed through handles (`Recorder`, each deployment's own
counters) and `asgiserve.status()`; a test synchronises with replicas through `Gate`, a
deployment whose `wait(key)` returns once the test has called `release(key)`. A test never
sleeps to let something happen: eventual conditions are polled for up to `TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import httpx
import pytest
import requests
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.requests import Request
from starlette.responses import StreamingResponse

import asgiserve
from asgiserve.handle import DeploymentHandle
from asgiserve.watch import WATCH_AFTER_S, watchlist
from tests.servers import SERVERS, LiveServer, serve

T = TypeVar("T")

TIMEOUT = 10.0  # seconds: the bound on every eventual condition and every client read


# -- observing and synchronising without sharing objects ----------------------------------


@asgiserve.deployment(max_ongoing_requests=10_000)
class Recorder:
    """Replica-side events, in order; bound into other deployments as a handle."""

    def __init__(self) -> None:
        self.log: list[Any] = []

    async def record(self, event: Any) -> None:
        self.log.append(event)

    async def events(self) -> list[Any]:
        return list(self.log)


@asgiserve.deployment(max_ongoing_requests=10_000)
class Gate:
    """`wait(key)` returns once `release(key)` has been called, before or after.

    One asyncio.Event per waiter, set on the loop that waits: the in-process backend runs a
    call on its caller's loop, so a release sent from the test's thread may run on another
    loop than the wait it opens. In a replica of its own, that loop is the replica's.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: set[str] = set()
        self.waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    async def wait(self, key: str) -> None:
        event = asyncio.Event()
        with self.lock:
            if key in self.opened:
                return
            self.waiters.setdefault(key, []).append((asyncio.get_running_loop(), event))
        await event.wait()

    async def release(self, key: str) -> None:
        with self.lock:
            self.opened.add(key)
            waiters = self.waiters.pop(key, [])
        for loop, event in waiters:
            loop.call_soon_threadsafe(event.set)

    async def waiting(self, key: str) -> int:
        with self.lock:
            return len(self.waiters.get(key, []))


def handle_of(deployment: str, app: str = "default") -> DeploymentHandle:
    return asgiserve.get_deployment_handle(deployment, app)


def events(app: str = "default") -> list[Any]:
    return handle_of("Recorder", app).events.remote().result(timeout_s=TIMEOUT)  # type: ignore[no-any-return]


def release(key: str, app: str = "default") -> None:
    handle_of("Gate", app).release.remote(key).result(timeout_s=TIMEOUT)


async def events_async(app: str = "default") -> list[Any]:
    return await handle_of("Recorder", app).events.remote()  # type: ignore[no-any-return]


async def release_async(key: str, app: str = "default") -> None:
    await handle_of("Gate", app).release.remote(key)


def wait_for(condition: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last value: {value!r})")
        time.sleep(0.005)


async def eventually(
    condition: Callable[[], Awaitable[T] | T], what: str, timeout: float = TIMEOUT
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last value: {value!r})")
        await asyncio.sleep(0.005)


async def equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def has(value: Awaitable[list[Any]], expected: set[Any]) -> bool:
    return expected <= set(await value)


def deployment_status(name: str, app: str = "default") -> dict[str, Any]:
    return asgiserve.status()["applications"][app]["deployments"][name]  # type: ignore[no-any-return]


def in_flight(name: str, app: str = "default") -> int:
    return sum(replica["in_flight"] for replica in deployment_status(name, app)["replicas"])


def queued(name: str, app: str = "default") -> int:
    return deployment_status(name, app)["queued"]  # type: ignore[no-any-return]


def idle(name: str, app: str = "default") -> bool:
    return in_flight(name, app) == 0 and queued(name, app) == 0


# -- raw HTTP/1.1 over asyncio streams ------------------------------------------------------


async def send_request(
    port: int, target: str, headers: dict[str, str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send a GET; the caller reads what it wants, then hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


async def read_body_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    """Read the response until `marker` is in its body (after the headers)."""
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while marker not in data.partition(b"\r\n\r\n")[2]:
            more = await reader.read(65536)
            assert more, f"connection closed before {marker!r} arrived; got {data!r}"
            data += more
    return data


def read_exactly(chunks: Iterator[bytes], size: int) -> bytes:
    """At least `size` bytes from an httpx byte iterator (its read timeout bounds the wait)."""
    data = b""
    while len(data) < size:
        data += next(chunks)
    return data


# -- 1. streaming --------------------------------------------------------------------------

CHUNKS = 3


def chunk(i: int, sse: bool = False) -> str:
    return f"data: {i}\n\n" if sse else f"chunk {i}\n"


def sync_chunks(gate: DeploymentHandle, run: str, n: int) -> Iterator[str]:
    """Yields chunk i, then blocks until the test has read it and opened `run:i`."""
    for i in range(n):
        yield chunk(i)
        gate.wait.remote(f"{run}:{i}").result(timeout_s=30)


async def async_chunks(gate: DeploymentHandle, run: str, n: int, sse: bool = False) -> Any:
    for i in range(n):
        yield chunk(i, sse)
        await gate.wait.remote(f"{run}:{i}")


def streaming_response(gate: DeploymentHandle, kind: str, run: str, n: int) -> StreamingResponse:
    if kind == "sync":
        return StreamingResponse(sync_chunks(gate, run, n), media_type="text/plain")
    if kind == "async":
        return StreamingResponse(async_chunks(gate, run, n), media_type="text/plain")
    assert kind == "sse"
    return StreamingResponse(async_chunks(gate, run, n, sse=True), media_type="text/event-stream")


@asgiserve.deployment
class PlainStreamer:
    """`StreamingResponse` from a plain `__call__`: `/?kind=sync|async|sse&run=…&n=…`."""

    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    def __call__(self, request: Request) -> StreamingResponse:
        query = request.query_params
        return streaming_response(self.gate, query["kind"], query["run"], int(query["n"]))


streaming_app = FastAPI()


@asgiserve.deployment
@asgiserve.ingress(streaming_app)
class IngressStreamer:
    """`StreamingResponse` from a FastAPI route on a class view: `/{kind}?run=…&n=…`."""

    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    @streaming_app.get("/{kind}")
    def stream(self, kind: str, run: str, n: int) -> StreamingResponse:
        return streaming_response(self.gate, kind, run, n)


def stream_url(entry: str, kind: str, run: str, n: int = CHUNKS) -> str:
    if entry == "plain":
        return f"/stream?kind={kind}&run={run}&n={n}"
    return f"/stream/{kind}?run={run}&n={n}"


def run_streamer(entry: str) -> None:
    deployment = PlainStreamer if entry == "plain" else IngressStreamer
    asgiserve.run(deployment.bind(Gate.bind()), route_prefix="/stream")


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("entry", ["plain", "ingress"])
def test_each_chunk_reaches_the_client_as_it_is_produced(
    http: httpx.Client, entry: str, kind: str
) -> None:
    run_streamer(entry)
    run = uuid.uuid4().hex
    with http.stream("GET", stream_url(entry, kind, run), timeout=TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        body = response.iter_raw()
        for i in range(CHUNKS):
            # The generator waits at the gate after yielding chunk i, and only the test
            # opens it, after reading the chunk: a buffered chunk never arrives (ReadTimeout).
            expected = chunk(i).encode()
            assert read_exactly(body, len(expected)) == expected
            release(f"{run}:{i}")
        assert b"".join(body) == b""


@pytest.mark.parametrize("entry", ["plain", "ingress"])
def test_server_sent_events_are_read_incrementally(http: httpx.Client, entry: str) -> None:
    run_streamer(entry)
    run = uuid.uuid4().hex
    with http.stream("GET", stream_url(entry, "sse", run), timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        for i in range(CHUNKS):
            assert next(lines) == f"data: {i}"
            assert next(lines) == ""  # the blank line that ends the event
            release(f"{run}:{i}")
        assert list(lines) == []


@asgiserve.deployment
class StreamingResponder:
    """The seed's first streaming example, with a shorter pause between numbers."""

    def generate_numbers(self, max: int) -> Iterator[str]:
        for i in range(max):
            yield str(i)
            time.sleep(0.01)

    def __call__(self, request: Request) -> StreamingResponse:
        max = request.query_params.get("max", "25")
        gen = self.generate_numbers(int(max))
        return StreamingResponse(gen, status_code=200, media_type="text/plain")


def test_seed_streaming_responder_with_requests(http: httpx.Client) -> None:
    asgiserve.run(StreamingResponder.bind())
    with requests.get(f"{http.base_url}?max=10", stream=True, timeout=TIMEOUT) as r:
        r.raise_for_status()
        chunks = list(r.iter_content(chunk_size=None, decode_unicode=True))
    assert "".join(chunks) == "0123456789"


# -- 2. streaming handles -----------------------------------------------------------------


@asgiserve.deployment
class Numbers:
    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    def sync_numbers(self, n: int, run: str = "", fail_at: int = -1) -> Iterator[int]:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at {i}")
            yield i
            if run:
                self.gate.wait.remote(f"{run}:{i}").result(timeout_s=30)

    async def async_numbers(self, n: int, run: str = "", fail_at: int = -1) -> AsyncIterator[int]:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at {i}")
            yield i
            if run:
                await self.gate.wait.remote(f"{run}:{i}")


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["sync_numbers", "async_numbers"])
async def test_stream_handle_with_async_for(backend: str, method: str) -> None:
    handle = asgiserve.run(Numbers.bind(Gate.bind()), route_prefix=None)
    stream = handle.options(method_name=method, stream=True)
    run = uuid.uuid4().hex
    received = []
    async with asyncio.timeout(TIMEOUT):  # each item arrives before the next is produced
        async for item in stream.remote(4, run):
            received.append(item)
            await release_async(f"{run}:{item}")
    assert received == [0, 1, 2, 3]
    assert [i async for i in stream.remote(0)] == []


@pytest.mark.parametrize("method", ["sync_numbers", "async_numbers"])
def test_stream_handle_with_plain_for(backend: str, method: str) -> None:
    handle = asgiserve.run(Numbers.bind(Gate.bind()), route_prefix=None)
    stream = handle.options(method_name=method, stream=True)
    run = uuid.uuid4().hex
    received = []
    for item in stream.remote(4, run):
        received.append(item)
        release(f"{run}:{item}")
    assert received == [0, 1, 2, 3]
    assert list(getattr(handle, method).options(stream=True).remote(3)) == [0, 1, 2]


@pytest.mark.anyio
@pytest.mark.parametrize("method", ["sync_numbers", "async_numbers"])
async def test_exception_mid_stream_reaches_the_async_caller(backend: str, method: str) -> None:
    handle = asgiserve.run(Numbers.bind(Gate.bind()), route_prefix=None)
    received = []
    with pytest.raises(ValueError, match="failed at 2"):
        async for item in handle.options(method_name=method, stream=True).remote(5, fail_at=2):
            received.append(item)
    assert received == [0, 1]


@pytest.mark.parametrize("method", ["sync_numbers", "async_numbers"])
def test_exception_mid_stream_reaches_the_sync_caller(backend: str, method: str) -> None:
    handle = asgiserve.run(Numbers.bind(Gate.bind()), route_prefix=None)
    received = []
    with pytest.raises(ValueError, match="failed at 3"):
        for item in handle.options(method_name=method, stream=True).remote(5, fail_at=3):
            received.append(item)
    assert received == [0, 1, 2]


@asgiserve.deployment
class OnlyMethods:
    def ping(self) -> str:
        return "pong"


def test_a_deployment_without_call_serves_its_methods(backend: str) -> None:
    handle = asgiserve.run(OnlyMethods.bind(), route_prefix=None)
    assert handle.ping.remote().result(timeout_s=TIMEOUT) == "pong"


# -- 3. WebSockets --------------------------------------------------------------------------

websocket_app = FastAPI()


@asgiserve.deployment
@asgiserve.ingress(websocket_app)
class EchoServer:
    """The seed's EchoServer, recording the disconnect instead of printing it."""

    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    @websocket_app.websocket("/")
    async def echo(self, ws: WebSocket) -> None:
        await ws.accept()

        try:
            while True:
                text = await ws.receive_text()
                await ws.send_text(text)
        except WebSocketDisconnect as exc:
            await self.recorder.record.remote(f"Client disconnected. code={exc.code}")

    @websocket_app.websocket("/push/{n}")
    async def push(self, ws: WebSocket, n: int) -> None:
        await ws.accept()
        for i in range(n):
            await ws.send_text(f"message {i}")
        await ws.close(code=1000)
        await self.recorder.record.remote("pushed")


def test_websocket_echo_as_in_the_seed(live: LiveServer, backend: str) -> None:
    from websockets.sync.client import connect

    asgiserve.run(EchoServer.bind(Recorder.bind()))
    with connect(live.ws_url, open_timeout=TIMEOUT) as websocket:
        websocket.send("Eureka!")
        assert websocket.recv(timeout=TIMEOUT) == "Eureka!"

        websocket.send("I've found it!")
        assert websocket.recv(timeout=TIMEOUT) == "I've found it!"


def test_websocket_server_push(live: LiveServer, backend: str) -> None:
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    asgiserve.run(EchoServer.bind(Recorder.bind()))
    with connect(f"{live.ws_url}/push/5", open_timeout=TIMEOUT) as websocket:
        received = [websocket.recv(timeout=TIMEOUT) for _ in range(5)]
        with pytest.raises(ConnectionClosedOK):
            websocket.recv(timeout=TIMEOUT)
    assert received == [f"message {i}" for i in range(5)]
    assert websocket.close_code == 1000
    wait_for(lambda: events() == ["pushed"], "the handler to finish")


def test_websocket_client_closes_first(live: LiveServer, backend: str) -> None:
    from websockets.sync.client import connect

    asgiserve.run(EchoServer.bind(Recorder.bind()))
    with connect(live.ws_url, open_timeout=TIMEOUT) as websocket:
        websocket.send("bye")
        assert websocket.recv(timeout=TIMEOUT) == "bye"
        assert events() == []  # the handler is still in its loop
    # Leaving the block closes the connection with code 1000.
    # A clean close is 1000; Hypercorn reports 1006 for it even to a bare FastAPI app.
    closed = (["Client disconnected. code=1000"], ["Client disconnected. code=1006"])
    wait_for(lambda: events() in closed, "the handler's WebSocketDisconnect")
    wait_for(lambda: idle("EchoServer"), "the exchange to end")


# -- 4. cancellation ------------------------------------------------------------------------


@asgiserve.deployment
class Startled:
    """The seed's `startled`, recording instead of printing (it swallows the cancel)."""

    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    async def __call__(self) -> None:
        try:
            await self.recorder.record.remote("Replica received request!")
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            # Add custom behavior that should run
            # upon cancellation here.
            await self.recorder.record.remote("Request got cancelled!")


STARTLED = ["Replica received request!", "Request got cancelled!"]


def test_client_disconnect_cancels_the_handler_httpx(http: httpx.Client) -> None:
    asgiserve.run(Startled.bind(Recorder.bind()))
    with pytest.raises(httpx.ReadTimeout):
        http.get("/", timeout=httpx.Timeout(TIMEOUT, read=1.0))  # hangs up on timing out
    wait_for(lambda: events() == STARTLED, "the handler to record its CancelledError")
    wait_for(lambda: idle("Startled"), "the request to leave the scheduler")


@pytest.mark.anyio
async def test_client_disconnect_cancels_the_handler_raw_socket(
    live: LiveServer, backend: str
) -> None:
    asgiserve.run(Startled.bind(Recorder.bind()))
    _, writer = await send_request(live.port, "/")
    await eventually(lambda: events_async(), "the request to reach the handler")
    await hang_up(writer)
    await eventually(
        lambda: equals(events_async(), STARTLED), "the handler to record its CancelledError"
    )
    await eventually(lambda: idle("Startled"), "the request to leave the scheduler")


@pytest.mark.anyio
async def test_one_timer_watches_every_request_once_due() -> None:
    """Requests wait for their disconnect watcher in one list with one ticking timer: each
    starts once it has run `WATCH_AFTER_S` (and before twice that), oldest first; one that
    ended before never does; the timer stops once none waits."""
    loop = asyncio.get_running_loop()
    started: list[tuple[str, float]] = []

    class Watched:  # what the watchlist sees of a RequestWatch
        def __init__(self, name: str) -> None:
            self.name = name
            self.added = loop.time()

        def start(self) -> None:
            started.append((self.name, loop.time() - self.added))

    watching = watchlist()
    first, ended = Watched("first"), Watched("ended")
    watching.add(first)  # type: ignore[arg-type]
    watching.add(ended)  # type: ignore[arg-type]
    await asyncio.sleep(WATCH_AFTER_S / 2)
    watching.discard(ended)  # type: ignore[arg-type]
    last = Watched("last")
    watching.add(last)  # type: ignore[arg-type]
    for _ in range(1000):  # a few periods; longer on a loaded machine, never forever
        if len(started) == 2 and watching.timer is None:
            break
        await asyncio.sleep(WATCH_AFTER_S)
    assert [name for name, _ in started] == ["first", "last"]
    assert all(WATCH_AFTER_S <= waited for _, waited in started)  # never before one period
    assert not watching.waiting and watching.timer is None


@asgiserve.deployment
class Patient:
    """Awaits forever; records its cancellation and lets it propagate."""

    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    async def __call__(self, request: Request) -> str:
        try:
            await self.recorder.record.remote("started")
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            await self.recorder.record.remote("cancelled")
            raise
        return "unreachable"


@pytest.mark.parametrize("kind", SERVERS)
@pytest.mark.parametrize(
    "handler", [Patient, Startled], ids=["reraises", "seed-swallows-the-cancel"]
)
def test_request_timeout_is_504_and_cancels_the_handler(
    backend: str, kind: str, handler: asgiserve.Deployment
) -> None:
    router = asgiserve.Router(request_timeout_s=0.3)
    asgiserve.run(handler.bind(Recorder.bind()), router=router)
    # Checks stay inside the block: the server's lifespan shutdown stops the replicas.
    with serve(router, kind) as server, server.client() as client:
        response = client.get("/", timeout=TIMEOUT)
        assert response.status_code == 504
        body = response.json()
        assert "request_timeout_s=0.3" in body["detail"]
        assert body["request_id"] == response.headers["x-request-id"]
        wait_for(lambda: len(events()) == 2, "the handler to record its CancelledError")
        assert events()[1] in ("cancelled", "Request got cancelled!")


@asgiserve.deployment(max_ongoing_requests=1)
class OneAtATime:
    def __init__(self, recorder: DeploymentHandle, gate: DeploymentHandle) -> None:
        self.recorder = recorder
        self.gate = gate

    async def __call__(self, request: Request) -> str:
        name = request.query_params["name"]
        await self.recorder.record.remote(f"started {name}")
        await self.gate.wait.remote(name)
        await self.recorder.record.remote(f"finished {name}")
        return name


@pytest.mark.anyio
async def test_queued_request_is_dropped_when_its_client_leaves(
    live: LiveServer, backend: str
) -> None:
    asgiserve.run(OneAtATime.bind(Recorder.bind(), Gate.bind()))
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as client:
        first = asyncio.ensure_future(client.get("/?name=first"))
        await eventually(
            lambda: equals(events_async(), ["started first"]), "the first request to start"
        )
        _, writer = await send_request(live.port, "/?name=second")
        await eventually(lambda: queued("OneAtATime") == 1, "the second request to queue")
        await hang_up(writer)
        await eventually(lambda: queued("OneAtATime") == 0, "the queue to drop it")
        await release_async("first")
        assert (await first).text == "first"
        await release_async("third")  # a later request runs as usual
        assert (await client.get("/?name=third")).text == "third"
    assert await events_async() == [
        "started first",
        "finished first",
        "started third",
        "finished third",
    ]
    # The slot is freed just after the response went out, so this may lag a little.
    await eventually(lambda: idle("OneAtATime"), "the scheduler to be idle")


@asgiserve.deployment
class ForeverResponder:
    """The seed's `generate_forever`, recording "Cancelled! Exiting." instead of printing.

    It records in its own state, read through a handle: like `print`, that needs no
    `await`. Starlette runs the stream in an anyio task group whose cancel scope cancels
    every later `await` in the generator too, so awaiting a Recorder call there would be
    cancelled as well (as it would be in plain Starlette).
    """

    def __init__(self) -> None:
        self.log: list[str] = []

    async def generate_forever(self) -> AsyncIterator[str]:
        try:
            i = 0
            while True:
                yield str(i)
                i += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.log.append("Cancelled! Exiting.")

    def __call__(self, request: Request) -> StreamingResponse:
        gen = self.generate_forever()
        return StreamingResponse(gen, status_code=200, media_type="text/plain")

    async def events(self) -> list[str]:
        return list(self.log)


def test_streaming_generator_is_cancelled_on_disconnect_requests(http: httpx.Client) -> None:
    responder = asgiserve.run(ForeverResponder.bind())
    received = []
    with requests.get(f"{http.base_url}?max=10", stream=True, timeout=TIMEOUT) as r:
        r.raise_for_status()
        for i, chunk_text in enumerate(r.iter_content(chunk_size=None, decode_unicode=True)):
            received.append(chunk_text)
            if i == 10:
                break  # "Client disconnecting": leaving the block closes the connection
    assert "".join(received).startswith("012345678910")
    wait_for(
        lambda: responder.events.remote().result() == ["Cancelled! Exiting."],
        "the generator to be cancelled",
    )
    wait_for(lambda: idle("ForeverResponder"), "the request to leave the scheduler")


@pytest.mark.anyio
async def test_streaming_generator_is_cancelled_on_disconnect_raw_socket(
    live: LiveServer, backend: str
) -> None:
    responder = asgiserve.run(ForeverResponder.bind())
    reader, writer = await send_request(live.port, "/")
    await read_body_until(reader, b"5")
    await hang_up(writer)
    await eventually(
        lambda: equals(responder.events.remote(), ["Cancelled! Exiting."]),
        "the generator to be cancelled",
    )
    await eventually(lambda: idle("ForeverResponder"), "the request to leave the scheduler")


@asgiserve.deployment
class Downstream:
    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    async def __call__(self) -> str:
        try:
            await self.recorder.record.remote("downstream started")
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            await self.recorder.record.remote("downstream cancelled")
            raise
        return "unreachable"


@asgiserve.deployment
class Upstream:
    def __init__(self, downstream: DeploymentHandle, recorder: DeploymentHandle) -> None:
        self.downstream = downstream
        self.recorder = recorder

    async def __call__(self, request: Request) -> str:
        try:
            return await self.downstream.remote()  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            await self.recorder.record.remote("upstream cancelled")
            raise


@pytest.mark.anyio
async def test_cancellation_cascades_to_downstream_handle_calls(
    live: LiveServer, backend: str
) -> None:
    recorder = Recorder.bind()
    asgiserve.run(Upstream.bind(Downstream.bind(recorder), recorder))
    _, writer = await send_request(live.port, "/")
    await eventually(
        lambda: equals(events_async(), ["downstream started"]), "the downstream call to start"
    )
    await hang_up(writer)
    await eventually(
        lambda: has(events_async(), {"upstream cancelled", "downstream cancelled"}),
        "both handlers to record their CancelledError",
    )
    await eventually(
        lambda: idle("Upstream") and idle("Downstream"), "both calls to leave the schedulers"
    )


@asgiserve.deployment
class SnoringSleeper:
    """The seed's SnoringSleeper; `snore` waits for the test instead of sleeping 1 s."""

    def __init__(self, recorder: DeploymentHandle, gate: DeploymentHandle) -> None:
        self.recorder = recorder
        self.gate = gate

    async def snore(self) -> None:
        await self.gate.wait.remote("snore")
        await self.recorder.record.remote("ZZZ")

    async def __call__(self) -> None:
        try:
            await self.recorder.record.remote("SnoringSleeper received request!")

            # Prevent the snore() method from being cancelled
            await asyncio.shield(self.snore())

        except asyncio.CancelledError:
            await self.recorder.record.remote("SnoringSleeper's request was cancelled!")


@pytest.mark.anyio
async def test_shield_protects_work_from_the_cancel(live: LiveServer, backend: str) -> None:
    asgiserve.run(SnoringSleeper.bind(Recorder.bind(), Gate.bind()))
    _, writer = await send_request(live.port, "/")
    received = ["SnoringSleeper received request!"]
    await eventually(lambda: equals(events_async(), received), "the request to arrive")
    await hang_up(writer)
    cancelled = [*received, "SnoringSleeper's request was cancelled!"]
    await eventually(lambda: equals(events_async(), cancelled), "the handler to be cancelled")
    await release_async("snore")  # the shielded snore() is still waiting, not cancelled
    await eventually(lambda: equals(events_async(), [*cancelled, "ZZZ"]), "ZZZ after the cancel")


@asgiserve.deployment(max_ongoing_requests=1)
class Sleeper:
    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    async def sleep_forever(self, name: str) -> None:
        try:
            await self.recorder.record.remote(f"started {name}")
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            await self.recorder.record.remote(f"cancelled {name}")
            raise


@pytest.mark.anyio
async def test_cancel_from_python(backend: str) -> None:
    handle = asgiserve.run(Sleeper.bind(Recorder.bind()), route_prefix=None)

    response = handle.sleep_forever.remote("a")
    await eventually(lambda: equals(events_async(), ["started a"]), "the call to start")
    response.cancel()
    with pytest.raises(asyncio.CancelledError):
        await response
    await eventually(lambda: has(events_async(), {"cancelled a"}), "replica-side cancel")

    async def caller() -> None:
        await handle.sleep_forever.remote("b")

    task = asyncio.ensure_future(caller())
    await eventually(lambda: has(events_async(), {"started b"}), "the call to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: has(events_async(), {"cancelled b"}), "replica-side cancel")

    # Queued behind a running call (max_ongoing_requests=1): dropped, never run.
    running = handle.sleep_forever.remote("c")
    await eventually(lambda: has(events_async(), {"started c"}), "the call to start")
    waiting = handle.sleep_forever.remote("d")
    await eventually(lambda: queued("Sleeper") == 1, "the second call to queue")
    waiting.cancel()
    await eventually(lambda: queued("Sleeper") == 0, "the queue to drop it")
    running.cancel()
    await eventually(lambda: idle("Sleeper"), "both calls to leave the scheduler")
    expected = ["started a", "cancelled a", "started b", "cancelled b", "started c", "cancelled c"]
    await eventually(lambda: equals(events_async(), expected), "c's cancel, and no d at all")


def test_cancel_from_synchronous_python(backend: str) -> None:
    handle = asgiserve.run(Sleeper.bind(Recorder.bind()), route_prefix=None)
    response = handle.sleep_forever.remote("sync")
    wait_for(lambda: events() == ["started sync"], "the call to start")
    response.cancel()
    with pytest.raises(BaseException) as info:  # noqa: B017 - which CancelledError is below
        response.result(timeout_s=TIMEOUT)
    assert "CancelledError" in type(info.value).__name__
    wait_for(lambda: events() == ["started sync", "cancelled sync"], "replica-side cancel")


@asgiserve.deployment(max_ongoing_requests=1)
class Blocking:
    """A synchronous handler: it cannot be interrupted, so it runs to its end.

    It sleeps (briefly) rather than waiting at a gate: the test cannot observe the moment
    the server notices the disconnect, so the handler must outlast it on its own.
    """

    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    def __call__(self, request: Request) -> str:
        name = request.query_params["name"]
        self.recorder.record.remote(f"started {name}").result(timeout_s=30)
        time.sleep(float(request.query_params.get("sleep", "0")))
        self.recorder.record.remote(f"finished {name}").result(timeout_s=30)
        return f"result {name}"


@pytest.mark.anyio
async def test_sync_handler_finishes_and_its_result_is_dropped(
    live: LiveServer, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgiserve")
    asgiserve.run(Blocking.bind(Recorder.bind()))
    _, writer = await send_request(live.port, "/?name=first&sleep=0.5", {"x-request-id": "gone"})
    await eventually(lambda: equals(events_async(), ["started first"]), "the handler to start")
    await hang_up(writer)  # the handler sleeps on: it cannot be interrupted
    await eventually(
        lambda: equals(events_async(), ["started first", "finished first"]),
        "the handler to finish",
    )
    await eventually(lambda: idle("Blocking"), "the request to leave the scheduler")
    lines = await eventually(
        lambda: [r.getMessage() for r in caplog.records if "gone" in r.getMessage().split()],
        "the access line of the abandoned request",
    )
    assert "499" in lines[0].split()  # its result was dropped: "client closed request"
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as client:
        assert (await client.get("/?name=next")).text == "result next"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.anyio
async def test_cancelled_sync_handler_keeps_its_slot_until_it_returns(
    live: LiveServer, backend: str
) -> None:
    asgiserve.run(Blocking.bind(Recorder.bind()))  # max_ongoing_requests=1
    _, first = await send_request(live.port, "/?name=first&sleep=0.5")
    await eventually(lambda: equals(events_async(), ["started first"]), "the handler to start")
    await hang_up(first)
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as client:
        assert (await client.get("/?name=second")).text == "result second"
    # The second request may start only once the first handler has returned. (The server
    # notices the hang-up long before the first handler's 0.5 s are over: a slot freed on
    # the disconnect would let the second one start in between.)
    assert await events_async() == [
        "started first",
        "finished first",
        "started second",
        "finished second",
    ]


# -- 5. backpressure ------------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=2)
class Peak:
    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate
        self.active = 0
        self.peak = 0
        self.served = 0

    async def __call__(self, request: Request) -> str:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.gate.wait.remote("go")
        finally:
            self.active -= 1
        self.served += 1
        return "ok"

    async def stats(self) -> dict[str, int]:
        return {"active": self.active, "peak": self.peak, "served": self.served}


def test_max_ongoing_requests_bounds_concurrency_in_the_replica(http: httpx.Client) -> None:
    handle = asgiserve.run(Peak.bind(Gate.bind()))
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(http.get, "/") for _ in range(10)]
        wait_for(lambda: in_flight("Peak") == 2 and queued("Peak") == 8, "2 running and 8 queued")
        release("go")
        responses = [future.result(timeout=TIMEOUT) for future in futures]
    assert [(r.status_code, r.text) for r in responses] == [(200, "ok")] * 10
    assert handle.stats.remote().result(timeout_s=TIMEOUT) == {
        "active": 0,
        "peak": 2,
        "served": 10,
    }
    wait_for(lambda: idle("Peak"), "the scheduler to be idle")  # freed just after responding


@asgiserve.deployment(max_ongoing_requests=1)
class Single:
    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    async def __call__(self, *args: Any) -> str:
        await self.gate.wait.remote("go")
        return "done"


def test_a_call_queued_from_another_loop_gets_its_slot(http: httpx.Client) -> None:
    """A call queued from one loop gets the slot an HTTP request frees on the server's loop.

    The caller's loop is a fresh one with nothing else to do, so nothing but the hand-over
    itself can wake it: setting the waiter's result from the server's thread would leave it
    asleep. (Calls from synchronous code queue on asgiserve's background loop, the same way.)
    """
    handle = asgiserve.run(Single.bind(Gate.bind()))
    loop = asyncio.new_event_loop()
    outcome: list[str] = []

    async def call() -> None:
        outcome.append(await handle.remote())

    caller = threading.Thread(target=loop.run_until_complete, args=(call(),), daemon=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(http.get, "/")  # runs on the server's loop
            wait_for(lambda: in_flight("Single") == 1, "the HTTP request to take the only slot")
            caller.start()
            wait_for(lambda: queued("Single") == 1, "the call to queue")
            release("go")
            assert first.result(timeout=TIMEOUT).text == "done"
        caller.join(2)
        assert outcome == ["done"], "the queued call was handed the slot but never woke up"
    finally:
        loop.call_soon_threadsafe(lambda: None)  # wake it, so the thread ends either way
        caller.join(TIMEOUT)
        loop.close()


@asynccontextmanager
async def slow_startup(app: FastAPI) -> AsyncIterator[None]:
    await asyncio.sleep(0.5)  # widens the window in which the replica is starting
    yield


slow_start_app = FastAPI(lifespan=slow_startup)


@asgiserve.deployment
@asgiserve.ingress(slow_start_app)
class SlowStart:
    @slow_start_app.get("/")
    def root(self) -> str:
        return "http"

    def ping(self) -> str:
        return "pong"


def test_first_calls_from_two_loops_while_the_replica_starts(http: httpx.Client) -> None:
    """An HTTP request (server's loop) and a handle call from synchronous code (background
    loop) both arrive while the replica is starting; either may come first."""
    handle = asgiserve.run(SlowStart.bind(), route_prefix="/slow")
    with ThreadPoolExecutor(1) as pool:
        over_http = pool.submit(http.get, "/slow")
        assert handle.ping.remote().result(timeout_s=TIMEOUT) == "pong"
        response = over_http.result(timeout=TIMEOUT)
    assert (response.status_code, response.json()) == (200, "http")


# -- 6. errors ------------------------------------------------------------------------------


@asgiserve.deployment
class Broken:
    def __call__(self, request: Request) -> None:
        raise ValueError("secret detail")


errors_app = FastAPI()


@asgiserve.deployment
@asgiserve.ingress(errors_app)
class BrokenIngress:
    @errors_app.get("/")
    def root(self) -> None:
        raise ValueError("secret detail")


@pytest.mark.parametrize("deployment", [Broken, BrokenIngress], ids=["plain", "ingress"])
def test_user_exception_is_500_naming_the_request_id(
    http: httpx.Client, deployment: asgiserve.Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgiserve")
    asgiserve.run(deployment.bind())
    for headers in ({}, {"x-request-id": "mine-1"}):
        response = http.get("/", headers=headers)
        request_id = response.headers["x-request-id"]
        # Once an ingress app's own 500 has gone out, the router logs the error with its
        # traceback, then the access line: wait for it before failing here, so that no two
        # threads format tracebacks at once (CPython 3.11.7's ast is not thread-safe:
        # "AST constructor recursion depth mismatch" would break pytest; gh-106905).
        wait_for(lambda rid=request_id: access_lines(caplog, rid), "the access line")
        if headers:
            assert request_id == "mine-1"  # kept as the client sent it
        assert response.status_code == 500
        if deployment is Broken:
            assert response.json()["request_id"] == request_id
        else:  # an ingress app's own answer stands: Starlette's plain 500
            assert response.text == "Internal Server Error"
        assert "secret detail" not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("kind", SERVERS)
def test_debug_router_shows_the_traceback(backend: str, kind: str) -> None:
    router = asgiserve.Router(debug=True)
    asgiserve.run(Broken.bind(), router=router)
    with serve(router, kind) as server, server.client() as client:
        response = client.get("/")
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    text = "".join(body["traceback"])
    assert "Traceback" in text and "ValueError: secret detail" in text


@asgiserve.deployment
class BodyReader:
    def __init__(self, recorder: DeploymentHandle) -> None:
        self.recorder = recorder

    async def __call__(self, request: Request) -> int:
        await self.recorder.record.remote("handler ran")
        return len(await request.body())


@pytest.mark.parametrize("kind", SERVERS)
def test_body_over_max_body_size_is_413(backend: str, kind: str) -> None:
    router = asgiserve.Router(max_body_size=1000)
    asgiserve.run(BodyReader.bind(Recorder.bind()), router=router)

    def chunked() -> Iterator[bytes]:
        for _ in range(3):
            yield b"x" * 500

    with serve(router, kind) as server, server.client() as client:
        assert client.post("/", content=b"x" * 1000).json() == 1000
        assert events() == ["handler ran"]
        with_length = client.post("/", content=b"x" * 1001)
        assert with_length.status_code == 413
        assert with_length.json()["request_id"] == with_length.headers["x-request-id"]
        assert "max_body_size" in with_length.json()["detail"]
        assert events() == ["handler ran"]  # refused before any replica saw it
        without_length = client.post("/", content=chunked())
        assert "content-length" not in without_length.request.headers
        assert without_length.status_code == 413
        assert without_length.json()["request_id"] == without_length.headers["x-request-id"]
        assert (
            client.post("/", content=chunked(), headers={"x-request-id": "big"}).headers[
                "x-request-id"
            ]
            == "big"
        )


@asgiserve.deployment(max_ongoing_requests=1, max_queued_requests=0)
class Held:
    def __init__(self, gate: DeploymentHandle) -> None:
        self.gate = gate

    async def __call__(self, *args: Any) -> str:
        await self.gate.wait.remote("held")
        return "released"


@pytest.mark.parametrize("kind", SERVERS)
def test_every_error_response_carries_the_request_id(backend: str, kind: str) -> None:
    router = asgiserve.Router(request_timeout_s=0.5, max_body_size=1000)
    asgiserve.run(Patient.bind(Recorder.bind()), name="slow", route_prefix="/slow", router=router)
    held = asgiserve.run(Held.bind(Gate.bind()), name="held", route_prefix="/held", router=router)
    asgiserve.run(Broken.bind(), name="broken", route_prefix="/broken", router=router)
    holding = held.remote()  # takes the only slot; the queue holds none
    wait_for(lambda: in_flight("Held", "held") == 1, "the slot to be taken")
    cases = [
        ("GET", "/missing", 404, None),
        ("POST", "/broken", 413, b"x" * 2000),
        ("GET", "/held", 503, None),
        ("GET", "/slow", 504, None),
        ("GET", "/broken", 500, None),
    ]
    with serve(router, kind) as server, server.client() as client:
        for method, path, status, content in cases:
            generated = client.request(method, path, content=content)
            assert generated.status_code == status, path
            assert len(generated.headers["x-request-id"]) == 32
            assert generated.json()["request_id"] == generated.headers["x-request-id"]
            sent = client.request(method, path, content=content, headers={"x-request-id": "r-1"})
            assert sent.status_code == status, path
            assert sent.headers["x-request-id"] == "r-1"
            assert sent.json()["request_id"] == "r-1"
        release("held", "held")
        assert holding.result(timeout_s=TIMEOUT) == "released"


# -- 7. request context and access log -------------------------------------------------------

context_app = FastAPI()


def context_fields() -> dict[str, str]:
    context = asgiserve.get_request_context()
    return {
        "request_id": context.request_id,
        "app_name": context.app_name,
        "deployment": context.deployment,
        "route": context.route,
        "replica_id": context.replica_id,
    }


@asgiserve.deployment
class PlainContext:
    async def __call__(self, request: Request) -> dict[str, str]:
        return context_fields()


@asgiserve.deployment
@asgiserve.ingress(context_app)
class IngressContext:
    @context_app.get("/sync")
    def sync_route(self) -> dict[str, str]:
        return context_fields()

    @context_app.get("/async")
    async def async_route(self) -> dict[str, str]:
        return context_fields()


@pytest.mark.parametrize(
    ("deployment", "path"),
    [(PlainContext, ""), (IngressContext, "/sync"), (IngressContext, "/async")],
    ids=["plain", "ingress-sync", "ingress-async"],
)
def test_request_context_inside_a_handler(
    http: httpx.Client, deployment: asgiserve.Deployment, path: str
) -> None:
    asgiserve.run(deployment.bind(), name="ctx", route_prefix="/ctx")
    replica_id = deployment_status(deployment.name, "ctx")["replicas"][0]["replica_id"]
    for headers in ({}, {"x-request-id": "ctx-1"}):
        response = http.get(f"/ctx{path}", headers=headers)
        assert response.json() == {
            "request_id": response.headers["x-request-id"],
            "app_name": "ctx",
            "deployment": deployment.name,
            "route": "/ctx",
            "replica_id": replica_id,
        }
    assert response.headers["x-request-id"] == "ctx-1"
    assert asgiserve.get_request_context().request_id == ""  # outside a replica: empty


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str = "") -> list[str]:
    """The router's access lines (INFO on "asgiserve.access"), those naming `request_id`."""
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "asgiserve.access" and record.levelno == logging.INFO
    ]
    return [line for line in lines if not request_id or request_id in line.split()]


def test_access_log_has_one_line_per_request(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asgiserve")
    asgiserve.run(PlainContext.bind(), name="logged", route_prefix="/logged")
    asgiserve.run(Broken.bind(), name="failing", route_prefix="/failing")
    requests_made = [
        ("logged", "PlainContext", "GET", "/logged", http.get("/logged/x")),
        ("logged", "PlainContext", "POST", "/logged", http.post("/logged", json={})),
        ("failing", "Broken", "GET", "/failing", http.get("/failing")),
    ]
    for app, deployment, method, route, response in requests_made:
        request_id = response.headers["x-request-id"]
        # The line is written once the exchange is over, just after the client has its answer.
        lines = wait_for(lambda rid=request_id: access_lines(caplog, rid), "the access line")
        assert len(lines) == 1, lines
        words = lines[0].split()
        for word in (app, deployment, request_id, method, route, str(response.status_code)):
            assert word in words, (word, lines[0])
    assert len(access_lines(caplog)) == len(requests_made)


# -- 8. no leaks ----------------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=100)
class Leaky:
    """Counts its own live handlers and generators, and which ones saw CancelledError."""

    def __init__(self) -> None:
        self.active = 0
        self.cancelled: set[str] = set()

    async def forever(self, name: str) -> AsyncIterator[str]:
        self.active += 1
        try:
            yield "first chunk\n"
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            self.cancelled.add(name)
            raise
        finally:
            self.active -= 1

    async def __call__(self, request: Request) -> Any:
        name = request.query_params["name"]
        if request.query_params.get("stream"):
            return StreamingResponse(self.forever(name), media_type="text/plain")
        self.active += 1
        try:
            await asyncio.sleep(10000)
        except asyncio.CancelledError:
            self.cancelled.add(name)
            raise
        finally:
            self.active -= 1

    async def stats(self) -> dict[str, Any]:
        return {"active": self.active, "cancelled": sorted(self.cancelled)}


@pytest.mark.anyio
async def test_no_leaks_after_a_thousand_cancelled_requests(live: LiveServer, backend: str) -> None:
    handle = asgiserve.run(Leaky.bind())
    batch, batches = 50, 10  # per kind: 10 × 50 mid-stream, 10 × 50 mid-handler
    names: list[str] = []

    async def active() -> int:
        return (await handle.stats.remote())["active"]  # type: ignore[no-any-return]

    async def mid_stream(name: str) -> None:
        reader, writer = await send_request(live.port, f"/?name={name}&stream=1")
        await read_body_until(reader, b"first chunk")
        await hang_up(writer)

    for b in range(batches):
        # Mid-stream: each client reads the first chunk, then hangs up.
        group = [f"s{b}-{i}" for i in range(batch)]
        names += group
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(mid_stream(name) for name in group))
        await eventually(lambda: idle("Leaky"), "the mid-stream batch to leave")
        # Mid-handler: all of a batch are in the handler at once, then all hang up.
        group = [f"h{b}-{i}" for i in range(batch)]
        names += group
        async with asyncio.timeout(TIMEOUT):
            writers = [
                writer
                for _, writer in await asyncio.gather(
                    *(send_request(live.port, f"/?name={name}") for name in group)
                )
            ]
        await eventually(lambda: in_flight("Leaky") == batch, f"{batch} requests in flight")
        await eventually(lambda: equals(active(), batch), f"{batch} handlers running")
        await asyncio.gather(*(hang_up(writer) for writer in writers))
    assert len(names) == 1000
    await eventually(lambda: idle("Leaky"), "in-flight and queued counts to return to zero")
    await eventually(lambda: equals(active(), 0), "the replica's own count to return to zero")
    stats = await handle.stats.remote()
    assert stats["cancelled"] == sorted(names)
