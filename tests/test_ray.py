"""What only the Ray backend has: actors, placement, a shared cluster, actor failures.

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

import asgiserve
from tests.servers import LiveServer, free_port, wait_for_port
from tests.test_subprocess import eventually

pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def client(live: LiveServer, ray_cluster: Any) -> Iterator[httpx.Client]:
    with live.client() as http:
        yield http
    asgiserve.shutdown()


def named_actors(prefix: str) -> list[str]:
    """Actor names without their fingerprint (`where#Where#1@3fa2...` as `where#Where#1`)."""
    from asgiserve.backends.ray import named_actors as full_names

    return sorted(name.partition("@")[0] for name in full_names(prefix))


def actor(replica_id: str) -> Any:
    import ray

    from asgiserve.backends.ray import named_actors as full_names

    [name] = full_names(replica_id + "@")
    return ray.get_actor(name, namespace="asgiserve")


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=20)
class Where:
    async def __call__(self, request: Request) -> dict[str, Any]:
        import ray

        await asyncio.sleep(float(request.query_params.get("sleep", 0)))
        context = ray.get_runtime_context()
        return {"pid": os.getpid(), "actor": context.get_actor_id()}


def pid_of(client: httpx.Client) -> int:
    return int(client.get("/").json()["pid"])


def test_replicas_are_named_actors_and_a_killed_one_fails_only_its_requests(
    client: httpx.Client,
) -> None:
    import ray

    asgiserve.run(Where.bind(), name="where", backend="ray")
    assert named_actors("where#") == ["where#Where#1", "where#Where#2"]
    pids = eventually(lambda: len(s := {pid_of(client) for _ in range(20)}) > 1 and s)
    assert os.getpid() not in pids
    victim = actor("where#Where#1")

    with ThreadPoolExecutor(20) as pool:
        slow = [pool.submit(client.get, "/?sleep=1.5") for _ in range(20)]
        time.sleep(0.5)  # all 20 are running, about 10 on each replica
        ray.kill(victim)
        answers = [future.result(timeout=30) for future in slow]

    died = [a for a in answers if a.status_code == 503]
    assert died and all("died" in a.json()["detail"] for a in died)
    assert len(died) < len(answers)  # only the dead replica's requests failed
    assert all(client.get("/").status_code == 200 for _ in range(20))  # traffic goes on
    eventually(lambda: "where#Where#3" in named_actors("where#"))  # a replacement joins
    assert "where#Where#1" not in named_actors("where#")


@asgiserve.deployment(
    ray_actor_options={
        "num_cpus": 0.5,
        "resources": {"model_slot": 1},
        "memory": 50 * 1024 * 1024,
        "runtime_env": {"env_vars": {"GREETING": "hello from the runtime env"}},
    }
)
class Placed:
    def __call__(self) -> dict[str, Any]:
        import ray

        return {
            "resources": ray.get_runtime_context().get_assigned_resources(),
            "greeting": os.environ.get("GREETING"),
        }


def test_ray_actor_options_reach_ray(client: httpx.Client) -> None:
    asgiserve.run(Placed.bind(), name="placed", backend="ray")
    answer = client.get("/").json()
    assert answer["greeting"] == "hello from the runtime env"
    assert answer["resources"]["CPU"] == 0.5
    assert answer["resources"]["model_slot"] == 1
    assert answer["resources"]["memory"] == 50 * 1024 * 1024


@asgiserve.deployment(ray_actor_options={"resources": {"model_slot": 100}})
class Unplaceable:
    def __call__(self) -> str:
        return "never"


def test_a_replica_ray_cannot_place_does_not_answer_until_it_can(ray_cluster: Any) -> None:
    """Ray waits for resources to appear (a cluster may be scaling up); so does run()."""
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(asgiserve.run, Unplaceable.bind(), name="big", backend="ray")
        time.sleep(2)
        assert not started.done()
        import ray

        ray.kill(actor("big#Unplaceable#1"))
        with pytest.raises(asgiserve.exceptions.ReplicaDiedError):
            started.result(timeout=30)


SHARED_APP = """
    import os
    import asgiserve
    from fastapi import FastAPI

    @asgiserve.deployment
    class Counter:
        def __init__(self):
            self.count = 0

        def __call__(self):
            self.count += 1
            return {"pid": os.getpid(), "count": self.count}

    asgiserve.run(Counter.bind(), name="shared", backend="ray")
    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
