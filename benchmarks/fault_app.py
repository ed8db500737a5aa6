"""The server `fault_bench.py` attacks: deployments to kill, stop, flood and upload to.

Served by `uvicorn --app-dir benchmarks fault_app:app`; `FAULT_BACKEND` picks the backend.
`/bench/*` lets the bench read replica pids and in-flight counts and time a shutdown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import StreamingResponse

import asgiserve

BACKEND = os.environ.get("FAULT_BACKEND", "subprocess")
FAULTS = {"health_check_period_s": 0.5, "health_check_timeout_s": 2.0,
          "graceful_shutdown_timeout_s": 2.0}  # fmt: skip


@asgiserve.deployment(num_replicas=2, max_ongoing_requests=32, **FAULTS)
class Work:
    """100 ms of waiting per request: two replicas serve 640 requests a second."""

    async def __call__(self, request: Request) -> dict[str, int]:
        await asyncio.sleep(0.1)
        return {"pid": os.getpid()}

    def pid(self) -> tuple[int, str]:
        return os.getpid(), asgiserve.get_request_context().replica_id


@asgiserve.deployment(max_ongoing_requests=64)
class Capacity:
    """Serves 64 at a time, 20 ms each; the default queue behind it."""

    async def __call__(self, request: Request) -> str:
        await asyncio.sleep(0.02)
        return "ok"


@asgiserve.deployment(max_ongoing_requests=4)
class Uploads:
    """Busy with other work (`?hold=`), then reads the body it is sent."""

    async def __call__(self, request: Request) -> dict[str, int]:
        await asyncio.sleep(float(request.query_params.get("hold", "0")))
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return {"size": size}


@asgiserve.deployment(max_ongoing_requests=64)
class Streams:
    async def chunks(self) -> Any:
        for _ in range(1000):
            yield b"x" * 1000
            await asyncio.sleep(0.01)

    async def __call__(self, request: Request) -> StreamingResponse:
        return StreamingResponse(self.chunks())


work = asgiserve.run(Work.bind(), name="work", route_prefix="/work", backend=BACKEND)
asgiserve.run(Capacity.bind(), name="capacity", route_prefix="/capacity", backend=BACKEND)
asgiserve.run(Uploads.bind(), name="uploads", route_prefix="/uploads", backend=BACKEND)
asgiserve.run(Streams.bind(), name="streams", route_prefix="/streams", backend=BACKEND)

app = FastAPI(lifespan=asgiserve.router.lifespan)


@app.get("/bench/status")
def status() -> dict[str, Any]:
    return asgiserve.status()


@app.get("/bench/pids")
async def pids() -> list[tuple[int, str]]:
    """(pid, replica id) of each replica of Work."""
    seen = {tuple(await work.pid.remote()) for _ in range(40)}
    return sorted(seen)  # type: ignore[arg-type]


def in_flight(replica_id: str) -> int:
    replicas = asgiserve.status()["applications"]["work"]["deployments"]["Work"]["replicas"]
    return next(int(r["in_flight"]) for r in replicas if r["replica_id"] == replica_id)


@app.post("/bench/kill")
def kill(pid: int, replica_id: str) -> dict[str, Any]:
    """SIGKILL the replica's process; on Ray, `ray.kill` its actor. Returns how, and the
    replica's in-flight count just before and just after the kill (that many may fail)."""
    if BACKEND == "ray":
        import ray

        from asgiserve.backends.ray import NAMESPACE, named_actors

        [name] = named_actors(replica_id + "@")  # the actor's name ends in a fingerprint
        actor = ray.get_actor(name, namespace=NAMESPACE)
        before = in_flight(replica_id)
        ray.kill(actor)
        how = "ray.kill"
    else:
        before = in_flight(replica_id)
        os.kill(pid, signal.SIGKILL)
        how = "SIGKILL"
    return {"how": how, "in_flight": [before, in_flight(replica_id)]}


@app.get("/bench/tasks")
async def tasks() -> int:
    return len(asyncio.all_tasks())


@app.post("/bench/shutdown")
async def shutdown() -> float:
    started = time.monotonic()
    await asgiserve.shutdown_async()
    return time.monotonic() - started


app.mount("/", asgiserve.router)
