"""Faults and hostile clients: stopped and dying workers, guessed request ids, floods.

Each test starves, stops, kills or floods the thing it tests, with bounded time, and
checks that nothing hangs and that slots come back. Real servers, processes and Ray.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import StreamingResponse

import asgiserve
from asgiserve.backends.base import STOP_GRACE_S
from asgiserve.exceptions import BackPressureError
from tests.conftest import BACKENDS
from tests.servers import SERVERS, serve

OUT_OF_PROCESS = [b for b in BACKENDS if b != "inprocess"]
HEALTH = {"health_check_period_s": 0.2, "health_check_timeout_s": 1.0}


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout_s}s: {what}")
        time.sleep(0.02)


def in_flight(app: str, deployment: str) -> int:
    status = asgiserve.status()["applications"][app]["deployments"][deployment]
    return sum(replica["in_flight"] for replica in status["replicas"])


def replica_ids(app: str, deployment: str) -> list[str]:
    status = asgiserve.status()["applications"][app]["deployments"][deployment]
    return [replica["replica_id"] for replica in status["replicas"]]


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# -- request identity ----------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=8)
class Echoes:
    """Streams its caller's own word back, slowly, so two calls overlap."""

    async def words(self, word: str) -> AsyncIterator[bytes]:
        for _ in range(5):
            yield word.encode() + b"\n"
            await asyncio.sleep(0.05)

    async def __call__(self, request: Request) -> StreamingResponse:
        return StreamingResponse(self.words(request.query_params["word"]))


def test_a_client_cannot_reach_another_request_by_its_id(http: httpx.Client) -> None:
    """Two clients sending the same x-request-id each get their own stream: inside the
    replicas a call is known by an id the server made, never by the client's."""
    asgiserve.run(Echoes.bind(), name="echoes", route_prefix="/echoes")
    headers = {"x-request-id": "victim-1"}
    with ThreadPoolExecutor(2) as pool:
        victim = pool.submit(http.get, "/echoes", params={"word": "victim"}, headers=headers)
        thief = pool.submit(http.get, "/echoes", params={"word": "thief"}, headers=headers)
        victim_text, thief_text = victim.result(20).text, thief.result(20).text
    assert victim_text == "victim\n" * 5
    assert thief_text == "thief\n" * 5


@pytest.mark.parametrize(
    "label", [b"x" * 201, b"has space", b"tab\there", "é-not-ascii".encode()],
    ids=["too-long", "space", "tab", "utf-8"],
)  # fmt: skip
def test_a_request_id_that_is_not_a_plain_label_is_replaced(
    http: httpx.Client, label: bytes
) -> None:
    asgiserve.run(Echoes.bind(), name="echoes", route_prefix="/echoes")
    response = http.get("/echoes", params={"word": "w"}, headers={"x-request-id": label})
    assert response.status_code == 200
    given = response.headers["x-request-id"]
    assert given.encode() != label and len(given) == 32 and given.isalnum()


def test_a_plain_request_id_is_kept_as_a_label(http: httpx.Client) -> None:
    asgiserve.run(Echoes.bind(), name="echoes", route_prefix="/echoes")
    label = "order-42/retry:1_" + "z" * 183  # 200 visible characters
    response = http.get("/echoes", params={"word": "w"}, headers={"x-request-id": label})
    assert response.headers["x-request-id"] == label


# -- a replica that stops answering --------------------------------------------------------


@asgiserve.deployment(**HEALTH, graceful_shutdown_timeout_s=1.0)
class Sleeper:
    def pid(self) -> int:
        return os.getpid()

    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(float(request.query_params.get("s", "0")))
        return str(os.getpid())

    async def block(self) -> None:
        time.sleep(60)  # holds the event loop: the worker answers nothing, not even health