"""


def test_two_servers_share_one_set_of_replicas_by_application_name(
    tmp_path: Path, ray_cluster: Any
) -> None:
    (tmp_path / "shared_app.py").write_text(textwrap.dedent(SHARED_APP))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env["RAY_ADDRESS"] = ray_cluster.get_runtime_context().gcs_address
    env.pop("ASGISERVE_BACKEND", None)
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "shared_app:app", "--port", str(port)],
            env=env,
            cwd=tmp_path,
        )
        for port in ports
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_for_port(port, server, timeout=90)
        answers = [httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json() for port in ports]
        answers += [httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json() for port in ports]
        assert len({answer["pid"] for answer in answers}) == 1  # one replica for both
        assert sorted(answer["count"] for answer in answers) == [1, 2, 3, 4]
        assert named_actors("shared#") == ["shared#Counter#1"]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    eventually(lambda: not named_actors("shared#"))  # gone with the server that made it


def test_servers_with_other_code_under_one_name_get_their_own_replicas(
    tmp_path: Path, ray_cluster: Any
) -> None:
    """Actors are shared by name only when they run the same code: a second server with a
    Counter of its own under the application name `shared` must not serve the first's."""
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for folder, start in ((first_dir, "0"), (second_dir, "1000")):
        folder.mkdir()
        (folder / "shared_app.py").write_text(
            textwrap.dedent(SHARED_APP).replace("self.count = 0", f"self.count = {start}")
        )
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    env.pop("ASGISERVE_BACKEND", None)
    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "shared_app:app", "--port", str(port)],
            env={**env, "PYTHONPATH": os.pathsep.join([str(folder), *sys.path])},
            cwd=folder,
        )
        for port, folder in zip(ports, (first_dir, second_dir), strict=True)
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            wait_for_port(port, server, timeout=90)
        first, second = (httpx.get(f"http://127.0.0.1:{p}/", timeout=30).json() for p in ports)
        assert first["count"] == 1 and second["count"] == 1001  # each its own code
        assert first["pid"] != second["pid"]
        assert named_actors("shared#") == ["shared#Counter#1", "shared#Counter#1"]
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    eventually(lambda: not named_actors("shared#"))


CONNECT_SCRIPT = """
    import asgiserve, ray

    @asgiserve.deployment
    def hello():
        return "hello"

    handle = asgiserve.run(hello.bind(), backend="ray")
    print(ray.is_initialized(), handle.remote().result(), flush=True)
    asgiserve.shutdown()
    print(ray.is_initialized(), flush=True)
"""


def test_without_an_address_a_local_ray_starts_and_shutdown_stops_it(tmp_path: Path) -> None:
    script = tmp_path / "connect.py"
    script.write_text(textwrap.dedent(CONNECT_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for name in ("RAY_ADDRESS", "ASGISERVE_BACKEND"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "hello", "False"]


LOCAL_RAY_APP = """
    import asgiserve
    from fastapi import FastAPI

    @asgiserve.deployment
    def hello():
        return "hello"

    asgiserve.run(hello.bind(), name="hello", route_prefix="/hello", backend="ray")
    app = FastAPI(lifespan=asgiserve.router.lifespan)
    app.mount("/", asgiserve.router)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_local_ray_the_server_started_stops_with_it(tmp_path: Path, sig: int) -> None:
    from asgiserve.backends.ray_watch import alive, ray_descendants

    (tmp_path / "local_ray_app.py").write_text(textwrap.dedent(LOCAL_RAY_APP))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    for name in ("RAY_ADDRESS", "ASGISERVE_BACKEND"):
        env.pop(name, None)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "local_ray_app:app", "--port", str(port)],
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for_port(port, server, timeout=120)
        assert httpx.get(f"http://127.0.0.1:{port}/hello", timeout=60).text == "hello"
        ray_processes = ray_descendants(server.pid)
        assert len(ray_processes) >= 3  # gcs, raylet, agents, the replica's worker...
        server.send_signal(sig)
        server.wait(timeout=60)
        eventually(lambda: not any(alive(pid) for pid in ray_processes), timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_without_ray_installed_the_error_names_the_extra() -> None:
    script = "import sys, asgiserve.backends as b; sys.modules['ray'] = None; b.RayBackend()"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 1
    assert "pip install 'asgiserve[ray]'" in done.stderr
