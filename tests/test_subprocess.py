"""What only the subprocess backend has: worker processes, their failures, their output.

Everything else (HTTP, streaming, WebSockets, cancellation, composition) is the shared
suite, run on this backend by `ASGISERVE_TEST_BACKENDS`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from starlette.requests import Request

import asgiserve
from asgiserve.handle import DeploymentHandle
from tests.servers import LiveServer

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as http:
        yield http
    asgiserve.shutdown()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that will never reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def eventually(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition never held")


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=20)
class Pid:
    async def __call__(self, request: Request) -> int:
        await asyncio.sleep(float(request.query_params.get("sleep", 0)))
        return os.getpid()


def test_replicas_are_worker_processes_and_a_killed_one_fails_only_its_requests(
    client: httpx.Client,
) -> None:
    asgiserve.run(Pid.bind(), backend="subprocess")
    pids = eventually(lambda: len(seen := {client.get("/").json() for _ in range(20)}) > 1 and seen)
    assert os.getpid() not in pids
    victim, survivor = sorted(pids)

    with ThreadPoolExecutor(20) as pool:
        slow = [pool.submit(client.get, "/?sleep=1.5") for _ in range(20)]
        time.sleep(0.5)  # all 20 are running, about 10 on each replica
        os.kill(victim, signal.SIGKILL)
        answers = [future.result(timeout=30) for future in slow]

    died = [a for a in answers if a.status_code == 503]
    assert died and all("died" in a.json()["detail"] for a in died)
    assert all(a.json() == survivor for a in answers if a.status_code == 200)
    assert len(died) < len(answers)  # only the dead replica's requests failed
    # Traffic goes on at once, and a replacement joins.
    assert all(client.get("/").status_code == 200 for _ in range(20))
    newcomer = eventually(lambda: ({client.get("/").json() for _ in range(10)} - pids))
    assert newcomer and not alive(victim)


@asgiserve.deployment(health_check_period_s=0.2, health_check_timeout_s=0.5)
class Checked:
    def __init__(self, flags: str) -> None:
        self.flags = Path(flags)

    async def __call__(self) -> int:
        return os.getpid()

    async def check_health(self) -> None:
        if (self.flags / f"sick-{os.getpid()}").exists():
            raise RuntimeError("sick")
        if (self.flags / f"hung-{os.getpid()}").exists():
            await asyncio.sleep(3600)


@pytest.mark.parametrize("trouble", ["sick", "hung"])
def test_failing_or_hung_health_check_replaces_the_replica(
    client: httpx.Client, tmp_path: Path, trouble: str
) -> None:
    asgiserve.run(Checked.bind(str(tmp_path)), backend="subprocess")
    first = client.get("/").json()
    (tmp_path / f"{trouble}-{first}").touch()
    second = eventually(lambda: (pid := client.get("/").json()) != first and pid)
    assert alive(second)
    eventually(lambda: not alive(first))


@asgiserve.deployment(graceful_shutdown_timeout_s=5)
class Slow:
    async def __call__(self) -> int:
        await asyncio.sleep(1)
        return os.getpid()


def test_shutdown_lets_in_flight_requests_finish(client: httpx.Client) -> None:
    asgiserve.run(Slow.bind(), backend="subprocess")
    pid = client.get("/").json()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.get, "/")
        time.sleep(0.3)
        asgiserve.shutdown()  # returns once the worker drained and exited
        assert pending.result(timeout=10).json() == pid
    assert not alive(pid)


@asgiserve.deployment
class Talker:
    def __call__(self) -> str:
        import logging

        print("printed by the replica")
        logging.getLogger("model").warning("logged by the replica")
        return "said"


def test_replica_output_reaches_our_stderr_marked_with_its_replica(
    client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    asgiserve.run(Talker.bind(), name="talk", backend="subprocess")
    assert client.get("/").text == "said"

    lines: list[str] = []

    def marked() -> bool:
        err = capfd.readouterr().err
        lines.extend(line for line in err.splitlines() if "by the replica" in line)
        return len(lines) >= 2

    eventually(marked)
    assert all(line.startswith("(Talker replica talk#Talker#1 (pid ") for line in lines)
    assert any("WARNING" in line and "logged by the replica" in line for line in lines)


@asgiserve.deployment
class Inner:
    def where(self) -> int:
        return os.getpid()


@asgiserve.deployment
class Outer:
    def __init__(self, inner: DeploymentHandle) -> None:
        self.inner = inner

    async def __call__(self) -> dict[str, int]:
        return {"outer": os.getpid(), "inner": await self.inner.where.remote()}

    def echo(self, array: np.ndarray) -> np.ndarray:
        return array * 2


def test_handles_inside_a_worker_reach_deployments_on_any_backend(client: httpx.Client) -> None:
    inner = Inner.options(backend="inprocess").bind()
    handle = asgiserve.run(Outer.bind(inner), backend="subprocess")
    pids = client.get("/").json()
    assert pids["inner"] == os.getpid() != pids["outer"]  # out to a worker and back in

    big = np.arange(4_000_000, dtype=np.float64)  # 32 MB: out of band, both ways
    assert np.array_equal(handle.echo.remote(big).result(), big * 2)


def run_script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "serve_script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("ASGISERVE_BACKEND", None)
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )


SCRIPT = """
    import os, sys, time
    import asgiserve

    @asgiserve.deployment(num_replicas=2)
    class Model:  # defined in __main__: shipped to the workers by value
        def pid(self):
            return os.getpid()

    handle = asgiserve.run(Model.bind(), backend="subprocess")
    pids = {handle.pid.remote().result() for _ in range(50)}
    print(*sorted(pids), flush=True)
    if sys.argv[-1] != "exit":
        time.sleep(600)