@pytest.mark.slow
@pytest.mark.parametrize("backend", OUT_OF_PROCESS, indirect=True)
def test_a_stopped_replica_is_replaced_and_its_requests_end(
    http: httpx.Client, backend: str
) -> None:
    handle = asgiserve.run(Sleeper.bind(), name="sleeper", route_prefix="/sleeper")
    pid = handle.pid.remote().result(timeout_s=30)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http.get, "/sleeper", params={"s": 30}, timeout=30)
        eventually(lambda: in_flight("sleeper", "Sleeper") == 1, "the request runs")
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            answer = waiting.result(timeout=15)
        finally:
            signal_pid(pid, signal.SIGCONT)
            signal_pid(pid, signal.SIGKILL)
    took = time.monotonic() - stopped_at
    assert answer.status_code == 503
    bound = HEALTH["health_check_period_s"] + HEALTH["health_check_timeout_s"] + 2 * STOP_GRACE_S
    assert took < bound + 3, f"the stopped replica's request took {took:.1f}s to end"

    def served_by() -> int | None:
        answer = http.get("/sleeper", timeout=20)
        return int(answer.text) if answer.status_code == 200 else None

    new_pid = eventually(served_by, "a new replica answers")
    assert new_pid != pid
    eventually(lambda: in_flight("sleeper", "Sleeper") == 0, "every slot is free again")


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in OUT_OF_PROCESS if b == "subprocess"], indirect=True)
def test_a_blocked_event_loop_is_replaced(backend: str) -> None:
    handle = asgiserve.run(Sleeper.bind(), name="sleeper", route_prefix=None)
    pid = handle.pid.remote().result(timeout_s=30)
    blocked = handle.block.remote()
    with pytest.raises(asgiserve.exceptions.ReplicaDiedError):
        blocked.result(timeout_s=15)
    assert handle.pid.remote().result(timeout_s=30) != pid


@pytest.mark.slow
@pytest.mark.parametrize("backend", OUT_OF_PROCESS, indirect=True)
def test_shutdown_returns_while_a_replica_is_stopped(backend: str) -> None:
    handle = asgiserve.run(Sleeper.bind(), name="sleeper", route_prefix=None)
    pid = handle.pid.remote().result(timeout_s=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        asgiserve.shutdown()
        took = time.monotonic() - started
    finally:
        signal_pid(pid, signal.SIGCONT)
        signal_pid(pid, signal.SIGKILL)
    assert took < 1.0 + STOP_GRACE_S + 2, f"shutdown took {took:.1f}s"


# -- a worker whose child holds its socket -------------------------------------------------


@asgiserve.deployment(health_check_period_s=60)
class Parent:
    def __init__(self) -> None:
        # A child that outlives its parent, as `subprocess` and `os.system` make them.
        self.child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def pids(self) -> tuple[int, int]:
        return os.getpid(), self.child.pid

    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(30)
        return "never"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "subprocess"], indirect=True)
def test_a_dead_worker_is_noticed_at_once_though_its_child_lives(
    http: httpx.Client, backend: str
) -> None:
    handle = asgiserve.run(Parent.bind(), name="parent", route_prefix="/parent")
    pid, child = handle.pids.remote().result(timeout_s=30)
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(http.get, "/parent", timeout=30)
            eventually(lambda: in_flight("parent", "Parent") == 1, "the request runs")
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            answer = waiting.result(timeout=10)
        assert answer.status_code == 503
        assert time.monotonic() - killed_at < 1.5  # not at the next health check (60 s)
    finally:
        signal_pid(child, signal.SIGKILL)


# -- what clients are told -----------------------------------------------------------------


@asgiserve.deployment
class Crasher:
    def pid(self) -> int:
        return os.getpid()

    def __call__(self, request: Request) -> None:
        os._exit(1)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "subprocess"], indirect=True)
def test_a_503_names_nothing_internal(http: httpx.Client, backend: str) -> None:
    asgiserve.run(Echoes.bind(), name="internal-only-app", route_prefix=None)
    handle = asgiserve.run(Crasher.bind(), name="crasher", route_prefix="/crasher")
    pid = handle.pid.remote().result(timeout_s=30)
    [replica] = replica_ids("crasher", "Crasher")
    answer = http.get("/crasher")
    assert answer.status_code == 503
    body = answer.json()
    assert body["request_id"] == answer.headers["x-request-id"]
    assert "try again" in body["detail"]
    for internal in (str(pid), replica, "internal-only-app", "Crasher"):
        assert internal not in answer.text


# -- in-process stop -----------------------------------------------------------------------


resources: dict[str, str] = {}


@asynccontextmanager
async def database(app: FastAPI) -> AsyncIterator[None]:
    resources["db"] = "open"
    yield
    resources.pop("db")  # what a handler still running would then miss


graceful_app = FastAPI(lifespan=database)


@graceful_app.get("/")
async def uses_the_database() -> str:
    await asyncio.sleep(0.5)
    return resources["db"]


@asgiserve.deployment(graceful_shutdown_timeout_s=5)
@asgiserve.ingress(graceful_app)
class Graceful:
    pass


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "inprocess"], indirect=True)
def test_in_process_stop_waits_for_requests_in_flight(http: httpx.Client, backend: str) -> None:
    asgiserve.run(Graceful.bind(), name="graceful", route_prefix="/graceful")
    assert http.get("/graceful/").text == '"open"'
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(http.get, "/graceful/", timeout=20)
        eventually(lambda: in_flight("graceful", "Graceful") == 1, "the request runs")
        asgiserve.delete("graceful")
        answer = running.result(timeout=20)
    assert (answer.status_code, answer.text) == (200, '"open"')
    eventually(lambda: "db" not in resources, "the app's shutdown ran after the request")


# -- chained calls -------------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=4)
class Slow:
    async def value(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


@asgiserve.deployment
class Adds:
    async def add(self, *values: float) -> float:
        return sum(values)


def test_cancelling_a_chained_call_cancels_every_argument(backend: str) -> None:
    slow = asgiserve.run(Slow.bind(), name="slow", route_prefix=None)
    adds = asgiserve.run(Adds.bind(), name="adds", route_prefix=None)
    assert adds.add.remote(slow.value.remote(0), slow.value.remote(0)).result(30) == 0

    async def chain_then_cancel() -> None:
        first, second = slow.value.remote(30), slow.value.remote(30)
        total = adds.add.remote(first, second)
        await asyncio.sleep(0.5)  # both arguments are running on Slow
        total.cancel()
        with pytest.raises(asyncio.CancelledError):
            await total

    asyncio.run(chain_then_cancel())
    eventually(lambda: in_flight("slow", "Slow") == 0, "both arguments were cancelled")


# -- overload ------------------------------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=1)
class Gate:
    def __init__(self) -> None:
        self.opened = threading.Event()

    async def wait(self) -> str:
        while not self.opened.is_set():
            await asyncio.sleep(0.01)
        return "through"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "inprocess"], indirect=True)
def test_the_default_queue_is_finite(backend: str) -> None:
    """With the defaults, requests past the queue are refused at once, not held."""
    handle = asgiserve.run(Gate.bind(), name="gate", route_prefix=None)

    async def flood() -> None:
        running = handle.wait.remote()
        queued = [handle.wait.remote() for _ in range(100)]  # the default for one slot
        await asyncio.sleep(0.2)
        started = time.monotonic()
        with pytest.raises(BackPressureError, match="max_queued_requests is not set, so 100"):
            await handle.wait.remote()
        assert time.monotonic() - started < 1
        for response in [running, *queued]:
            response.cancel()
        await asyncio.gather(running, *queued, return_exceptions=True)

    asyncio.run(flood())
    eventually(lambda: in_flight("gate", "Gate") == 0, "the cancelled calls let go")


# -- frames from a worker ------------------------------------------------------------------


@asgiserve.deployment
class Framer:
    def zeros(self, n: int) -> Any:
        import numpy as np

        return np.zeros(n, dtype=np.uint8)

    async def garble(self) -> None:
        from asgiserve import registry

        # The worker's own connection to the server: write a length no frame may have.
        channel = registry.upstream("any", "any", "").channel  # type: ignore[misc]
        channel.transport.write(struct.pack("!Q", 2**40))
        await asyncio.sleep(30)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "subprocess"], indirect=True)
def test_a_garbled_frame_length_ends_the_channel_not_the_server(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    handle = asgiserve.run(Framer.bind(), name="framer", route_prefix=None)
    big = handle.zeros.remote(40_000_000).result(timeout_s=30)  # grows its buffer as it reads
    assert big.nbytes == 40_000_000 and not big.any()
    del big
    before = rss_bytes()
    with pytest.raises(asgiserve.exceptions.ReplicaDiedError):
        handle.garble.remote().result(timeout_s=10)
    assert rss_bytes() - before < 50 * 1024 * 1024
    assert any("over max_frame_size" in record.getMessage() for record in caplog.records)
    assert handle.zeros.remote(3).result(timeout_s=30).tolist() == [0, 0, 0]  # replaced


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "subprocess"], indirect=True)
def test_max_frame_size_is_a_setting(backend: str) -> None:
    from asgiserve.backends import SubprocessBackend

    small = Framer.options(backend=SubprocessBackend(max_frame_size=2 * 1024 * 1024))
    handle = asgiserve.run(small.bind(), name="small-frames", route_prefix=None)
    assert handle.zeros.remote(1_000_000).result(timeout_s=30).size == 1_000_000
    with pytest.raises(asgiserve.exceptions.ReplicaDiedError):
        handle.zeros.remote(3_000_000).result(timeout_s=10)
    with pytest.raises(ValueError, match="at least 1 MiB"):
        SubprocessBackend(max_frame_size=10)


# -- request bodies and slow clients -------------------------------------------------------