"""


@pytest.mark.parametrize("end", ["exit", "SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_server_process(tmp_path: Path, end: str) -> None:
    process = run_script(tmp_path, SCRIPT.replace("sys.argv[-1]", repr(end)))
    assert process.stdout is not None
    pids = [int(pid) for pid in process.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    if end != "exit":
        process.send_signal(getattr(signal, end))
    process.wait(timeout=30)
    process.stdout.close()
    if end == "exit":  # the exit hook stops the workers and waits for them to be gone
        assert not any(alive(pid) for pid in pids), "a worker outlived the exit hook"
    eventually(lambda: not any(alive(pid) for pid in pids), timeout=5)


@asgiserve.deployment(max_ongoing_requests=1)
class One:
    async def ping(self) -> str:
        return "pong"


@pytest.mark.anyio
async def test_a_call_cancelled_on_its_way_frees_its_slot(anyio_backend: str) -> None:
    """The worker can read a CALL and its CANCEL in one go, before the call's task starts:
    it must still answer, or the server would wait for it forever, holding the slot."""
    handle = asgiserve.run(One.bind(), name="one", route_prefix=None, backend="subprocess")
    try:
        assert await handle.ping.remote() == "pong"
        for _ in range(20):
            response = handle.ping.remote()
            await asyncio.sleep(0)  # the call is written to the worker
            response.cancel()
            assert response.task is not None
            done, _ = await asyncio.wait({response.task}, timeout=5)
            assert done, "a call cancelled on its way never got its answer"
        with anyio.fail_after(10):  # the only slot is free again
            assert await handle.ping.remote() == "pong"
    finally:
        await asgiserve.shutdown_async()


@asgiserve.deployment
class CallsInConstructor:
    def __init__(self, inner: DeploymentHandle) -> None:
        inner.where.remote().result()


def test_a_handle_called_in_a_constructor_says_where_to_call_it_instead() -> None:
    with pytest.raises(asgiserve.exceptions.DeploymentUnavailableError, match="startup event"):
        asgiserve.run(CallsInConstructor.bind(Inner.bind()), name="early", backend="subprocess")
    asgiserve.shutdown()