@asgiserve.deployment(max_ongoing_requests=1)
class Uploads:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, request: Request) -> dict[str, int]:
        if request.query_params.get("hold"):
            await asyncio.sleep(float(request.query_params["hold"]))
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send `head` and `body` as they are, then read the whole answer (or what came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and answer.split(b"\r\n\r\n", 1)[1].endswith(b"}"):
                break
        return answer


@pytest.fixture(params=SERVERS)
def body_server(request: pytest.FixtureRequest, backend: str) -> Iterator[Any]:
    router = asgiserve.Router(body_timeout_s=0.5, max_body_size=1_000_000)
    asgiserve.run(Uploads.bind(), name="uploads", router=router)
    with serve(router, request.param) as server:
        yield server


def test_a_body_that_never_comes_is_408_and_holds_no_slot(body_server: Any) -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\nconnection: close\r\n\r\n"
    with ThreadPoolExecutor(1) as pool:
        silent = pool.submit(raw_request, body_server.port, head)
        time.sleep(0.2)
        assert in_flight("uploads", "Uploads") == 0  # waiting for its body, not for a slot
        with body_server.client() as client:  # the only slot is free for others meanwhile
            assert client.post("/", content=b"abc").json() == {"size": 3}
        answer = silent.result(timeout=10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"body_timeout_s" in answer


def test_a_body_that_stops_half_way_is_408(body_server: Any) -> None:
    head = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\nconnection: close\r\n\r\n"
    started = time.monotonic()
    answer = raw_request(body_server.port, head, b"x" * 50_000)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 5
    eventually(lambda: in_flight("uploads", "Uploads") == 0, "the slot is free again")


def test_a_streamed_body_past_the_limit_is_a_clean_413(body_server: Any) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(30):
            yield b"y" * 50_000  # 1.5 MB, chunked: no Content-Length to refuse it early

    with body_server.client() as client:
        answer = client.post("/", content=chunks())
    assert answer.status_code == 413
    assert "max_body_size" in answer.json()["detail"]
    eventually(lambda: in_flight("uploads", "Uploads") == 0, "the slot is free again")


def http_scope(query: bytes, content_length: int) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": query,
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"x"), (b"content-length", str(content_length).encode())],
    }  # fmt: skip


@pytest.mark.anyio
async def test_a_queued_request_takes_one_body_message_from_the_server(backend: str) -> None:
    """While it waits for a slot, a request takes one message of its body from the server
    (so it is known to have started) and no more: the rest stays in flow control."""
    router = asgiserve.Router()
    asgiserve.run(Uploads.bind(), name="uploads", router=router)
    taken = 0

    async def endless_body() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        return {"type": "http.request", "body": b"x" * 300_000, "more_body": True}

    sent_empty_body = False

    async def no_body() -> dict[str, Any]:
        nonlocal sent_empty_body
        if sent_empty_body:
            await asyncio.Event().wait()  # as a server does until the client leaves
        sent_empty_body = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def ignore(message: dict[str, Any]) -> None:
        pass

    busy = asyncio.ensure_future(router(http_scope(b"hold=5", 0), no_body, ignore))
    while in_flight("uploads", "Uploads") == 0:
        await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(router(http_scope(b"", 10**8), endless_body, ignore))
    await asyncio.sleep(0.3)  # the watcher has long started by now
    assert taken == 1
    for task in (queued, busy):
        task.cancel()
    await asyncio.gather(queued, busy, return_exceptions=True)


@pytest.mark.slow
def test_queued_uploads_are_not_read_ahead_into_memory(backend: str) -> None:
    """Twenty 20 MB uploads queue behind a busy replica: the server reads a small bound of
    each, not the bodies, so its memory stays flat while they wait."""
    router = asgiserve.Router(max_body_size=100_000_000)
    asgiserve.run(Uploads.bind(), name="uploads", router=router)
    body = b"z" * 20_000_000
    head = (f"POST /?hold=0 HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode()  # fmt: skip
    with serve(router, "uvicorn") as server, ThreadPoolExecutor(21) as pool:
        with server.client() as client:
            busy = pool.submit(client.post, "/?hold=3", content=b"", timeout=30)
            eventually(lambda: in_flight("uploads", "Uploads") == 1, "the replica is busy")
            before = rss_bytes()
            uploads = [pool.submit(upload_for, server.port, head, body, 1.5) for _ in range(20)]
            time.sleep(1.5)
            grown = rss_bytes() - before
            assert busy.result(timeout=30).status_code == 200
            for upload in uploads:
                upload.result(timeout=30)
    assert grown < 100_000_000, f"the server grew by {grown / 1e6:.0f} MB for queued uploads"


def upload_for(port: int, head: bytes, body: bytes, seconds: float) -> None:
    """Send as much of an upload as the server takes in `seconds`, then give up."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except (TimeoutError, OSError):
            pass
